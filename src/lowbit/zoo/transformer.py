"""A small hand-written Transformer encoder classifier, traceable by torch.fx."""

import math

import torch
from torch import nn


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: multi-head self-attention and a GELU MLP, each with a residual add."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, heads, T, D/heads]."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale + additive_mask
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x + self.out(attn.transpose(1, 2).flatten(2))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TransformerEncoderNet(nn.Module):
    """Token + position embedding, encoder layers, masked mean pooling, linear classifier."""

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, layers: int = 2, num_classes: int = 10,
                 max_len: int = 128):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.embedding = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Classify token ids [B, T]; attention_mask [B, T] is 1 for tokens to keep, 0 for padding."""
        x = self.embedding(input_ids) + self.position[: input_ids.shape[1]]
        keep = attention_mask.to(x.dtype)
        additive_mask = ((1.0 - keep) * -10000.0)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, additive_mask)
        x = self.norm(x)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return self.classifier(pooled)
