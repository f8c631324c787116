"""``attention``: self-attention over one token per modality, read out by a fusion token.

Token-level multimodal transformer fusion (Nagrani et al., "Attention Bottlenecks
for Multimodal Fusion", NeurIPS 2021, without the bottleneck): each modality is
projected to a token, a learned [FUSE] token attends to them, and its final state
is the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import ModalityTokens, TokenBlock, check_heads
from ._registry import register_fusion


@register_fusion("attention")
class AttentionFusion(nn.Module):
    """Transformer over modality tokens with a learned fusion token."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, width: int = 64, n_heads: int = 4, n_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        check_heads(width, n_heads, "attention")
        self.tokens = ModalityTokens(dims, width, dropout)
        self.fuse = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList([TokenBlock(width, n_heads, dropout) for _ in range(n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.tokens(features)
        x = torch.cat([self.fuse.expand(len(x), -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.out(x[:, 0])
