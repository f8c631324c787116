"""``genes_only``: the non-learned floor — the gene PCA itself is the embedding.

Every comparison table needs a floor: clustering the gene principal components
directly is what most spatial-domain papers call the "PCA" or "expression only"
baseline (e.g. the non-spatial baselines in Maynard et al., Nat Neurosci 2021).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


@register_fusion("genes_only")
class GenesOnly(nn.Module):
    """Non-learned baseline: returns the gene features unchanged (image ignored)."""

    trainable = False

    def __init__(self, dims: dict[str, int], out_dim: int | None = None):
        super().__init__()
        if "gene" not in dims:
            raise ValueError(f"genes_only needs a 'gene' modality; got {sorted(dims)}.")

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return features["gene"]
