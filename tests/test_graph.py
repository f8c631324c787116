"""Neighbour search (`mihd.graph`) against brute force, on random, lattice and duplicate layouts."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import shared_data_dir
from scipy import sparse

from mihd.graph import GRID_MIN_POINTS, _resolve_engine, build_spatial_graph, knn_indices, radius_neighbors

ENGINES = ["kdtree", "grid"]


def slideseq_coords() -> np.ndarray:
    path = shared_data_dir() / "slideseq_v2_cerebellum" / "slideseqv2_mc_coords_filtered.csv"
    if not path.is_file():
        pytest.skip(f"real Slide-seqV2 layout not found at {path} (set MIHD_DATA_DIR to the shared data folder)")
    import pandas as pd

    return pd.read_csv(path, index_col=0)[["x", "y"]].to_numpy(dtype=float)


# --------------------------------------------------------------------------- layouts


def random_layout(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 2)) * 100.0


def hex_layout(rows: int = 18, cols: int = 22) -> np.ndarray:
    """Exact Visium-like hexagonal lattice: every point has 6 neighbours at equal distance."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    x = c * 1.0 + 0.5 * (r % 2)
    y = r * np.sqrt(3) / 2
    return np.column_stack([x.ravel(), y.ravel()]) * 100.0


def duplicate_layout(seed: int = 1) -> np.ndarray:
    """Random points, some repeated twice and one spot repeated 12 times (more than k + 1)."""
    rng = np.random.default_rng(seed)
    base = rng.random((250, 2)) * 50.0
    return np.vstack([base, base[:40], np.repeat(base[100:101], 11, axis=0)])


LAYOUTS = {"random": random_layout, "hex": hex_layout, "duplicates": duplicate_layout}


def brute_sq_dist(pts: np.ndarray) -> np.ndarray:
    return ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)


def check_against_brute_force(pts: np.ndarray, idx: np.ndarray, k: int, include_self: bool) -> None:
    n = len(pts)
    offset = int(include_self)
    assert idx.shape == (n, k + offset)
    assert idx.dtype == np.int32
    rows = np.arange(n)
    if include_self:
        assert (idx[:, 0] == rows).all(), "self must come first, even with duplicate coordinates"
    others = idx[:, offset:]
    assert (others != rows[:, None]).all(), "a point is not its own neighbour"
    assert all(len(set(row)) == k for row in others), "neighbours are distinct"
    d2 = brute_sq_dist(pts)
    got = d2[rows[:, None], others]
    assert (np.diff(got, axis=1) >= -1e-9).all(), "rows are sorted by distance"
    np.fill_diagonal(d2, np.inf)
    expected = np.sort(d2, axis=1)[:, :k]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("k", [1, 6, 18])
@pytest.mark.parametrize("include_self", [True, False])
def test_knn_matches_brute_force(engine, layout, k, include_self):
    pts = LAYOUTS[layout]()
    idx = knn_indices(pts, k, include_self=include_self, engine=engine)
    check_against_brute_force(pts, idx, k, include_self)


@pytest.mark.parametrize("engine", ENGINES)
def test_knn_sets_exact_when_distances_distinct(engine):
    pts = random_layout(500, seed=3)
    k = 10
    d2 = brute_sq_dist(pts)
    np.fill_diagonal(d2, np.inf)
    expected = np.argsort(d2, axis=1)[:, :k]
    idx = knn_indices(pts, k, include_self=False, engine=engine)
    np.testing.assert_array_equal(idx, expected)


@pytest.mark.parametrize(
    "pts",
    [
        pytest.param(np.column_stack([np.arange(60.0), np.zeros(60)]), id="collinear"),
        pytest.param(np.zeros((9, 2)), id="all-identical"),
        pytest.param(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), id="k=N-1"),
        pytest.param(
            np.vstack(
                [
                    np.random.default_rng(4).normal(0, 0.5, (150, 2)),
                    np.random.default_rng(5).normal(80, 0.5, (150, 2)),
                    np.random.default_rng(6).random((20, 2)) * 80,
                ]
            ),
            id="clusters-far-apart",
        ),
    ],
)
def test_grid_engine_edge_layouts(pts):
    k = min(8, len(pts) - 1)
    for engine in ENGINES:
        check_against_brute_force(pts, knn_indices(pts, k, engine=engine), k, include_self=True)


def test_grid_ring_search_at_large_k():
    # k = 50 on an uneven density makes many points leave their 3 x 3 cell block.
    rng = np.random.default_rng(7)
    pts = np.vstack([rng.random((1500, 2)) * 10, rng.random((300, 2)) * 100])
    k = 50
    grid = knn_indices(pts, k, engine="grid")
    tree = knn_indices(pts, k, engine="kdtree")
    d_grid = np.linalg.norm(pts[grid] - pts[:, None], axis=-1)
    d_tree = np.linalg.norm(pts[tree] - pts[:, None], axis=-1)
    np.testing.assert_allclose(d_grid, d_tree, rtol=1e-12)


def test_knn_three_dimensional_uses_kdtree():
    pts = np.random.default_rng(8).random((300, 3))
    check_against_brute_force(pts, knn_indices(pts, 5), 5, include_self=True)
    with pytest.raises(ValueError, match="2-D coordinates only"):
        knn_indices(pts, 5, engine="grid")


def test_knn_n_jobs_and_int_coords():
    pts = (random_layout(300) * 10).astype(np.int64)  # integer grid coordinates, many ties
    for engine in ENGINES:
        check_against_brute_force(pts.astype(float), knn_indices(pts, 6, engine=engine, n_jobs=1), 6, True)


def test_auto_engine_choice():
    assert _resolve_engine("auto", GRID_MIN_POINTS, 2) == "grid"
    assert _resolve_engine("auto", GRID_MIN_POINTS - 1, 2) == "kdtree"
    assert _resolve_engine("auto", 10**6, 3) == "kdtree"


@pytest.mark.parametrize(
    ("coords", "k", "kwargs", "error", "match"),
    [
        (np.zeros(10), 3, {}, ValueError, "2-D array"),
        (np.zeros((1, 2)), 1, {}, ValueError, "at least 2"),
        (np.array([["a", "b"], ["c", "d"]]), 1, {}, TypeError, "numbers"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, np.inf], [3.0, 3.0]]), 1, {}, ValueError, "2 of 4 rows"),
        (np.zeros((5, 2)), 5, {}, ValueError, "n_neighbors <= 4"),
        (np.zeros((5, 2)), 0, {}, ValueError, ">= 1"),
        (np.zeros((5, 2)), True, {}, TypeError, "int"),
        (np.zeros((5, 2)), 2, {"engine": "ball"}, ValueError, "kdtree"),
        (np.zeros((5, 2)), 2, {"n_jobs": 0}, ValueError, "n_jobs"),
    ],
)
def test_knn_input_errors(coords, k, kwargs, error, match):
    with pytest.raises(error, match=match):
        knn_indices(coords, k, **kwargs)


# --------------------------------------------------------------------------- radius / graph


@pytest.mark.parametrize("include_self", [True, False])
def test_radius_neighbors_matches_brute_force(include_self):
    pts = random_layout(300, seed=9)
    radius = 9.5
    graph = radius_neighbors(pts, radius, include_self=include_self)
    assert sparse.isspmatrix_csr(graph)
    expected = brute_sq_dist(pts) <= radius**2
    if not include_self:
        np.fill_diagonal(expected, False)
    np.testing.assert_array_equal(graph.toarray() > 0, expected)
    assert set(np.unique(graph.data)) == {1.0}


def test_radius_errors():
    with pytest.raises(ValueError, match="positive"):
        radius_neighbors(random_layout(10), -1.0)


def test_build_spatial_graph_knn():
    pts = random_layout(300, seed=10)
    k = 6
    graph = build_spatial_graph(pts, n_neighbors=k)
    assert sparse.isspmatrix_csr(graph) and graph.has_sorted_indices
    assert graph.diagonal().sum() == 0, "no self loops by default"
    assert (graph != graph.T).nnz == 0, "symmetric"
    assert set(np.unique(graph.data)) == {1.0}
    assert (np.diff(graph.indptr) >= k).all()
    # union of the kNN relation
    idx = knn_indices(pts, k, include_self=False)
    dense = np.zeros((300, 300), bool)
    dense[np.repeat(np.arange(300), k), idx.ravel()] = True
    np.testing.assert_array_equal(graph.toarray() > 0, dense | dense.T)

    directed = build_spatial_graph(pts, n_neighbors=k, symmetric=False, include_self=True)
    assert (np.diff(directed.indptr) == k + 1).all()
    assert (directed.diagonal() == 1).all()


def test_build_spatial_graph_radius_and_rule_errors():
    pts = hex_layout()
    graph = build_spatial_graph(pts, radius=101.0)  # lattice pitch is 100
    degree = np.diff(graph.indptr)
    assert degree.max() == 6 and degree.min() >= 2
    with pytest.raises(ValueError, match="not both"):
        build_spatial_graph(pts, n_neighbors=8, radius=101.0)
    with pytest.raises(ValueError, match="n_neighbors .* or radius"):
        build_spatial_graph(pts, n_neighbors=None)


# --------------------------------------------------------------------------- real layout


def test_engines_agree_on_slideseq_layout():
    pts = slideseq_coords()
    assert len(pts) > 20_000
    k = 18
    grid = knn_indices(pts, k, engine="grid")
    tree = knn_indices(pts, k, engine="kdtree")
    d_grid = np.linalg.norm(pts[grid[:, 1:]] - pts[:, None], axis=-1)
    d_tree = np.linalg.norm(pts[tree[:, 1:]] - pts[:, None], axis=-1)
    np.testing.assert_allclose(d_grid, d_tree, rtol=1e-12)
    # where the (k+1)-th neighbour is strictly farther than the k-th, the sets are fixed
    beyond = knn_indices(pts, k + 1, include_self=False, engine="kdtree")
    d_next = np.linalg.norm(pts[beyond[:, -1]] - pts, axis=-1)
    unambiguous = d_next > d_tree[:, -1]
    same = (np.sort(grid, axis=1) == np.sort(tree, axis=1)).all(axis=1)
    assert same[unambiguous].all()

    from mihd.refine import refine_labels

    # banded domains with 10% noise, refined by both engines
    rng = np.random.default_rng(0)
    labels = np.digitize(pts[:, 1], np.quantile(pts[:, 1], np.linspace(0, 1, 8)[1:-1]))
    flip = rng.random(len(labels)) < 0.1
    labels[flip] = rng.integers(0, 7, flip.sum())
    refined_grid = refine_labels(pts, labels, n_neighbors=k, engine="grid")
    refined_tree = refine_labels(pts, labels, n_neighbors=k, engine="kdtree")
    np.testing.assert_array_equal(refined_grid[same], refined_tree[same])


def test_grid_plan_follows_occupied_area():
    from mihd.graph import _plan_grid

    rng = np.random.default_rng(12)
    slice_a = rng.random((3000, 2)) * 10
    two_sections = np.vstack([slice_a, slice_a + [200.0, 0.0]])  # 95% of the bounding box empty
    lo, side, nx, ny, balanced = _plan_grid(two_sections, 18)
    assert balanced
    occupied = np.unique(((two_sections - lo) // side).astype(int), axis=0).shape[0]
    assert len(two_sections) / occupied < 2 * 0.4 * 18 + 2

    outlier = np.vstack([slice_a, [[1e9, 1e9]]])
    assert not _plan_grid(outlier, 18)[-1], "cells cannot be balanced: auto should pick the KD-tree"
    # an explicit request is honoured, and still exact
    for engine in ENGINES:
        idx = knn_indices(outlier, 6, engine=engine)
        d = np.linalg.norm(outlier[idx[:, 1:]] - outlier[:, None], axis=-1)
        np.testing.assert_allclose(d[:-1, -1], knn_distances_kdtree(outlier, 6)[:-1, -1], rtol=1e-12)


def knn_distances_kdtree(pts: np.ndarray, k: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(pts).query(pts, k + 1)[0][:, 1:]
