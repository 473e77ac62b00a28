"""Prepare a peer-benchmark job: the same images, weights and FP32 ONNX model for every tool.

Calibration images are crops and flips of scikit-image's photographs; evaluation images are foolbox's
20 labelled ImageNet photos (centre crops, labelled), the photographs of scikit-learn and matplotlib
(centre crops), then crops and flips of all of those. The two sets never share a source photo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lowbit.zoo import (augmented, calibration_photos, held_out_photos, labelled_photos, photos_to_batch,
                        pretrained_efficientnet_lite0, pretrained_mobilenet_v2)
from lowbit.zoo import efficientnet_lite, imagenet

MODELS = {
    "mobilenet_v2": (pretrained_mobilenet_v2, imagenet.MEAN, imagenet.STD),
    "efficientnet_lite0": (pretrained_efficientnet_lite0, efficientnet_lite.MEAN, efficientnet_lite.STD),
}
OPSET = 17


def evaluation_images(count: int, seed: int = 1):
    """(images, labels): labelled photos, held-out photos, then crops of both; label -1 where unknown."""
    labelled = labelled_photos()
    photos = [img for img, _, _ in labelled] + [img for img, _ in held_out_photos()]
    labels = [label for _, label, _ in labelled] + [-1] * (len(photos) - len(labelled))
    images = photos[:count] + (augmented(photos, count - len(photos), seed=seed) if count > len(photos) else [])
    labels = (labels + [-1] * count)[:count]
    return images, np.array(labels, dtype=np.int64)


def prepare(model_name: str, folder: Path, calibration_images: int, evaluation_count: int,
            batch_size: int) -> Path:
    """Write calibration.npy, evaluation.npy, labels.npy, weights.pt, fp32.onnx and job.json."""
    build, mean, std = MODELS[model_name]
    folder.mkdir(parents=True, exist_ok=True)
    calibration = augmented([img for img, _ in calibration_photos()], calibration_images, seed=0)
    images, labels = evaluation_images(evaluation_count)
    np.save(folder / "calibration.npy", photos_to_batch(calibration, mean=mean, std=std).numpy())
    evaluation = photos_to_batch(images, mean=mean, std=std)
    np.save(folder / "evaluation.npy", evaluation.numpy())
    np.save(folder / "labels.npy", labels)
    model = build()
    torch.save(model.state_dict(), folder / "weights.pt")
    torch.onnx.export(model, (evaluation[:1],), str(folder / "fp32.onnx"), dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        fp32 = torch.cat([model(evaluation[i:i + batch_size]) for i in range(0, len(evaluation), batch_size)])
    np.save(folder / "fp32_outputs.npy", fp32.numpy())
    (folder / "job.json").write_text(json.dumps({
        "model": model_name, "batch_size": batch_size, "calibration_images": calibration_images,
        "evaluation_images": evaluation_count, "labelled_images": int((labels >= 0).sum()),
        "calibration_source": "scikit-image photographs, random crops and flips (seed 0)",
        "evaluation_source": "foolbox's 20 labelled photos, scikit-learn's and matplotlib's photographs, "
                             "then random crops and flips of them (seed 1)"}, indent=2) + "\n")
    return folder
