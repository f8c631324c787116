"""``mean``: learned weighted sum of per-modality projections.

Late fusion by a convex combination of modality embeddings with learned global
weights (softmax over one logit per modality), the "sum" baseline of multimodal
representation learning (Baltrušaitis et al., TPAMI 2019).
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import ModalityTokens
from ._registry import register_fusion


@register_fusion("mean")
class MeanFusion(nn.Module):
    """Softmax-weighted sum of modality projections, then a linear read-out."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, width: int = 64, dropout: float = 0.1):
        super().__init__()
        self.tokens = ModalityTokens(dims, width, dropout)
        self.logits = nn.Parameter(torch.zeros(len(dims)))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def modality_weights(self) -> dict[str, float]:
        """The learned weight of each modality (they sum to one)."""
        w = torch.softmax(self.logits.detach(), 0)
        return {m: float(v) for m, v in zip(self.tokens.names, w)}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.tokens(features)  # (N, M, width)
        return self.out((torch.softmax(self.logits, 0)[None, :, None] * x).sum(1))
