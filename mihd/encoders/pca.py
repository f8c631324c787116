"""``pca``: library-size normalisation, log1p, highly variable genes and PCA (gene default).

The standard scanpy recipe (Wolf et al. 2018). Scaling to unit variance is optional:
it densifies the matrix, so it is on for spot-level slices and should be off for
HD slices of 10^6 cells.
"""

from __future__ import annotations

import numpy as np

from ._registry import register_gene_encoder


def working_copy(adata):
    """A float32 copy of ``adata`` for a gene encoder to normalise in place, without the
    ``highly_variable`` column a user may have brought (scanpy's PCA would use it; the encoders
    choose their own genes)."""
    a = adata.copy()
    a.var = a.var.drop(columns=["highly_variable"], errors="ignore")
    a.X = a.X.astype(np.float32)
    return a


@register_gene_encoder("pca")
class PCAGeneEncoder:
    """Normalise, log1p, select HVGs, (scale,) PCA."""

    def __init__(self, n_top_genes: int = 3000, n_comps: int = 30, scale: bool = True, target_sum: float = 1e4, seed: int = 0):
        if n_comps < 2:
            raise ValueError(f"encoder.gene_options.n_comps must be >= 2, got {n_comps}.")
        self.n_top_genes, self.n_comps, self.scale, self.target_sum, self.seed = n_top_genes, n_comps, scale, target_sum, seed

    @property
    def params(self) -> dict:
        return {"n_top_genes": self.n_top_genes, "n_comps": self.n_comps, "scale": self.scale, "target_sum": self.target_sum, "seed": self.seed}

    def encode(self, adata) -> np.ndarray:
        """Raw counts in ``adata.X`` -> ``(N, n_comps)`` float32 principal components."""
        import scanpy as sc

        a = working_copy(adata)
        sc.pp.normalize_total(a, target_sum=self.target_sum)
        sc.pp.log1p(a)
        n_top = min(self.n_top_genes, a.n_vars)
        if n_top < a.n_vars:
            sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
            a = a[:, a.var["highly_variable"].to_numpy()].copy()
        if self.scale:
            # Scaling densifies anyway; do it explicitly (HVGs only, so N x n_top_genes).
            a.X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
            sc.pp.scale(a, max_value=10)
        n_comps = min(self.n_comps, a.n_vars - 1, a.n_obs - 1)
        sc.tl.pca(a, n_comps=n_comps, random_state=self.seed)
        return np.asarray(a.obsm["X_pca"], dtype=np.float32)
