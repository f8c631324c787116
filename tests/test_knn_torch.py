"""The torch grid kNN search (`mihd._knn_torch`) against cKDTree, on CPU tensors (and CUDA when present)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data_dir
from scipy.spatial import cKDTree

torch = pytest.importorskip("torch")

from mihd._knn_torch import _knn_grid_torch, knn_indices_torch  # noqa: E402
from mihd.graph import knn_indices  # noqa: E402
from mihd.refine import refine_labels  # noqa: E402

CUDA_REASON = "no CUDA device: torch.cuda.is_available() is False"


# --------------------------------------------------------------------------- layouts


def uniform(seed: int = 0, n: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 2)) * 100.0


def jittered_hex(rows: int = 40, cols: int = 50, seed: int = 1) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pts = np.column_stack([(c + 0.5 * (r % 2)).ravel(), (r * np.sqrt(3) / 2).ravel()]) * 100.0
    return pts + np.random.default_rng(seed).normal(0.0, 5.0, pts.shape)


def clustered(seed: int = 2) -> np.ndarray:
    """Three dense Gaussian blobs and a few sparse outliers far away from them and each other."""
    rng = np.random.default_rng(seed)
    blobs = [rng.normal(center, 0.5, (700, 2)) for center in [(0.0, 0.0), (40.0, 5.0), (10.0, 60.0)]]
    outliers = rng.uniform(-5e3, 5e3, (25, 2))
    return np.vstack([*blobs, outliers])


def with_duplicates(seed: int = 3) -> np.ndarray:
    """Random points, 40 of them twice, and one repeated 40 times (more than k + 1 for every k tested)."""
    rng = np.random.default_rng(seed)
    base = rng.random((400, 2)) * 50.0
    return np.vstack([base, base[:40], np.repeat(base[100:101], 39, axis=0)])


LAYOUTS = {"uniform": uniform, "hex": jittered_hex, "clustered": clustered, "duplicates": with_duplicates}


def check_against_kdtree(pts: np.ndarray, idx: np.ndarray, k: int, include_self: bool = True) -> None:
    n = len(pts)
    offset = int(include_self)
    assert idx.shape == (n, k + offset)
    rows = np.arange(n)
    if include_self:
        assert (idx[:, 0] == rows).all(), "self must come first, even with duplicate coordinates"
    others = idx[:, offset:]
    assert (others != rows[:, None]).all(), "a point is not its own neighbour"
    assert (np.sort(others, axis=1)[:, 1:] != np.sort(others, axis=1)[:, :-1]).all(), "neighbours are distinct"
    got = np.linalg.norm(pts[others] - pts[:, None], axis=-1)
    assert (np.diff(got, axis=1) >= 0).all(), "rows are sorted by distance"
    expected = cKDTree(pts).query(pts, k + 1)[0][:, 1:]  # self (or a copy at distance 0) dropped
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("k", [1, 6, 30])
def test_matches_kdtree(layout, k):
    pts = LAYOUTS[layout]()
    idx = knn_indices_torch(pts, k)
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and idx.device.type == "cpu"
    check_against_kdtree(pts, idx.numpy(), k)


@pytest.mark.parametrize("layout", ["uniform", "duplicates"])
def test_without_self(layout):
    pts = LAYOUTS[layout]()
    idx = knn_indices_torch(torch.from_numpy(pts), 6, include_self=False)
    check_against_kdtree(pts, idx.numpy(), 6, include_self=False)


@pytest.mark.parametrize("k", [1, 6, 30])
def test_clustered_layout_needs_several_rounds(k):
    # Outliers thousands of cell sides from anything: the block doubles round after round.
    pts = clustered()
    idx, rounds = _knn_grid_torch(torch.from_numpy(pts), k, chunk=1 << 18)
    assert rounds >= 5, rounds
    check_against_kdtree(pts, idx.numpy(), k)


@pytest.mark.parametrize("layout", ["uniform", "clustered"])
def test_tiny_chunks_give_the_same_answer(layout):
    # many batches, and heavy queries split off from light ones
    pts = LAYOUTS[layout]()
    idx = knn_indices_torch(pts, 6, chunk=300)
    check_against_kdtree(pts, idx.numpy(), 6)


@pytest.mark.parametrize(
    "pts",
    [
        pytest.param(np.column_stack([np.arange(60.0), np.zeros(60)]), id="collinear"),
        pytest.param(np.column_stack([np.arange(60.0), np.arange(60.0) * 3.0]), id="diagonal"),
        pytest.param(np.zeros((9, 2)), id="all-identical"),
        pytest.param(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), id="k=N-1"),
        pytest.param(np.random.default_rng(4).random((300, 2)) * 1e-6 + 1e6, id="far-from-origin"),
        pytest.param((np.random.default_rng(5).random((300, 2)) * 30).astype(np.int64), id="int-ties"),
    ],
)
def test_edge_layouts(pts):
    k = min(8, len(pts) - 1)
    check_against_kdtree(pts.astype(float), knn_indices_torch(pts, k).numpy(), k)


def test_matches_kdtree_on_slideseq_layout():
    path = shared_data_dir() / "slideseq_v2_cerebellum" / "slideseqv2_mc_coords_filtered.csv"
    if not path.is_file():
        pytest.skip(f"real Slide-seqV2 layout not found at {path} (set MIHD_DATA_DIR to the shared data folder)")
    pts = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2))
    idx = knn_indices_torch(pts, 18).numpy()
    assert (idx[:, 0] == np.arange(len(pts))).all()
    got = np.linalg.norm(pts[idx[:, 1:]] - pts[:, None], axis=-1)
    np.testing.assert_allclose(got, cKDTree(pts).query(pts, 19)[0][:, 1:], rtol=1e-12, atol=1e-12)


def test_graph_engine_torch_returns_int32_numpy():
    pts = uniform(6, 500)
    idx = knn_indices(pts, 6, engine="torch", device="cpu")
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int32
    check_against_kdtree(pts, idx, 6)
    np.testing.assert_array_equal(idx, knn_indices(pts, 6, engine="kdtree"))  # distinct distances


@pytest.mark.parametrize(
    ("coords", "k", "kwargs", "error", "match"),
    [
        (np.zeros(10), 3, {}, ValueError, "2-D array"),
        (np.zeros((5, 3)), 2, {}, ValueError, "2-D coordinates only"),
        (torch.zeros((5, 3)), 2, {}, ValueError, "2-D coordinates only"),
        (torch.zeros((1, 2)), 1, {}, ValueError, "at least 2"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [2.0, 3.0]]), 1, {}, ValueError, "1 of 3 rows"),
        (np.zeros((5, 2)), 5, {}, ValueError, "n_neighbors <= 4"),
        (np.zeros((5, 2)), 2, {"chunk": 0}, ValueError, "chunk"),
        (np.zeros((5, 2)), 2, {"device": "tpu"}, ValueError, "tpu"),
    ],
)
def test_input_errors(coords, k, kwargs, error, match):
    with pytest.raises(error, match=match):
        knn_indices_torch(coords, k, **kwargs)


def test_graph_engine_torch_rejects_3d():
    with pytest.raises(ValueError, match="engine='torch' handles 2-D coordinates only"):
        knn_indices(np.zeros((5, 3)), 2, engine="torch")


# --------------------------------------------------------------------------- refine


@pytest.mark.parametrize("k", [6, 18])
def test_refine_with_torch_engine_matches_default(k):
    rng = np.random.default_rng(7)
    coords = rng.random((3000, 2)) * 100.0
    labels = np.minimum((coords[:, 0] / 20).astype(int), 4)
    flip = rng.random(len(labels)) < 0.3
    labels[flip] = rng.integers(0, 5, flip.sum())
    expected = refine_labels(coords, labels, n_neighbors=k)
    np.testing.assert_array_equal(refine_labels(coords, labels, n_neighbors=k, device="cpu", engine="torch"), expected)


def test_vote_on_neighbour_tensor_matches_numba():
    # the vote refine_labels(device="cuda") runs on the search's tensor, here on the CPU
    from mihd.refine import _vote_torch_rows, majority_vote

    rng = np.random.default_rng(9)
    coords = rng.random((2000, 2)) * 100.0
    codes = rng.integers(0, 6, len(coords)).astype(np.int32)
    voters = knn_indices_torch(coords, 8)
    np.testing.assert_array_equal(_vote_torch_rows(voters, codes, 6), majority_vote(voters.numpy(), codes))


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("layout", ["uniform", "clustered", "duplicates"])
def test_cuda_matches_cpu(layout):
    pts = LAYOUTS[layout]()
    cpu = knn_indices_torch(pts, 6)
    gpu = knn_indices_torch(torch.from_numpy(pts).cuda(), 6)
    assert gpu.device.type == "cuda"
    check_against_kdtree(pts, gpu.cpu().numpy(), 6)
    d_cpu = np.linalg.norm(pts[cpu.numpy()] - pts[:, None], axis=-1)
    d_gpu = np.linalg.norm(pts[gpu.cpu().numpy()] - pts[:, None], axis=-1)
    np.testing.assert_array_equal(d_gpu, d_cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
def test_cuda_refine_searches_on_the_gpu_and_matches_cpu(monkeypatch):
    import mihd.graph

    def no_cpu_search(*args, **kwargs):
        raise AssertionError("refine_labels(device='cuda') should not call the CPU kNN search")

    rng = np.random.default_rng(8)
    coords = rng.random((20_000, 2)) * 100.0
    labels = rng.integers(0, 7, len(coords))
    expected = refine_labels(coords, labels, n_neighbors=10, device="cpu")
    monkeypatch.setattr(mihd.graph, "knn_indices", no_cpu_search)
    monkeypatch.setattr("mihd.refine.knn_indices", no_cpu_search)
    np.testing.assert_array_equal(refine_labels(coords, labels, n_neighbors=10, device="cuda"), expected)
