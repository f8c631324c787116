"""Building blocks shared by fusion strategies (torch only; no AnnData, no Lightning)."""

from __future__ import annotations

import math

import torch
from torch import nn


class ModalityTokens(nn.Module):
    """Project each modality's features to a common width: one token per modality.

    Modalities are kept in a fixed (sorted) order so token positions are stable.
    """

    def __init__(self, dims: dict[str, int], width: int, dropout: float = 0.0):
        super().__init__()
        if not dims:
            raise ValueError("a fusion needs at least one modality; got none.")
        self.names = sorted(dims)
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dims[m], width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width)) for m in self.names}
        )
        # A learned type embedding tells attention which token is which modality.
        self.type_emb = nn.Parameter(torch.zeros(len(self.names), width))
        nn.init.normal_(self.type_emb, std=0.02)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [m for m in self.names if m not in features]
        if missing:
            raise KeyError(f"fusion expected modalities {self.names}; missing {missing}.")
        return torch.stack([self.proj[m](features[m]) for m in self.names], dim=1) + self.type_emb


class ModalitySum(nn.Module):
    """Encode each modality with a small MLP and sum them: one fused vector per spot.

    Works on any leading shape, so the same weights embed a spot ``(B, F)`` and its
    neighbourhood ``(B, k, F)`` in graph fusions.
    """

    def __init__(self, dims: dict[str, int], width: int):
        super().__init__()
        self.names = sorted(dims)
        self.enc = nn.ModuleDict({m: nn.Sequential(nn.Linear(dims[m], width), nn.GELU(), nn.Linear(width, width)) for m in self.names})

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.enc[m](features[m]) for m in self.names)


class FourierCoords(nn.Module):
    """Random Fourier features of 2-D coordinates (Tancik et al. 2020), fixed at init.

    Coordinates are expected normalised (centred, unit scale); ``sigma`` sets the
    spatial frequencies: higher means finer spatial detail.
    """

    def __init__(self, n_freqs: int = 32, sigma: float = 4.0, in_dim: int = 2, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(in_dim, n_freqs, generator=gen) * sigma)
        self.out_dim = 2 * n_freqs

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * coords @ self.freqs
        return torch.cat([phase.sin(), phase.cos()], dim=-1)


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are predicted from a conditioning vector (adaLN, Peebles & Xie 2023).

    The modulation is zero-initialised, so training starts from a plain LayerNorm.
    """

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(cond_dim, 2 * width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class TokenBlock(nn.Module):
    """Pre-norm transformer block over modality tokens; norms optionally conditioned."""

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0, cond_dim: int | None = None):
        super().__init__()
        self.conditioned = cond_dim is not None
        self.norm1 = AdaLayerNorm(width, cond_dim) if self.conditioned else nn.LayerNorm(width)
        self.norm2 = AdaLayerNorm(width, cond_dim) if self.conditioned else nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, n_heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, width))

    def _norm(self, norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return norm(x, cond) if self.conditioned else norm(x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self._norm(self.norm1, x, cond)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self._norm(self.norm2, x, cond))


def check_heads(width: int, n_heads: int, name: str) -> None:
    if width % n_heads:
        raise ValueError(f"fusion {name}: width={width} must be divisible by n_heads={n_heads}.")


def check_neighborhood(name: str, neighborhood: dict) -> None:
    """A graph fusion's neighbourhood must carry (N, k, 2) offsets beside the features."""
    offsets = neighborhood.get("offsets")
    if offsets is None or offsets.ndim != 3 or offsets.shape[-1] != 2:
        shape = None if offsets is None else tuple(offsets.shape)
        raise ValueError(f"{name} expects neighborhood['offsets'] of shape (N, k, 2); got {shape}.")
