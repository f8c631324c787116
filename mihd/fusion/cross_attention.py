"""``cross_attention``: each modality attends to the others (co-attention).

Bidirectional cross-modal attention as in ViLBERT (Lu et al., NeurIPS 2019) and
LXMERT (Tan & Bansal, EMNLP 2019): every modality is split into several tokens,
each modality's tokens query the tokens of the other modalities, and the updated
tokens are pooled per modality and concatenated. Unlike ``attention`` (one token
per modality, self-attention), a modality's features are read through the lens
of the other.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import check_heads
from ._registry import register_fusion


@register_fusion("cross_attention")
class CrossAttentionFusion(nn.Module):
    """Multi-token modalities; each attends to the others; pooled and concatenated."""

    def __init__(self, dims: dict[str, int], out_dim: int = 32, width: int = 64, n_tokens: int = 4, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        check_heads(width, n_heads, "cross_attention")
        self.names = sorted(dims)
        self.n_tokens, self.width = n_tokens, width
        self.split = nn.ModuleDict({m: nn.Linear(dims[m], n_tokens * width) for m in self.names})
        self.pos = nn.Parameter(torch.randn(len(self.names), n_tokens, width) * 0.02)
        self.norm_q = nn.ModuleDict({m: nn.LayerNorm(width) for m in self.names})
        self.norm_kv = nn.ModuleDict({m: nn.LayerNorm(width) for m in self.names})
        self.attn = nn.ModuleDict({m: nn.MultiheadAttention(width, n_heads, dropout=dropout, batch_first=True) for m in self.names})
        self.ff = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)) for m in self.names}
        )
        self.out = nn.Sequential(nn.LayerNorm(width * len(self.names)), nn.Linear(width * len(self.names), out_dim))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        n = len(next(iter(features.values())))
        toks = {m: self.split[m](features[m]).view(n, self.n_tokens, self.width) + self.pos[i] for i, m in enumerate(self.names)}
        pooled = []
        for m in self.names:
            others = [toks[o] for o in self.names if o != m] or [toks[m]]  # one modality: self-attention
            kv = self.norm_kv[m](torch.cat(others, 1))
            x = toks[m] + self.attn[m](self.norm_q[m](toks[m]), kv, kv, need_weights=False)[0]
            x = x + self.ff[m](x)
            pooled.append(x.mean(1))
        return self.out(torch.cat(pooled, -1))
