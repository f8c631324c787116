"""``pca``: library-size normalisation, log1p, gene selection, scaling and PCA (gene default).

The scanpy recipe (Wolf et al. 2018) with one change that matters on real slices: genes
are selected by **spatial autocorrelation** (Moran's I over the 6 nearest spots/cells,
``genes="moran"``) rather than by dispersion (``genes="hvg"``, scanpy's ``flavor="seurat"``).
Dispersion-ranked genes scaled to unit variance let sequencing depth dominate: on DLPFC
151675 the second PC of the default HVG recipe correlates 0.91 with log library size and the
clustering splits layers by depth (refined ARI 0.25). Genes ranked by Moran's I carry the
tissue's spatial structure and keep the benefit of scaling on targeted panels (STARmap's
166 genes), so one setting holds on both platforms (``benchmarks/compare/DIAGNOSIS.md``).

Genes are **Pareto-scaled** before PCA (``scale="pareto"``: each gene divided by the square
root of its sd; van den Berg et al., BMC Genomics 2006), between no scaling (a few
highly expressed genes dominate the PCs) and unit variance (``scale="unit"``: thousands of
low-expression genes weigh as much as the layer markers and their noise fills the PCs). On the
development set (4 DLPFC slices, 3 STARmap sections; ``gated``, seeds 0-2) Pareto scaling
raised the refined ARI on 151674 from 0.523 to 0.571 and on 151675 from 0.517 to 0.547, and on
the STARmap sections from 0.762 to 0.791 on average, without losing on 151673/151676
(``benchmarks/compare/DIAGNOSIS.md``, "Gene scaling").

Scaling is done on the sparse matrix (each gene divided by its sd or its square root) and the
PCA centres implicitly, so nothing is densified: memory stays O(nnz) at 10^6 cells.

``clip`` (default off) bounds the centred, scaled values at ``± clip`` (scanpy's
``sc.pp.scale(max_value=10)``) without densifying: see :func:`clip_centred`.
"""

from __future__ import annotations

import logging

import numpy as np

from ._registry import register_gene_encoder

log = logging.getLogger(__name__)

GENE_SELECTIONS = ("moran", "hvg")
SCALINGS = ("pareto", "unit", "none")


def _scaling(scale) -> str:
    """``encoder.gene_options.scale``: pareto | unit | none (true/false mean unit/none)."""
    if isinstance(scale, bool):
        return "unit" if scale else "none"
    if scale not in SCALINGS:
        raise ValueError(
            f"encoder.gene_options.scale={scale!r}; use one of {', '.join(SCALINGS)} "
            "(pareto: divide each gene by the square root of its sd; unit: by its sd; none: log-expression as is)."
        )
    return scale
MORAN_NEIGHBORS = 6


def working_copy(adata):
    """A float32 copy of ``adata`` for a gene encoder to normalise in place, without the
    ``highly_variable`` column a user may have brought (scanpy's PCA would use it; the encoders
    choose their own genes)."""
    a = adata.copy()
    a.var = a.var.drop(columns=["highly_variable"], errors="ignore")
    a.X = a.X.astype(np.float32)
    return a


def spatially_variable_genes(adata, n_top: int, *, n_neighbors: int = MORAN_NEIGHBORS) -> np.ndarray:
    """Column indices of the ``n_top`` genes of ``adata.X`` (normalised, log1p) with the highest
    Moran's I over the ``n_neighbors`` nearest observations; ties keep gene order."""
    from ..graph import knn_indices, morans_i

    nb = knn_indices(np.asarray(adata.obsm["spatial"], dtype=np.float64), min(n_neighbors, adata.n_obs - 1), include_self=True)
    score = morans_i(adata.X, nb)
    return np.sort(np.argsort(-score, kind="stable")[:n_top])


def _column_variance(X, chunk: int = 100_000) -> np.ndarray:
    """Per-column variance in float64, two passes over row chunks (centred, so a constant column
    gets exactly 0); temporary memory O(chunk's nonzeros), never a float64 copy of X."""
    from scipy import sparse

    n, p = X.shape
    total = np.zeros(p)
    for lo in range(0, n, chunk):
        total += np.asarray(X[lo : lo + chunk].sum(0, dtype=np.float64)).ravel()
    mean = total / n
    ss = np.zeros(p)
    for lo in range(0, n, chunk):
        part = X[lo : lo + chunk]
        if sparse.issparse(part):
            part = sparse.csr_matrix(part)
            d = part.data.astype(np.float64) - mean[part.indices]
            # nonzeros contribute (x - mean)^2, implicit zeros mean^2 each
            ss += np.bincount(part.indices, weights=d * d, minlength=p)
            ss += (part.shape[0] - np.bincount(part.indices, minlength=p)) * mean**2
        else:
            ss += ((np.asarray(part, dtype=np.float64) - mean) ** 2).sum(0)
    return ss / n


def scale_genes(X, scale: str = "pareto"):
    """Divide each gene (column) of ``X`` by its sd (``"unit"``), the square root of its sd
    (``"pareto"``) or nothing (``"none"``); constant genes become 0. Sparse stays sparse (the
    PCA centres implicitly), so memory is O(nnz)."""
    from scipy import sparse

    scale = _scaling(scale)
    if scale == "none":
        return X
    sd = np.sqrt(_column_variance(X))
    by = np.sqrt(sd) if scale == "pareto" else sd
    inv = np.where(by > 0, 1.0 / np.where(by > 0, by, 1.0), 0.0).astype(np.float32)
    return sparse.csr_matrix(X).multiply(inv[None, :]).tocsr() if sparse.issparse(X) else X * inv


def clip_centred(X, clip: float):
    """Clip the centred values of each gene (column) of ``X`` at ``± clip`` and return them
    uncentred (each column's original mean added back; the PCA centres again), as
    ``sc.pp.scale(max_value=clip)`` does, but O(nnz) on a sparse ``X``.

    A sparse matrix's stored entries are clipped (centred, clipped, uncentred). Its implicit zeros
    sit at ``-mean`` once centred, beyond ``± clip`` only for a gene with ``|mean| > clip`` (in the
    scaled units); those genes' zeros are stored explicitly at ``mean - clip`` (or ``mean + clip``),
    so the result is exact. The cost stays O(nnz): a column with a fraction ``z`` of zeros has
    ``|mean| / sd <= sqrt((1 - z) / z)``, so after unit scaling (``sd = 1``) such a gene has fewer
    than ``N / (1 + clip²)`` zeros (1 % of the observations for ``clip = 10``). A dense ``X`` is
    clipped directly.
    """
    from scipy import sparse

    clip = float(clip)
    mean = _column_mean(X)
    if not sparse.issparse(X):
        X = np.asarray(X)
        return (np.clip(X - mean, -clip, clip) + mean).astype(X.dtype, copy=False)
    X = sparse.csc_matrix(X, copy=True)
    X.sum_duplicates()
    col = np.repeat(np.arange(X.shape[1]), np.diff(X.indptr))
    m = mean[col]
    X.data = (np.clip(X.data.astype(np.float64) - m, -clip, clip) + m).astype(X.dtype)
    wide = np.flatnonzero(np.abs(mean) > clip)  # genes whose implicit zeros lie beyond ±clip once centred
    if wide.size:
        rows, cols, vals = [], [], []
        for j in wide:
            missing = np.setdiff1d(np.arange(X.shape[0]), X.indices[X.indptr[j]:X.indptr[j + 1]], assume_unique=True)
            rows.append(missing)
            cols.append(np.full(missing.size, j))
            vals.append(np.full(missing.size, mean[j] + np.clip(-mean[j], -clip, clip)))
        extra = sparse.csc_matrix((np.concatenate(vals).astype(X.dtype), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=X.shape)
        X = X + extra
    return X.tocsr()


def _column_mean(X) -> np.ndarray:
    return np.asarray(X.sum(0, dtype=np.float64)).ravel() / X.shape[0]


@register_gene_encoder("pca")
class PCAGeneEncoder:
    """Normalise, log1p, select genes (Moran's I or HVG), scale (Pareto, unit or none), optionally
    clip the centred values (``clip``), PCA."""

    def __init__(
        self,
        n_top_genes: int = 3000,
        n_comps: int = 30,
        scale: str | bool = "pareto",
        target_sum: float = 1e4,
        genes: str = "moran",
        seed: int = 0,
        clip: float | None = None,
    ):
        if n_comps < 2:
            raise ValueError(f"encoder.gene_options.n_comps must be >= 2, got {n_comps}.")
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ValueError(f"encoder.gene_options.clip={clip!r}; give a positive number (e.g. 10: centred, scaled "
                             "values bounded at ±10, as sc.pp.scale(max_value=10)) or null (no clipping).")
        if genes not in GENE_SELECTIONS:
            raise ValueError(f"encoder.gene_options.genes={genes!r}; use one of {', '.join(GENE_SELECTIONS)}.")
        self.n_top_genes, self.n_comps, self.target_sum, self.seed = n_top_genes, n_comps, target_sum, seed
        self.scale = _scaling(scale)
        self.genes = genes
        self.clip = None if clip is None else float(clip)

    @property
    def params(self) -> dict:
        params = {"n_top_genes": self.n_top_genes, "n_comps": self.n_comps, "scale": self.scale,
                  "target_sum": self.target_sum, "genes": self.genes, "seed": self.seed}
        if self.clip is not None:  # only when set: caches prepared without the option keep their keys
            params["clip"] = self.clip
        return params

    def encode(self, adata) -> np.ndarray:
        """Raw counts in ``adata.X`` -> ``(N, n_comps)`` float32 principal components."""
        import scanpy as sc

        X = self.pca_input(adata)
        n_comps = min(self.n_comps, X.shape[1] - 1, X.shape[0] - 1)
        pcs = sc.pp.pca(X.astype(np.float32), n_comps=n_comps, random_state=self.seed, zero_center=True)
        return np.asarray(pcs, dtype=np.float32)

    def pca_input(self, adata):
        """The ``(N, genes kept)`` matrix the PCA centres and decomposes: normalised, log1p, the genes
        selected, scaled and (with ``clip``) clipped; sparse when ``adata.X`` is."""
        import scanpy as sc

        a = working_copy(adata)
        sc.pp.normalize_total(a, target_sum=self.target_sum)
        sc.pp.log1p(a)
        n_top = min(self.n_top_genes, a.n_vars)
        genes = self.genes
        if genes == "moran" and "spatial" not in a.obsm:
            log.warning("encoder.gene_options.genes=moran needs obsm['spatial']; the data has none, so genes are ranked by dispersion (hvg)")
            genes = "hvg"
        if n_top < a.n_vars:
            if genes == "moran":
                a = a[:, spatially_variable_genes(a, n_top)].copy()
            else:
                sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
                a = a[:, a.var["highly_variable"].to_numpy()].copy()
        X = scale_genes(a.X, self.scale)
        return clip_centred(X, self.clip) if self.clip is not None else X
