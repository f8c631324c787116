"""``concat``: concatenate modality features and encode them with an MLP.

The early-fusion baseline used throughout multimodal learning (e.g. Baltrušaitis
et al., "Multimodal Machine Learning: A Survey and Taxonomy", TPAMI 2019).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


@register_fusion("concat")
class ConcatFusion(nn.Module):
    """Early fusion: MLP over the concatenated modality features."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.names = sorted(dims)
        self.net = nn.Sequential(
            nn.Linear(sum(dims.values()), hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat([features[m] for m in self.names], dim=-1))
