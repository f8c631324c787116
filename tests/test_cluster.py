"""mihd.cluster: every registered method reaches exactly K, recovers well-separated
blobs, and is deterministic per seed. Parametrized over METHODS, so a new method is
tested without editing this file."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from mihd.cluster import METHODS, cluster_embedding


def _r_mclust_available() -> bool:
    if importlib.util.find_spec("rpy2") is None:
        return False
    try:
        import rpy2.robjects as ro

        return bool(ro.r('isTRUE(suppressWarnings(requireNamespace("mclust", quietly = TRUE)))')[0])
    except Exception:
        return False


HAS_PYMCLUSTR = importlib.util.find_spec("mclust_py") is not None
HAS_R_MCLUST = _r_mclust_available()
NO_MCLUST = "method='mclust' needs R + mclust + rpy2 or `pip install pymclustr`; neither is installed"

# hc_subset < n exercises the subset initialisation (both test sets have >= 300
# points). Keep it above 200: pymclustr switches to an exact, ~100x slower
# hierarchical clustering at <= 200 points.
FAST_OPTIONS = {"mclust": {"hc_subset": 250}}


def _method_param(name: str):
    marks = [pytest.mark.skipif(not (HAS_PYMCLUSTR or HAS_R_MCLUST), reason=NO_MCLUST)] if name == "mclust" else []
    return pytest.param(name, marks=marks, id=name)


ALL_METHODS = [_method_param(m) for m in METHODS]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=600, n_features=10, centers=5, cluster_std=1.0, random_state=0)
    return X, y


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_reaches_k_and_recovers_blobs(blobs, method):
    X, y = blobs
    labels = cluster_embedding(X, 5, method=method, seed=0, **FAST_OPTIONS.get(method, {}))
    assert labels.dtype == np.int64
    assert labels.shape == (600,)
    assert set(np.unique(labels)) == set(range(5))
    sizes = np.bincount(labels)
    assert (np.diff(sizes) <= 0).all(), "labels are numbered by decreasing size"
    assert adjusted_rand_score(y, labels) > 0.9


@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_seed_same_labels(method):
    # Overlapping blobs, so a seed has something to decide.
    X, _ = make_blobs(n_samples=300, n_features=6, centers=4, cluster_std=3.0, random_state=1)
    opts = FAST_OPTIONS.get(method, {})
    first = cluster_embedding(X, 4, method=method, seed=7, **opts)
    second = cluster_embedding(X, 4, method=method, seed=7, **opts)
    np.testing.assert_array_equal(first, second)


def test_unknown_method_lists_the_methods(blobs):
    with pytest.raises(ValueError, match="unknown cluster method 'louvain'") as err:
        cluster_embedding(blobs[0], 5, method="louvain")
    for name in METHODS:
        assert name in str(err.value)


def test_unknown_option_lists_accepted_ones(blobs):
    with pytest.raises(TypeError, match=r"'kmeans' does not take option\(s\) covariance_type; it accepts: n_init"):
        cluster_embedding(blobs[0], 5, method="kmeans", covariance_type="tied")


@pytest.mark.parametrize(
    ("X", "k", "error", "message"),
    [
        (np.zeros(10), 2, ValueError, "X must be 2-D"),
        (np.where(np.eye(10) > 0, np.nan, 1.0), 2, ValueError, "NaN or infinite values in 10 of 10 rows"),
        (np.random.default_rng(0).random((10, 3)), 1, ValueError, r"n_clusters must be in 2..n_samples-1 = 2..9"),
        (np.random.default_rng(0).random((10, 3)), 10, ValueError, r"got 10"),
        (np.random.default_rng(0).random((10, 3)), 2.5, TypeError, "n_clusters must be an integer"),
    ],
    ids=["1-D", "nan", "k=1", "k=n", "k-float"],
)
def test_bad_input_is_rejected(X, k, error, message):
    with pytest.raises(error, match=message):
        cluster_embedding(X, k)


def test_leiden_reports_unreachable_k(blobs):
    # The 15-NN graph of five far-apart blobs falls into five parts: K < 5 is impossible.
    with pytest.raises(ValueError, match="5 disconnected parts, more than n_clusters=3"):
        cluster_embedding(blobs[0], 3, method="leiden")
    # A resolution window that is far too low: the search stops and names the closest K.
    with pytest.raises(RuntimeError, match=r"closest was K=5 .*method='gmm' or 'kmeans'"):
        cluster_embedding(blobs[0], 7, method="leiden", resolution_range=(1e-4, 2e-4), max_steps=3)


@pytest.mark.skipif(not HAS_PYMCLUSTR, reason="pymclustr (import name mclust_py) is not installed")
def test_mclust_python_backend(blobs):
    # The registry-parametrized tests use a subset start; this one starts from all spots.
    X, y = blobs
    labels = cluster_embedding(X, 5, method="mclust", backend="python", hc_subset=None)
    assert adjusted_rand_score(y, labels) > 0.9


@pytest.mark.skipif(not HAS_R_MCLUST, reason="R with the mclust package and rpy2 are not installed")
def test_mclust_r_backend(blobs):
    X, y = blobs
    labels = cluster_embedding(X, 5, method="mclust", backend="r")
    assert adjusted_rand_score(y, labels) > 0.9


def test_mclust_without_any_backend_says_what_to_install(blobs, monkeypatch):
    # A None entry in sys.modules makes `import` raise ImportError.
    for mod in ("rpy2", "rpy2.robjects", "mclust_py"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r'pip install "mihd\[mclust\]"'):
        cluster_embedding(blobs[0], 5, method="mclust")
    with pytest.raises(ImportError, match="backend='r' needs R"):
        cluster_embedding(blobs[0], 5, method="mclust", backend="r")


@pytest.mark.parametrize("method", ["gmm", "kmeans", "leiden"])
def test_subsample_then_assign_recovers_blobs_and_is_seeded(method):
    """HD path: fit on a seeded subsample, assign every spot (model prediction or kNN vote)."""
    from sklearn.metrics import adjusted_rand_score

    X, y = make_blobs(n_samples=3000, n_features=8, centers=5, cluster_std=1.0, random_state=3)
    labels = cluster_embedding(X, 5, method=method, seed=1, fit_max_samples=400)
    assert labels.shape == (3000,) and set(np.unique(labels)) == set(range(5))
    assert adjusted_rand_score(y, labels) > 0.95
    np.testing.assert_array_equal(labels, cluster_embedding(X, 5, method=method, seed=1, fit_max_samples=400))
    # Below the threshold nothing changes: fit_max_samples=None gives the same labels as the default.
    small = X[:500]
    np.testing.assert_array_equal(
        cluster_embedding(small, 5, method=method, seed=0), cluster_embedding(small, 5, method=method, seed=0, fit_max_samples=None)
    )


def test_fit_max_samples_must_be_at_least_two(blobs):
    with pytest.raises(ValueError, match="fit_max_samples"):
        cluster_embedding(blobs[0], 5, method="gmm", fit_max_samples=1)


def test_gmm_default_starts_depend_on_the_fitted_sample(blobs, monkeypatch):
    """n_init=None: 10 EM starts up to _GMM_MANY_STARTS_MAX fitted spots, 3 above; an explicit value wins."""
    import sklearn.mixture

    from mihd import cluster as cl

    seen = []
    real = sklearn.mixture.GaussianMixture

    class Spy(real):
        def fit_predict(self, X, y=None):  # GaussianMixture.fit goes through fit_predict
            seen.append((self.n_init, len(X)))
            return super().fit_predict(X, y)

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", Spy)
    X = blobs[0]
    cluster_embedding(X, 5, method="gmm")
    cluster_embedding(X, 5, method="gmm", n_init=2)
    monkeypatch.setattr(cl, "_GMM_MANY_STARTS_MAX", len(X) - 1)
    cluster_embedding(X, 5, method="gmm")
    assert [n for n, _ in seen] == [10, 2, 3]


def test_gmm_rejects_fewer_than_one_start(blobs):
    with pytest.raises(ValueError, match=r"n_init must be >= 1"):
        cluster_embedding(blobs[0], 5, method="gmm", n_init=0)


def test_gmm_from_labels_starts_at_the_given_partition_and_is_deterministic():
    from mihd.cluster import gmm_from_labels

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    truth = np.repeat(np.arange(3), 200)
    X = centres[truth] + rng.normal(size=(600, 2))
    noisy = truth.copy()
    flip = rng.choice(600, 60, replace=False)
    noisy[flip] = (noisy[flip] + 1) % 3  # a rough start: EM must clean it up
    a = gmm_from_labels(X, noisy, seed=0)
    b = gmm_from_labels(X, noisy, seed=5)
    assert np.array_equal(a, b)  # one start, no k-means: the seed only picks a subsample above fit_max_samples
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, a) > 0.95
    sub = gmm_from_labels(X, noisy, seed=0, fit_max_samples=300)  # fitted on a subsample, every row assigned
    assert sub.shape == (600,) and adjusted_rand_score(truth, sub) > 0.95
    with pytest.raises(ValueError, match="init_labels has 5 entries but X has 600 rows"):
        gmm_from_labels(X, noisy[:5])


def test_trained_fusions_cluster_from_their_inputs_partition(tiny_slice):
    from mihd._config import compose
    from mihd.train import train

    base = ["data=synthetic", "data.n_domains=3", "encoder.image=none", "trainer=fast", "fusion=concat"]
    anchored = train(compose("train", base), adata=tiny_slice.copy(), write=False, progress=False)
    free = train(compose("train", [*base, "cluster.start=free"]), adata=tiny_slice.copy(), write=False, progress=False)
    assert anchored.metrics["cluster_start"] == "inputs" and free.metrics["cluster_start"] == "free"
    floor = train(compose("train", [*base[:-1], "fusion=genes_only"]), adata=tiny_slice.copy(), write=False, progress=False)
    assert floor.metrics["cluster_start"] == "free"  # nothing to anchor: the floor clusters its inputs directly
    with pytest.raises(ValueError, match=r"cluster.start='input'; use one of inputs, free"):
        train(compose("train", [*base, "cluster.start=input"]), adata=tiny_slice.copy(), write=False)



def _section_with_drift(*, curved: bool, drift: float, noise: float, seed: int = 0, n_side: int = 40):
    """Three domains on a 40 x 40 spot grid whose profiles also drift linearly across the section (the
    way a depth or capture gradient runs across the layers of a tissue): curved bands (quarter rings around
    a corner, like cortical layers) with the drift along them, or straight horizontal bands."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(n_side, dtype=float), np.arange(n_side, dtype=float))
    xy = np.column_stack([gx.ravel(), gy.ravel()])
    depth = np.hypot(xy[:, 0], xy[:, 1]) if curved else xy[:, 1]
    truth = np.digitize(depth, np.quantile(depth, [1 / 3, 2 / 3]))
    centres = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    lateral = xy[:, 0] - xy[:, 1] if curved else xy[:, 0]
    lateral = (lateral - lateral.mean()) / lateral.std()
    X = centres[truth] + np.outer(lateral, drift * np.array([1.0, 1.0, 1.5])) + noise * rng.normal(size=(len(xy), 3))
    return X, xy, truth


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gmm_spatial_trend_separates_domains_from_a_linear_drift(seed):
    from mihd.cluster import gmm_spatial_trend

    X, xy, truth = _section_with_drift(curved=True, drift=0.9, noise=0.25, seed=seed)
    plain = cluster_embedding(X, 3, seed=0)  # the drift is as large as the domain differences: the mixture cuts across
    labels, info = gmm_spatial_trend(X, xy, plain, seed=0, return_info=True)
    assert adjusted_rand_score(truth, labels) > adjusted_rand_score(truth, plain) + 0.3
    assert info["kept"] and info["converged"] and info["trend_share"] > 0.5
    # scale- and shift-free in the coordinates, deterministic, the seed only picks a subsample
    assert np.array_equal(labels, gmm_spatial_trend(X, xy * 55.0 + 1e4, plain, seed=3))
    sub = gmm_spatial_trend(X, xy, plain, seed=0, fit_max_samples=800)  # fitted on 800 spots, all 1,600 assigned
    assert sub.shape == (len(X),) and adjusted_rand_score(labels, sub) > 0.8


def test_gmm_spatial_trend_without_drift_keeps_the_domains():
    from mihd.cluster import gmm_spatial_trend

    X, xy, truth = _section_with_drift(curved=True, drift=0.0, noise=0.25)
    plain = cluster_embedding(X, 3, seed=0)
    labels, info = gmm_spatial_trend(X, xy, plain, return_info=True)
    assert adjusted_rand_score(truth, labels) > 0.95 and info["kept"] and info["trend_share"] < 0.05


def test_gmm_spatial_trend_falls_back_when_the_trend_imitates_domains():
    """Straight bands whose profiles change monotonically from band to band: a gradient along the bands'
    axis explains two of them as one ramp and the freed component splits a band at random. The coherence
    guard sees the partition fall apart and returns the start."""
    from mihd.cluster import gmm_spatial_trend

    X, xy, truth = _section_with_drift(curved=False, drift=0.0, noise=0.5)
    plain = cluster_embedding(X, 3, seed=0)
    assert adjusted_rand_score(truth, plain) > 0.9
    labels, info = gmm_spatial_trend(X, xy, plain, return_info=True)
    assert not info["kept"] and info["coherence_trend"] < info["coherence_start"] - 0.2
    assert adjusted_rand_score(plain, labels) == 1.0
    unguarded = gmm_spatial_trend(X, xy, plain, max_discord_ratio=100.0)
    assert adjusted_rand_score(truth, unguarded) < 0.5

@pytest.mark.parametrize(
    ("coords", "init", "message"),
    [
        (np.zeros((10, 2)), None, r"coords must be a finite \(1600, 2\) array.*got shape \(10, 2\)"),
        (np.full((1600, 2), np.nan), None, "coords must be a finite"),
        (None, np.zeros(7, dtype=int), "init_labels has 7 entries but X has 1600 rows"),
    ],
)
def test_gmm_spatial_trend_rejects_bad_input(coords, init, message):
    from mihd.cluster import gmm_spatial_trend

    X, xy, truth = _section_with_drift(curved=True, drift=0.5, noise=0.25)
    with pytest.raises(ValueError, match=message):
        gmm_spatial_trend(X, xy if coords is None else coords, truth if init is None else init)


def test_runner_fits_the_spatial_trend_and_rejects_bad_settings(tiny_slice):
    from mihd._config import compose
    from mihd.train import train

    base = ["data=synthetic", "data.n_domains=3", "encoder.image=none", "trainer=fast", "fusion=genes_only"]
    run = train(compose("train", base), adata=tiny_slice.copy(), write=False, progress=False)
    trend = run.metrics["spatial_trend"]
    assert trend["kind"] == "linear" and trend["n_iter"] >= 1 and 0.0 <= trend["trend_share"] < 1.0
    off = train(compose("train", [*base, "cluster.spatial_trend=none"]), adata=tiny_slice.copy(), write=False, progress=False)
    assert off.metrics["spatial_trend"] == {"kind": "none"}
    with pytest.raises(ValueError, match=r"cluster.spatial_trend='linar'; use one of none, linear"):
        train(compose("train", [*base, "cluster.spatial_trend=linar"]), adata=tiny_slice.copy(), write=False)
    with pytest.raises(ValueError, match=r"cluster.spatial_trend='linear' is a gmm option.*cluster.method='kmeans'"):
        train(compose("train", [*base, "cluster.method=kmeans"]), adata=tiny_slice.copy(), write=False)


def test_trend_slope_from_interior_spots_ignores_blended_borders():
    """Spatially averaged profiles at a border blend two domains; along a border that runs parallel to a
    coordinate this blend looks like a gradient. The slope estimated from interior spots only is the drift's."""
    from mihd.cluster import _within_slope

    rng = np.random.default_rng(0)
    n = 4000
    C = rng.uniform(-1, 1, size=(n, 2))
    labels = (C[:, 1] > 0).astype(int)
    true_slope = np.array([[0.5, 0.0], [0.0, 0.0]])  # a drift in x only
    X = np.array([[0.0, 0.0], [3.0, 0.0]])[labels] + C @ true_slope + 0.05 * rng.normal(size=(n, 2))
    border = np.abs(C[:, 1]) < 0.2
    X[border] = np.array([1.5, 0.0]) + (C[border, 1:2] / 0.2) * np.array([1.5, 0.0]) + C[border] @ true_slope  # a ramp
    R = np.eye(2)[labels]
    every = _within_slope(X, C, R)
    interior = _within_slope(X, C, R * ~border[:, None])
    assert np.abs(interior - true_slope).max() < 0.02
    assert np.abs(every - true_slope).max() > 0.1  # the blend at the border reads as a gradient in y
