"""``gnn``: graph attention over each spot's spatial kNN neighbourhood of fused features.

A graph attention layer (Veličković et al., "Graph Attention Networks", ICLR 2018) on
the cKDTree k-nearest-neighbour graph of spots, as spatial-domain methods such as
STAGATE (Dong & Zhang, Nat Commun 2022) use: each spot's modalities are first fused
into one vector (per-modality MLPs, summed), then the spot attends over itself and
its k neighbours, with attention logits that also see the neighbour's relative
position. The graph is never materialised: every (mini-)batch carries its spots'
``(B, k, F)`` neighbourhood features, so memory is O(B k F).
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import ModalitySum, check_neighborhood
from ._registry import register_fusion


@register_fusion("gnn")
class GraphAttentionFusion(nn.Module):
    """Multi-head graph attention over the spot and its spatial neighbours."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, width: int = 64, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"fusion gnn: width={width} must be divisible by n_heads={n_heads}.")
        self.names = sorted(dims)
        self.n_heads, self.head_dim = n_heads, width // n_heads
        self.enc = ModalitySum(dims, width)
        self.norm = nn.LayerNorm(width)
        self.value = nn.Linear(width, width)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.pos = nn.Sequential(nn.Linear(2, width), nn.GELU(), nn.Linear(width, n_heads))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim))

    def _fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.norm(self.enc(feats))

    def forward(self, features: dict[str, torch.Tensor], coords: torch.Tensor, neighborhood: dict[str, torch.Tensor]) -> torch.Tensor:
        check_neighborhood("gnn", neighborhood)
        offsets = neighborhood["offsets"]
        b, k = offsets.shape[:2]
        h_self = self._fuse(features)  # (B, W)
        h_nbr = self._fuse({m: neighborhood[m] for m in self.names})  # (B, k, W)
        h_all = torch.cat([h_self.unsqueeze(1), h_nbr], 1)  # the spot attends to itself too
        rel = torch.cat([torch.zeros_like(offsets[:, :1]), offsets], 1)  # (B, k+1, 2)
        # Offsets are tiny in normalised units; rescale by the neighbourhood's own spread.
        rel = rel / (rel.norm(dim=-1).amax(1, keepdim=True).unsqueeze(-1) + 1e-6)
        q = self.query(h_self).view(b, self.n_heads, self.head_dim)
        kk = self.key(h_all).view(b, k + 1, self.n_heads, self.head_dim)
        v = self.value(h_all).view(b, k + 1, self.n_heads, self.head_dim)
        logits = torch.einsum("bhd,bjhd->bjh", q, kk) / self.head_dim**0.5 + self.pos(rel)
        attn = self.drop(torch.softmax(logits, dim=1))  # over the k+1 members
        agg = torch.einsum("bjh,bjhd->bhd", attn, v).reshape(b, -1)
        return self.out(h_self + agg)
