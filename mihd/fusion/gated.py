"""``gated``: per-spot modality gates, as in Gated Multimodal Units.

Arevalo et al., "Gated Multimodal Units for Information Fusion", ICLR workshop 2017:
each modality is encoded with a tanh layer, and a gate computed from all modalities
decides, spot by spot, how much each contributes. Spots where the H&E patch is
uninformative (background, folds) can lean on expression, and vice versa.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


@register_fusion("gated")
class GatedFusion(nn.Module):
    """Gated Multimodal Unit generalised to any number of modalities (softmax gates per spot)."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, width: int = 64, dropout: float = 0.1):
        super().__init__()
        self.names = sorted(dims)
        self.enc = nn.ModuleDict({m: nn.Sequential(nn.Linear(dims[m], width), nn.Tanh()) for m in self.names})
        self.gate = nn.Sequential(nn.Linear(sum(dims.values()), width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, len(self.names)))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def gates(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, n_modalities) per-spot weights, rows summing to one."""
        return torch.softmax(self.gate(torch.cat([features[m] for m in self.names], -1)), -1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        h = torch.stack([self.enc[m](features[m]) for m in self.names], 1)  # (N, M, width)
        return self.out((self.gates(features).unsqueeze(-1) * h).sum(1))
