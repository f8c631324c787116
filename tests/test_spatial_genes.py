"""Moran's I gene ranking, the depth-sized smoothing neighbourhood, and their use in a run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import sparse

from mihd.graph import knn_indices, morans_i, neighbors_for_depth


def _grid(n_side=30):
    g = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2).astype(float)
    return g


def test_morans_i_matches_scanpy_and_sparse_equals_dense():
    import scanpy as sc

    xy = _grid()
    rng = np.random.default_rng(0)
    smooth = np.sin(xy[:, 0] / 5.0)[:, None] + 0.1 * rng.normal(size=(len(xy), 1))
    noise = rng.normal(size=(len(xy), 3))
    X = np.hstack([smooth, noise, np.zeros((len(xy), 1))])  # a constant column scores 0
    nb = knn_indices(xy, 6, include_self=True)
    dense = morans_i(X, nb)
    assert np.allclose(morans_i(sparse.csr_matrix(X), nb), dense, atol=1e-10)
    # scanpy's Moran's I over the same row-normalised weights
    n, k = nb.shape[0], nb.shape[1] - 1
    W = sparse.csr_matrix((np.full(n * k, 1.0 / k), (np.repeat(np.arange(n), k), nb[:, 1:].ravel())), shape=(n, n))
    ref = sc.metrics.morans_i(W, X[:, :4].T)
    assert np.allclose(dense[:4], ref, atol=1e-8)
    assert dense[0] > 0.8 and np.all(np.abs(dense[1:4]) < 0.1) and dense[4] == 0.0


def test_morans_i_checks_shapes():
    nb = knn_indices(_grid(5), 4)
    with pytest.raises(ValueError, match="neighbors has 25 rows but X has 3"):
        morans_i(np.zeros((3, 2)), nb)
    with pytest.raises(ValueError, match="at least one neighbour"):
        morans_i(np.zeros((25, 2)), nb[:, :1])


@pytest.mark.parametrize(
    "median, expected",
    [(1200.0, 6), (3000.0, 6), (893.0, 6), (604.0, 9), (301.0, 19), (393.0, 15), (50.0, 30)],
)
def test_neighbors_for_depth_pools_about_six_thousand_molecules(median, expected):
    counts = np.full(101, median)
    assert neighbors_for_depth(counts) == expected


def test_neighbors_for_depth_ignores_empty_spots_and_refuses_all_empty():
    assert neighbors_for_depth(np.r_[np.zeros(50), np.full(51, 301.0)]) == 19
    with pytest.raises(ValueError, match="zero counts"):
        neighbors_for_depth(np.zeros(10))


def _striped_slice(seed=0):
    """Counts where the first 5 genes follow spatial stripes and the rest is depth-driven noise."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    xy = _grid(24) * 100.0
    stripe = (xy[:, 0] // 600).astype(int) % 2
    depth = rng.lognormal(6.5, 0.5, len(xy))
    rate = np.full((len(xy), 40), 1e-3)
    rate[:, :5] = np.where(stripe[:, None] == 1, 8e-3, 1e-3)
    counts = rng.poisson(rate * depth[:, None])
    a = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)))
    a.obsm["spatial"] = xy
    return a, stripe


def test_pca_encoder_ranks_genes_by_moran_and_falls_back_without_coords(caplog):
    from mihd.encoders.pca import PCAGeneEncoder, spatially_variable_genes
    import scanpy as sc

    a, stripe = _striped_slice()
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    assert set(spatially_variable_genes(b, 5)) == {0, 1, 2, 3, 4}
    pcs = PCAGeneEncoder(n_top_genes=5, n_comps=3).encode(a)
    hvg = PCAGeneEncoder(n_top_genes=5, n_comps=3, genes="hvg").encode(a)
    r_moran, r_hvg = (abs(np.corrcoef(p[:, 0], stripe)[0, 1]) for p in (pcs, hvg))
    assert r_moran > 0.75 and r_moran > r_hvg + 0.2, (r_moran, r_hvg)
    no_coords = a.copy()
    del no_coords.obsm["spatial"]
    with caplog.at_level(logging.WARNING):
        out = PCAGeneEncoder(n_top_genes=5, n_comps=3).encode(no_coords)
    assert out.shape == (a.n_obs, 3) and "ranked by dispersion" in caplog.text
    with pytest.raises(ValueError, match="genes='svg'; use one of moran, hvg"):
        PCAGeneEncoder(genes="svg")


def test_sparse_scaling_gives_the_dense_scaled_pca():
    """Scaling the sparse matrix by column and centring inside the PCA equals dense z-scored PCA."""
    from mihd.encoders.pca import PCAGeneEncoder

    a, _ = _striped_slice(1)
    sparse_pcs = PCAGeneEncoder(n_top_genes=20, n_comps=4).encode(a)
    dense = a.copy()
    dense.X = dense.X.toarray()
    dense_pcs = PCAGeneEncoder(n_top_genes=20, n_comps=4).encode(dense)
    for j in range(4):
        assert abs(np.corrcoef(sparse_pcs[:, j], dense_pcs[:, j])[0, 1]) > 0.999


def test_train_sizes_the_neighbourhood_from_depth_and_refuses_bad_values(tiny_slice):
    from mihd.cli import compose
    from mihd.train import train

    overrides = ["fusion=genes_only", "data=synthetic", "data.n_domains=3", "encoder.image=none", "trainer=fast"]
    res = train(compose("train", overrides), adata=tiny_slice.copy(), write=False, progress=False)
    expected = neighbors_for_depth(np.asarray(tiny_slice.X.sum(1)).ravel())
    assert res.metrics["spatial_neighbors"] == expected
    res = train(compose("train", overrides + ["spatial.n_neighbors=8"]), adata=tiny_slice.copy(), write=False, progress=False)
    assert res.metrics["spatial_neighbors"] == 8
    with pytest.raises(ValueError, match=r"spatial.n_neighbors='six'.*or auto"):
        train(compose("train", overrides + ["spatial.n_neighbors=six"]), adata=tiny_slice.copy(), write=False)


@pytest.mark.parametrize("sparse_input", [True, False])
def test_scale_genes_pareto_unit_none(sparse_input):
    """Pareto scaling leaves each gene with variance = its sd (unit: 1); constant genes become 0."""
    from scipy import sparse

    from mihd.encoders.pca import scale_genes

    rng = np.random.default_rng(0)
    X = rng.poisson([0.2, 1.0, 5.0, 20.0], size=(2000, 4)).astype(np.float32)
    X[:, 0] = 3.0  # a constant gene
    sd = X.std(0)
    Xin = sparse.csr_matrix(X) if sparse_input else X
    dense = lambda m: m.toarray() if sparse.issparse(m) else m  # noqa: E731
    assert sparse.issparse(scale_genes(Xin, "pareto")) == sparse_input
    np.testing.assert_allclose(dense(scale_genes(Xin, "pareto")).std(0)[1:], np.sqrt(sd[1:]), rtol=1e-4)
    np.testing.assert_allclose(dense(scale_genes(Xin, "unit")).std(0)[1:], 1.0, rtol=1e-4)
    np.testing.assert_array_equal(dense(scale_genes(Xin, "pareto"))[:, 0], 0.0)
    np.testing.assert_array_equal(dense(scale_genes(Xin, "none")), X)
    np.testing.assert_array_equal(dense(scale_genes(Xin, True)), dense(scale_genes(Xin, "unit")))  # old boolean form


def test_unknown_scaling_is_refused_with_the_options():
    from mihd.encoders.pca import PCAGeneEncoder

    with pytest.raises(ValueError, match=r"encoder.gene_options.scale='zscore'.*pareto, unit, none"):
        PCAGeneEncoder(scale="zscore")
