"""``adaln_attention``: attention over modality tokens with coordinate-modulated layer norms.

Adaptive layer norm (adaLN) conditioning as in diffusion transformers (Peebles &
Xie, "Scalable Diffusion Models with Transformers", ICCV 2023), with the spot's
position as the condition: random Fourier features of the coordinates (Tancik et
al., NeurIPS 2020) pass through an MLP that predicts each norm's scale and shift,
so how gene and image tokens are mixed can vary smoothly across the tissue.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import FourierCoords, ModalityTokens, TokenBlock, check_heads
from ._registry import register_fusion


@register_fusion("adaln_attention")
class AdaLNAttentionFusion(nn.Module):
    """Modality-token transformer whose norms are modulated by a spatial embedding."""

    needs_coords = True

    def __init__(
        self,
        dims: dict[str, int],
        out_dim: int = 32,
        width: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.1,
        n_freqs: int = 32,
        sigma: float = 4.0,
    ):
        super().__init__()
        check_heads(width, n_heads, "adaln_attention")
        self.tokens = ModalityTokens(dims, width, dropout)
        self.fourier = FourierCoords(n_freqs=n_freqs, sigma=sigma)
        self.cond = nn.Sequential(nn.Linear(self.fourier.out_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.fuse = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList([TokenBlock(width, n_heads, dropout, cond_dim=width) for _ in range(n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, features: dict[str, torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"adaln_attention expects coords of shape (N, 2); got {tuple(coords.shape)}.")
        cond = self.cond(self.fourier(coords))
        x = self.tokens(features)
        x = torch.cat([self.fuse.expand(len(x), -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, cond)
        return self.out(x[:, 0])
