"""``pearson``: analytic Pearson residuals of a negative-binomial null, then PCA.

Lause, Berens & Kobak, "Analytic Pearson residuals for normalization of single-cell RNA-seq UMI
data", Genome Biology 2021 (scanpy's ``sc.experimental.pp`` implementation). Each count is
compared with what the spot's depth alone predicts, ``mu = total_spot * total_gene / total``:
``r = (x - mu) / sqrt(mu + mu^2 / theta)``, clipped to ``+-sqrt(N)``. Sequencing depth is
modelled rather than divided out, so shallow spots do not gain zeros-driven structure the way
log-normalised PCs do (on the real DLPFC slices the second log-normalised PC correlates 0.93 with
log UMI). Genes are chosen by residual variance.

An option, not the default: on DLPFC 151673 / 151674 the smoothed-PCA floor scored a median ARI of
0.411 with these residuals against 0.589 with the default log-normalised PCs (pre-registered test,
benchmarks/dev/PREREGISTRATION.md addendum 3), and 0.532 once the PCs were z-scored (below). With
the PC1-sd scaling the GMM spent one of its K domains on a small compact patch (29 / 19 spots).
The residual PC1 can have five times the sd of PC2; kept at that profile, it leaves a trained
fusion's reconstruction loss little but PC1 (on one development slice every trained fusion collapsed
to ARI ~0.06 where ``genes_only`` did not; z-scored, ~0.47). So this encoder declares
``feature_scaling = "zscore"`` and the runner gives each of its PCs sd 1.

The residuals are dense (spots x ``n_top_genes``): the encoder refuses, before computing, a
matrix larger than ``max_dense_gib``; for HD slices use ``encoder=default`` with
``encoder.gene_options.scale=false``, or fewer genes.
"""

from __future__ import annotations

import numpy as np

from ._registry import register_gene_encoder
from .pca import working_copy


def _number(kind, name: str, value):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"encoder.gene_options.{name} must be a number, got {value!r}.") from None


@register_gene_encoder("pearson")
class PearsonResidualGeneEncoder:
    """Pearson-residual HVGs, residuals, PCA."""

    feature_scaling = "zscore"  # the runner's gene scaling (mihd.train._runner._standardise)

    def __init__(
        self,
        n_top_genes: int = 3000,
        n_comps: int = 30,
        theta: float = 100.0,
        clip: float | None = None,
        max_dense_gib: float = 4.0,
        seed: int = 0,
    ):
        n_top_genes, n_comps = _number(int, "n_top_genes", n_top_genes), _number(int, "n_comps", n_comps)
        theta, max_dense_gib = _number(float, "theta", theta), _number(float, "max_dense_gib", max_dense_gib)
        clip = None if clip is None else _number(float, "clip", clip)
        if n_comps < 2:
            raise ValueError(f"encoder.gene_options.n_comps must be >= 2, got {n_comps}.")
        if n_top_genes < 2:
            raise ValueError(f"encoder.gene_options.n_top_genes must be >= 2, got {n_top_genes}.")
        if not theta > 0:
            raise ValueError(f"encoder.gene_options.theta (the negative-binomial overdispersion) must be > 0, got {theta}; 100 is the published default.")
        if clip is not None and not clip > 0:
            raise ValueError(f"encoder.gene_options.clip must be > 0 or null (sqrt(n_spots)), got {clip}.")
        self.n_top_genes, self.n_comps, self.theta, self.clip = n_top_genes, n_comps, theta, clip
        self.max_dense_gib, self.seed = max_dense_gib, _number(int, "seed", seed)

    @property
    def params(self) -> dict:
        return {"n_top_genes": self.n_top_genes, "n_comps": self.n_comps, "theta": self.theta, "clip": self.clip, "seed": self.seed}

    def _check(self, adata) -> None:
        from scipy import sparse

        x = adata.X
        gib = adata.n_obs * min(self.n_top_genes, adata.n_vars) * 4 / 2**30
        if gib > self.max_dense_gib:
            raise ValueError(
                f"encoder.gene=pearson would hold a dense {adata.n_obs} x {min(self.n_top_genes, adata.n_vars)} residual "
                f"matrix ({gib:.1f} GiB > encoder.gene_options.max_dense_gib={self.max_dense_gib:g}). Use fewer genes "
                "(encoder.gene_options.n_top_genes), raise max_dense_gib, or use encoder=default encoder.gene_options.scale=false for HD slices."
            )
        sample = x[: min(adata.n_obs, 2000)]
        vals = sample.data if sparse.issparse(sample) else np.asarray(sample).ravel()
        if vals.size and (vals.min() < 0 or not np.allclose(vals, np.round(vals))):
            raise ValueError(
                "encoder.gene=pearson needs raw UMI counts in adata.X (non-negative integers); this X holds "
                f"values such as {vals[(vals < 0) | (vals != np.round(vals))][:3].tolist()}. Put the counts in X, or use encoder=default."
            )

    def encode(self, adata) -> np.ndarray:
        """Raw counts in ``adata.X`` -> ``(N, n_comps)`` float32 principal components of the residuals."""
        import scanpy as sc

        self._check(adata)
        a = working_copy(adata)
        # A gene or spot with no counts has mu = 0 and a 0/0 residual: such genes are dropped,
        # such spots keep residual 0 (depth predicts nothing there) and do not vote for genes.
        a = a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()
        if a.n_vars < 2:
            raise ValueError(f"encoder.gene=pearson: only {a.n_vars} gene(s) of {adata.n_vars} have any counts in adata.X.")
        has_counts = np.asarray(a.X.sum(1)).ravel() > 0
        n_top = min(self.n_top_genes, a.n_vars)
        if n_top < a.n_vars:
            votes = a[has_counts].copy()
            sc.experimental.pp.highly_variable_genes(votes, flavor="pearson_residuals", n_top_genes=n_top, theta=self.theta, clip=self.clip)
            a = a[:, votes.var["highly_variable"].to_numpy()].copy()
            has_counts = np.asarray(a.X.sum(1)).ravel() > 0  # a spot may have counts only in unchosen genes
        with np.errstate(divide="ignore", invalid="ignore"):  # the zero-count spots, reset below
            sc.experimental.pp.normalize_pearson_residuals(a, theta=self.theta, clip=self.clip)
        a.X[~has_counts] = 0.0
        n_comps = min(self.n_comps, a.n_vars - 1, a.n_obs - 1)
        sc.tl.pca(a, n_comps=n_comps, random_state=self.seed)
        return np.asarray(a.obsm["X_pca"], dtype=np.float32)
