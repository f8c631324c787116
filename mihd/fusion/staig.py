"""``staig``: image-guided graph contrastive learning, in the style of STAIG.

STAIG (Yang et al., "STAIG: Spatial transcriptomics analysis via image-aided graph
contrastive learning for domain exploration and alignment-free integration",
Nat Commun 2025) trains a GNN on the spatial graph with a GRACE-style contrastive
objective (Zhu et al., 2020): two views of the graph are made by dropping edges,
where an edge between spots whose histology looks different is dropped more often;
the two embeddings of a spot are pulled together with an InfoNCE loss, and spots
that share a k-means pseudo-label of the image features are not used as negatives
(false-negative removal).

Here that objective is this strategy's ``extra_loss``, added to the runner's shared
reconstruction loss: training goes through the generic Lightning runner. The graph
is each spot's k nearest neighbours, carried per mini-batch (O(B k F) memory). The
pseudo-labels are computed once per slice, from features only, by ``precompute``.
Differences from the paper: the GNN is one mean-aggregation layer on the cKDTree kNN
graph (not a multi-layer GCN on a radius graph), and image features come from
mihd's image encoders rather than a BYOL ResNet.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._layers import ModalitySum, check_neighborhood
from ._registry import register_fusion


@register_fusion("staig")
class STAIGFusion(nn.Module):
    """GNN encoder trained with image-guided edge-drop views, InfoNCE and false-negative removal."""

    def __init__(
        self,
        dims: dict[str, int],
        out_dim: int = 32,
        width: int = 64,
        n_pseudo_clusters: int = 10,
        temperature: float = 0.5,
        drop_min: float = 0.1,
        drop_max: float = 0.6,
        feature_drop: float = 0.2,
        contrastive_weight: float = 1.0,
        guide: str = "image",
    ):
        super().__init__()
        if not 0 <= drop_min <= drop_max < 1:
            raise ValueError(f"staig: need 0 <= drop_min <= drop_max < 1; got {drop_min}, {drop_max}.")
        if n_pseudo_clusters < 2:
            raise ValueError(f"staig: n_pseudo_clusters must be >= 2; got {n_pseudo_clusters}.")
        self.names = sorted(dims)
        self.guide = guide if guide in dims else "gene"  # without an image, genes guide the views
        self.n_pseudo_clusters, self.temperature = n_pseudo_clusters, temperature
        self.drop_min, self.drop_max, self.feature_drop = drop_min, drop_max, feature_drop
        self.contrastive_weight = contrastive_weight
        self.enc = ModalitySum(dims, width)
        self.gnn = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, out_dim))
        self.proj = nn.Sequential(nn.Linear(out_dim, width), nn.GELU(), nn.Linear(width, out_dim))

    # ------------------------------------------------------------------ encoder
    def _fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.enc(feats)

    def _encode(self, features, neighborhood, edge_mask: torch.Tensor | None = None, feat_mask=None) -> torch.Tensor:
        if feat_mask is not None:
            features = {m: x * feat_mask[0][m] for m, x in features.items()}
            neighborhood = {**neighborhood, **{m: neighborhood[m] * feat_mask[1][m] for m in self.names}}
        h = self._fuse(features)  # (B, W)
        hn = self._fuse({m: neighborhood[m] for m in self.names})  # (B, k, W)
        w = torch.ones(hn.shape[:2], device=hn.device) if edge_mask is None else edge_mask.float()
        agg = (w.unsqueeze(-1) * hn).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)  # mean over kept edges
        return self.gnn(torch.cat([h, agg], -1))

    def forward(self, features: dict[str, torch.Tensor], coords: torch.Tensor, neighborhood: dict[str, torch.Tensor]) -> torch.Tensor:
        check_neighborhood("staig", neighborhood)
        return self._encode(features, neighborhood)

    # ------------------------------------------------------------------ per-slice, label-free
    def precompute(self, features: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        """k-means pseudo-labels of the guide modality (image by default), for false-negative removal."""
        from sklearn.cluster import MiniBatchKMeans

        x = features[self.guide]
        k = min(self.n_pseudo_clusters, len(x))
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
        return {"pseudo_label": km.fit_predict(x).astype(np.int64)}

    # ------------------------------------------------------------------ objective
    def _edge_drop_probability(self, features, neighborhood) -> torch.Tensor:
        g, gn = features[self.guide], neighborhood[self.guide]
        sim = nn.functional.cosine_similarity(g.unsqueeze(1), gn, dim=-1)  # (B, k) in [-1, 1]
        return self.drop_min + (self.drop_max - self.drop_min) * (1 - sim) / 2  # dissimilar histology: dropped more

    def _feature_masks(self, features, neighborhood):
        keep = 1 - self.feature_drop
        own = {m: (torch.rand(1, x.shape[-1], device=x.device) < keep).float() for m, x in features.items()}
        return own, {m: own[m].unsqueeze(0) for m in self.names}

    def extra_loss(self, z: torch.Tensor, batch: dict) -> torch.Tensor:
        features = {m: batch[m] for m in self.names}
        hood = batch["neighborhood"]
        p_drop = self._edge_drop_probability(features, hood)
        views = []
        for _ in range(2):
            mask = torch.rand_like(p_drop) >= p_drop
            views.append(nn.functional.normalize(self.proj(self._encode(features, hood, mask, self._feature_masks(features, hood))), dim=-1))
        return self.contrastive_weight * _info_nce(views[0], views[1], batch["aux"]["pseudo_label"], self.temperature)


def _info_nce(a: torch.Tensor, b: torch.Tensor, pseudo: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric GRACE-style InfoNCE; pairs sharing a pseudo-label are dropped from the negatives."""
    n = len(a)
    same = pseudo.unsqueeze(0) == pseudo.unsqueeze(1)
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    false_neg = same & ~eye  # same pseudo-cluster, different spot: not a negative

    def one_side(x, y):
        cross = torch.exp(x @ y.T / tau)
        within = torch.exp(x @ x.T / tau)
        pos = cross.diagonal()
        neg = cross.masked_fill(eye | false_neg, 0).sum(1) + within.masked_fill(eye | false_neg, 0).sum(1)
        return -torch.log(pos / (pos + neg)).mean()

    return 0.5 * (one_side(a, b) + one_side(b, a))
