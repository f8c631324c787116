"""``film``: the image conditions gene features by feature-wise affine modulation.

FiLM (Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer",
AAAI 2018): an MLP of the image features predicts a per-channel scale and shift
applied to the hidden gene representation, so histology modulates which expression
programmes matter rather than being appended to them. Without an image modality
the gene MLP runs unmodulated.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


@register_fusion("film")
class FiLMFusion(nn.Module):
    """Gene MLP whose hidden layers are scaled and shifted by the image (and any other modality)."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, width: int = 64, n_layers: int = 2, dropout: float = 0.1, base: str = "gene"):
        super().__init__()
        if base not in dims:
            raise ValueError(f"film: base modality {base!r} not among {sorted(dims)}.")
        self.base = base
        self.conditions = sorted(m for m in dims if m != base)
        self.inp = nn.Linear(dims[base], width)
        self.layers = nn.ModuleList([nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for _ in range(n_layers)])
        self.drop = nn.Dropout(dropout)
        cond_dim = sum(dims[m] for m in self.conditions)
        # One (scale, shift) pair per layer, zero-initialised: training starts unmodulated.
        self.film = nn.Linear(cond_dim, 2 * width * n_layers) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.inp(features[self.base])
        params = None
        if self.film is not None:
            params = self.film(torch.cat([features[m] for m in self.conditions], -1)).chunk(2 * len(self.layers), -1)
        for i, layer in enumerate(self.layers):
            u = layer(h)
            if params is not None:
                u = u * (1 + params[2 * i]) + params[2 * i + 1]
            h = h + self.drop(nn.functional.gelu(u))
        return self.out(h)
