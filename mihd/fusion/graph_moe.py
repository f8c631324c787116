"""``graph_moe``: a mixture of experts gated by each spot's spatial context (mihd's own design).

Idea: tissue domains differ in which modality is informative (white matter is
obvious in H&E, cortical layers mostly in expression), so a single fusion function
is a compromise. A sparse-free mixture of experts (Jacobs et al., Neural Comput 1991;
Shazeer et al., ICLR 2017) lets several expert MLPs specialise, and the gate that
picks among them sees the spot *and the mean of its k spatial neighbours*, so
neighbouring spots tend to use the same experts and the embedding is spatially
coherent without smoothing it. A load-balancing loss (Shazeer et al.) keeps every
expert in use. The neighbourhood arrives per mini-batch (O(B k F) memory).
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import ModalitySum, check_neighborhood
from ._registry import register_fusion


@register_fusion("graph_moe")
class GraphGatedMoEFusion(nn.Module):
    """Expert MLPs over [spot, neighbourhood mean], mixed by a context-aware softmax gate."""

    def __init__(
        self,
        dims: dict[str, int],
        out_dim: int = 32,
        width: int = 64,
        n_experts: int = 4,
        balance_weight: float = 0.01,
        dropout: float = 0.1,
    ):
        super().__init__()
        if n_experts < 2:
            raise ValueError(f"graph_moe: n_experts must be >= 2; got {n_experts}.")
        self.names = sorted(dims)
        self.enc = ModalitySum(dims, width)
        self.norm = nn.LayerNorm(2 * width)
        self.gate = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, n_experts))
        self.experts = nn.ModuleList(
            [nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, out_dim)) for _ in range(n_experts)]
        )
        self.balance_weight = balance_weight
        self._last_gates: torch.Tensor | None = None

    def gates(self, features, neighborhood) -> torch.Tensor:
        """(N, n_experts) gate probabilities."""
        return torch.softmax(self.gate(self._context(features, neighborhood)), -1)

    def _context(self, features, neighborhood) -> torch.Tensor:
        h = self.enc(features)  # (B, W)
        hn = self.enc({m: neighborhood[m] for m in self.names}).mean(1)  # (B, W): neighbourhood mean
        return self.norm(torch.cat([h, hn], -1))

    def forward(self, features: dict[str, torch.Tensor], coords: torch.Tensor, neighborhood: dict[str, torch.Tensor]) -> torch.Tensor:
        check_neighborhood("graph_moe", neighborhood)
        x = self._context(features, neighborhood)
        gates = torch.softmax(self.gate(x), -1)
        self._last_gates = gates
        outs = torch.stack([e(x) for e in self.experts], 1)  # (B, E, out)
        return (gates.unsqueeze(-1) * outs).sum(1)

    def extra_loss(self, z: torch.Tensor, batch: dict) -> torch.Tensor:
        """Load balancing: n_experts * sum_e (mean gate_e)^2, minimal (= 1) when experts share the load."""
        g = self._last_gates
        if g is None:
            return z.new_zeros(())
        usage = g.mean(0)
        return self.balance_weight * (len(usage) * (usage**2).sum() - 1.0)
