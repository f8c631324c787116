"""Cluster a fused embedding into exactly K spatial domains.

`cluster_embedding` is the single entry point; `METHODS` maps each method name to
the function behind it:

========  ==============================================================  ============
method    what it does                                                     needs
========  ==============================================================  ============
gmm       Gaussian mixture with one shared full covariance (sklearn,       -
          ``covariance_type="tied"``: the analogue of mclust's EEE)
kmeans    k-means, 10 restarts (sklearn)                                   -
leiden    Leiden on a kNN graph of the embedding; the resolution is        -
          searched until exactly K communities come out
mclust    mclust's EEE model: R's mclust through rpy2 when available,     R + rpy2, or
          else the pure-Python port ``pymclustr``                          pymclustr
========  ==============================================================  ============

Every method returns ``int64`` labels ``0..K-1`` numbered by decreasing cluster
size, and is deterministic for a fixed ``seed`` on CPU. None looks at annotations.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["METHODS", "SPATIAL_TRENDS", "cluster_embedding", "gmm_from_labels", "gmm_spatial_trend"]

Labels = NDArray[np.int64]


# --------------------------------------------------------------------------- methods


_GMM_MANY_STARTS_MAX = 50_000


def _gmm(
    X: NDArray[np.float64],
    n_clusters: int,
    *,
    seed: int,
    n_init: int | None = None,
    reg_covar: float = 1e-6,
    max_iter: int = 200,
    tol: float = 1e-3,
    fit_max_samples: int | None = 200_000,
) -> Labels:
    """Tied-covariance Gaussian mixture (mclust EEE analogue), fitted on raw X.

    Above ``fit_max_samples`` spots (HD slices) the mixture is fitted on a seeded
    random subsample of that size and every spot is then assigned by the fitted
    model, in chunks: K domains with a dozen parameters per domain are estimated
    to high precision from 2 x 10^5 cells, and time and memory stop growing with N
    beyond the O(N) assignment. ``None`` fits on every spot.

    ``n_init`` EM starts, each seeded by one k-means run, keep the best by likelihood;
    a single start lands in a different local optimum for some seeds. ``None`` (the
    default) means 10 starts when at most ``_GMM_MANY_STARTS_MAX`` (50,000) spots are
    fitted and 3 above, where each start costs seconds and the estimates are stable.
    On a 3,639 x 30 PCA of DLPFC 151673 (K=7, seeds 0-9, no labels involved: ARI
    between seeds), 10 starts found the same partition for every seed (ARI >= 0.94
    between seeds); 1 start missed it for 3 seeds (ARI 0.53-0.83 to it), 3 starts for
    1. On the development set (``benchmarks/dev``, batch ``v2-n_init-sweep``), 10
    starts instead of 3 raised the smoothed-PCA floor's median ARI from 0.393 to 0.408
    and its worst run from 0.326 to 0.370. Fits took 0.2, 0.6 and 2.5 s for 1, 3 and
    10 starts on that slice. ``reg_covar`` keeps the shared covariance invertible
    when embedding dimensions are collinear.
    """
    from sklearn.mixture import GaussianMixture

    sample = _fit_sample(X.shape[0], fit_max_samples, seed)
    if n_init is None:
        n_fit = X.shape[0] if sample is None else len(sample)
        n_init = 10 if n_fit <= _GMM_MANY_STARTS_MAX else 3
    elif int(n_init) < 1:
        raise ValueError(f"gmm option n_init must be >= 1 (or null for the default); got {n_init}.")
    gm = GaussianMixture(
        n_components=n_clusters,
        covariance_type="tied",
        n_init=int(n_init),
        reg_covar=reg_covar,
        max_iter=max_iter,
        tol=tol,
        random_state=seed,
    )
    if sample is None:
        return gm.fit_predict(X).astype(np.int64)
    gm.fit(X[sample])
    return _predict_in_chunks(gm, X)


def gmm_from_labels(
    X: ArrayLike,
    init_labels: ArrayLike,
    *,
    seed: int = 0,
    reg_covar: float = 1e-6,
    max_iter: int = 200,
    tol: float = 1e-3,
    fit_max_samples: int | None = 200_000,
    **_ignored: Any,
) -> Labels:
    """Tied Gaussian mixture on ``X`` whose one EM start is a given partition (means, weights and
    pooled covariance of ``init_labels`` in ``X``), not k-means.

    The runner uses it to anchor the clustering of a trained fusion's output at the partition of
    its own spatially averaged gene inputs (``cluster.start=inputs``): a deterministic, scale-free
    start that no annotation touches. EM then moves to the nearest optimum of the fused space, so
    a fusion can still change the domains, but a seed no longer decides which of several
    near-equal optima the clustering lands in (on DLPFC 151675 free k-means starts put one seed
    of ``adaln_attention`` at ARI 0.25 and the next at 0.52; ``benchmarks/compare/DIAGNOSIS.md``).
    Extra keywords (``n_init``) are accepted and ignored: there is exactly one start.
    """
    from sklearn.mixture import GaussianMixture

    init = np.asarray(init_labels, dtype=np.int64).ravel()
    n_rows = np.shape(X)[0] if np.ndim(X) else 0
    if init.shape[0] != n_rows:
        raise ValueError(f"init_labels has {init.shape[0]} entries but X has {n_rows} rows.")
    ks = np.unique(init)
    arr = _validate(X, max(len(ks), 2))
    sample = _fit_sample(arr.shape[0], fit_max_samples, seed)
    fit_x, fit_l = (arr, init) if sample is None else (arr[sample], init[sample])
    means = np.stack([fit_x[fit_l == k].mean(0) if np.any(fit_l == k) else arr[init == k].mean(0) for k in ks])
    weights = np.array([max(np.mean(fit_l == k), 1e-6) for k in ks])
    resid = fit_x - means[np.searchsorted(ks, fit_l)]
    cov = resid.T @ resid / max(len(fit_x) - len(ks), 1) + reg_covar * np.eye(arr.shape[1])
    gm = GaussianMixture(
        n_components=len(ks), covariance_type="tied", n_init=1, reg_covar=reg_covar, max_iter=max_iter, tol=tol,
        random_state=seed, means_init=means, weights_init=weights / weights.sum(), precisions_init=np.linalg.inv(cov),
    )
    gm.fit(fit_x)
    return _relabel_by_size(_predict_in_chunks(gm, arr))


SPATIAL_TRENDS = ("none", "linear")


def _trend_design(coords: NDArray[np.float64]) -> NDArray[np.float64]:
    """Centred coordinates in units of their mean standard deviation (a linear trend; scale- and shift-free)."""
    c = np.asarray(coords, dtype=np.float64)[:, :2]
    c = c - c.mean(0)
    sd = float(c.std(0).mean())
    return c / (sd if sd > 0 else 1.0)


def _within_slope(X: NDArray[np.float64], C: NDArray[np.float64], W: NDArray[np.float64]) -> NDArray[np.float64]:
    """Common slope of X on C from the within-component (co)variation, spots weighted by W (n x K)."""
    w = W.sum(0) + 1e-10
    xk = (W.T @ X) / w[:, None]
    ck = (W.T @ C) / w[:, None]
    wi = W.sum(1)[:, None]
    A = (C * wi).T @ C - (ck * w[:, None]).T @ ck + 1e-9 * np.eye(C.shape[1])
    return np.linalg.solve(A, (C * wi).T @ X - (ck * w[:, None]).T @ xk)


def _trend_logp(
    X: NDArray[np.float64], C: NDArray[np.float64], B: NDArray[np.float64], chol: NDArray[np.float64],
    mu: NDArray[np.float64], log_weights: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Per-spot, per-domain log density of the trend mixture, up to a constant shared by all domains."""
    Z = np.linalg.solve(chol, (X - C @ B).T).T  # whitened detrended profiles
    M = np.linalg.solve(chol, mu.T).T           # whitened domain means
    return -0.5 * ((Z**2).sum(1)[:, None] - 2 * Z @ M.T + (M**2).sum(1)[None, :]) + log_weights


def _trend_em(
    X: NDArray[np.float64], C: NDArray[np.float64], labels: NDArray[np.int64], K: int, *, reg_covar: float,
    max_iter: int, tol: float, slope_from: NDArray[np.bool_] | None = None,
    blocks: tuple[Sequence[int], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """EM of x_i ~ sum_k pi_k N(mu_k + B^T c_i, S): a tied Gaussian mixture whose components share one
    linear regression on the covariates C (a mixture of regressions with a common slope). ``slope_from``
    (a mask) limits the spots the slope is estimated from; means, covariance and weights use every spot."""
    from scipy.special import logsumexp

    n, f = X.shape
    R = np.eye(K)[labels]
    if slope_from is not None and slope_from.sum() < 10 * (C.shape[1] + 1):
        slope_from = None  # too few spots to estimate the slope from: use every spot
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        w = R.sum(0) + 1e-10
        xk = (R.T @ X) / w[:, None]
        ck = (R.T @ C) / w[:, None]
        B = _within_slope(X, C, R if slope_from is None else R * slope_from[:, None])
        mu = xk - ck @ B
        Xr = X - C @ B
        # pooled covariance sum_ik r_ik (xr_i - mu_k)(xr_i - mu_k)^T / n; mu_k is the weighted mean of xr in k
        S = (Xr.T @ Xr - (mu * w[:, None]).T @ mu) / n
        S += reg_covar * np.eye(f)
        if blocks is not None:  # modalities independent given the domain, each weighted (mihd.joint)
            from .joint import block_covariance, shrink_blocks

            S = block_covariance(shrink_blocks(S, Xr - mu[R.argmax(1)], blocks[0]), *blocks)
        Lc = np.linalg.cholesky(S)
        logp = _trend_logp(X, C, B, Lc, mu, np.log(w / n))
        R_new = np.exp(logp - logsumexp(logp, 1, keepdims=True))
        done = np.abs(R_new - R).max() < tol
        R = R_new
        if done:
            break
    resid = Xr - mu[R.argmax(1)]
    trend = C @ B
    return {
        "B": B, "mu": mu, "chol": Lc, "weights": w / n, "n_iter": n_iter, "converged": bool(n_iter < max_iter),
        # share of the within-domain variation that the linear trend accounts for
        "trend_share": float((trend**2).sum() / max((trend**2).sum() + (resid**2).sum(), 1e-12)),
    }


def gmm_spatial_trend(
    X: ArrayLike,
    coords: ArrayLike,
    init_labels: ArrayLike,
    *,
    seed: int = 0,
    reg_covar: float = 1e-6,
    max_iter: int = 200,
    trend_tol: float = 1e-4,
    fit_max_samples: int | None = 200_000,
    max_discord_ratio: float = 2.0,
    block_sizes: Sequence[int] | None = None,
    block_weights: Sequence[float] | None = None,
    return_info: bool = False,
    **_ignored: Any,
) -> Labels | tuple[Labels, dict[str, Any]]:
    """Tied Gaussian mixture with one linear spatial trend shared by every domain, started at ``init_labels``.

    Each spot's profile is modelled as ``x_i = mu_k + B^T c_i + e_i`` with ``e_i ~ N(0, S)``: a domain
    mean plus a linear function of the spot's (standardised) coordinates ``c_i`` that all domains share,
    fitted by EM from the given partition. The slope is estimated from the start partition's interior
    spots only (all 6 nearest neighbours in the spot's own domain): at a border the spatially averaged
    profile blends two domains, which looks like a gradient wherever a border runs along a coordinate
    and pulls the trend towards the layers' own axis (on DLPFC 151674 it moved part of L1 into L3).

    A smooth gradient across the whole section -- on DLPFC 151675 / 151676 a lateral drift in sequencing
    depth and RNA capture that runs *across* the layers -- otherwise makes the mixture cut a layer into a
    left and a right half; the shared trend absorbs it, while differences between domains stay in ``mu_k``. The trend is linear only (2 x features
    parameters), so it cannot draw the domains themselves (a quadratic already can bend into a layer).
    Measured on the development set (``benchmarks/compare/DIAGNOSIS.md`` section 7).

    A shared trend can also imitate domains: where domains lie in parallel straight bands whose profiles
    change monotonically from band to band (a cortex cut straight across its layers), a gradient along
    the bands' axis explains two of them as one ramp, and the freed component then splits a domain at
    random. The partition it returns is then far less spatially coherent than the start, the opposite
    of what removing a smooth nuisance does. Coherence is the share of each spot's 6 nearest neighbours
    in its own domain; the trend's partition is kept only when the share of neighbours in *other*
    domains grows at most ``max_discord_ratio``-fold (2.0), else the start partition comes back
    unchanged and ``info["kept"]`` is False. Over the 420 runs of the development set (every fusion,
    7 datasets, 5 seeds) that share changed by a factor 0.84-1.27; in the synthetic failure above it
    grew 2.8-3.8-fold.

    ``block_sizes`` / ``block_weights`` make it the weighted mixture over modalities of `mihd.joint`
    (``X`` the modalities side by side; each its own tied covariance, its log-density times its weight).

    Above ``fit_max_samples`` spots the model is fitted on a seeded subsample and every spot is then
    assigned by it. ``return_info=True`` also returns the fit: iterations, convergence,
    ``trend_share`` (the share of the within-domain variation the trend explains), both coherences and
    ``kept``. Extra keywords (``n_init``, ``tol``) are accepted and ignored: there is exactly one start,
    and ``trend_tol`` (the largest change of any responsibility) decides convergence.
    """
    init = np.asarray(init_labels, dtype=np.int64).ravel()
    arr = _validate(X, max(len(np.unique(init)), 2))
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[0] != arr.shape[0] or xy.shape[1] < 2 or not np.isfinite(xy).all():
        raise ValueError(f"coords must be a finite ({arr.shape[0]}, 2) array, one row per spot of X; got shape {xy.shape}.")
    if init.shape[0] != arr.shape[0]:
        raise ValueError(f"init_labels has {init.shape[0]} entries but X has {arr.shape[0]} rows.")
    ks, init = np.unique(init, return_inverse=True)
    from .graph import knn_indices

    C = _trend_design(xy)
    k_nb = min(6, arr.shape[0] - 1)
    nb = knn_indices(xy[:, :2], k_nb, include_self=False)
    sample = _fit_sample(arr.shape[0], fit_max_samples, seed)
    fit = slice(None) if sample is None else sample
    nb_fit = nb if sample is None else knn_indices(xy[sample, :2], k_nb, include_self=False)
    interior = (init[fit][nb_fit] == init[fit][:, None]).all(1)  # all 6 neighbours in the spot's start domain
    blocks = None if block_sizes is None else (list(block_sizes), list(block_weights or [1.0] * len(block_sizes)))
    info = _trend_em(arr[fit], C[fit], init[fit], len(ks), reg_covar=reg_covar, max_iter=int(max_iter),
                     tol=float(trend_tol), slope_from=interior, blocks=blocks)
    labels = np.empty(arr.shape[0], dtype=np.int64)
    for lo in range(0, arr.shape[0], 100_000):
        part = slice(lo, lo + 100_000)
        labels[part] = _trend_logp(arr[part], C[part], info["B"], info["chol"], info["mu"], np.log(info["weights"])).argmax(1)
    coherence = {name: float((lab[nb] == lab[:, None]).mean()) for name, lab in (("start", init), ("trend", labels))}
    kept = 1.0 - coherence["trend"] <= float(max_discord_ratio) * (1.0 - coherence["start"])
    labels = _relabel_by_size(labels if kept else init)
    if not return_info:
        return labels
    out = {k: info[k] for k in ("n_iter", "converged", "trend_share")}
    return labels, {**out, "coherence_start": coherence["start"], "coherence_trend": coherence["trend"], "kept": bool(kept)}


def _kmeans(
    X: NDArray[np.float64],
    n_clusters: int,
    *,
    seed: int,
    n_init: int = 10,
    max_iter: int = 300,
    fit_max_samples: int | None = 200_000,
) -> Labels:
    """k-means (Lloyd), best of ``n_init`` k-means++ starts; above ``fit_max_samples``
    spots, fitted on a seeded subsample and every spot assigned to its nearest centre."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
    sample = _fit_sample(X.shape[0], fit_max_samples, seed)
    if sample is None:
        return km.fit_predict(X).astype(np.int64)
    km.fit(X[sample])
    return _predict_in_chunks(km, X)


def _fit_sample(n: int, fit_max_samples: int | None, seed: int) -> NDArray[np.int64] | None:
    """Sorted seeded subsample of ``fit_max_samples`` of ``n`` rows, or None to use all."""
    if fit_max_samples is None or n <= int(fit_max_samples):
        return None
    if int(fit_max_samples) < 2:
        raise ValueError(f"fit_max_samples must be >= 2 or None; got {fit_max_samples}.")
    rng = np.random.default_rng(np.random.SeedSequence([seed, n]))
    return np.sort(rng.choice(n, size=int(fit_max_samples), replace=False))


def _predict_in_chunks(model, X: NDArray[np.float64], chunk: int = 100_000) -> Labels:
    return np.concatenate([model.predict(X[i : i + chunk]) for i in range(0, X.shape[0], chunk)]).astype(np.int64)


def _assign_by_neighbours(
    X: NDArray[np.float64], sample: NDArray[np.int64], sample_labels: NDArray[np.int64], n_neighbors: int
) -> Labels:
    """Label every row by a majority vote of its ``n_neighbors`` nearest subsampled rows (KD-tree)."""
    from scipy.spatial import cKDTree

    labels = np.empty(X.shape[0], dtype=np.int64)
    labels[sample] = sample_labels
    rest = np.setdiff1d(np.arange(X.shape[0]), sample, assume_unique=True)
    tree = cKDTree(X[sample])
    k = int(sample_labels.max()) + 1
    for start in range(0, rest.size, 100_000):
        rows = rest[start : start + 100_000]
        _, idx = tree.query(X[rows], k=n_neighbors)
        votes = sample_labels[idx.reshape(len(rows), -1)]
        counts = np.zeros((len(rows), k), dtype=np.int32)
        np.add.at(counts, (np.repeat(np.arange(len(rows)), votes.shape[1]), votes.ravel()), 1)
        labels[rows] = counts.argmax(1)
    return labels


def _knn_graph(X: NDArray[np.float64], n_neighbors: int):
    """Undirected, unweighted igraph kNN graph (union of both directions)."""
    import igraph as ig
    from sklearn.neighbors import NearestNeighbors

    n = X.shape[0]
    # kneighbors() without a query excludes each point itself, even for duplicates.
    _, idx = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors()
    src = np.repeat(np.arange(n), n_neighbors)
    pairs = np.sort(np.column_stack([src, idx.ravel()]), axis=1)
    pairs = np.unique(pairs, axis=0)
    return ig.Graph(n=n, edges=pairs, directed=False)


def _leiden(
    X: NDArray[np.float64],
    n_clusters: int,
    *,
    seed: int,
    n_neighbors: int = 15,
    resolution_range: tuple[float, float] = (1e-3, 1e2),
    max_steps: int = 30,
    n_iterations: int = 2,
    fit_max_samples: int | None = 100_000,
) -> Labels:
    """Leiden (RB-configuration quality) with a bisection search over resolution.

    The graph is a sparse kNN graph (KD-tree neighbours, O(N k) edges). Above
    ``fit_max_samples`` spots the resolution search runs on a seeded subsample of that
    size and every other spot takes the majority label of its ``n_neighbors`` nearest
    subsampled spots (the search reruns Leiden up to ``max_steps`` times, which is what
    would not scale). ``None`` runs on every spot.

    The kNN graph is built once; Leiden is rerun at resolutions bisected in log
    space until it yields exactly ``n_clusters`` communities (5-7 runs for K = 5..15
    on a 3,639-spot slice). ``n_iterations=2`` passes per run, as scanpy and
    leidenalg default to; ``-1`` (until stable) was 2-4x slower and reached the
    same K in as many steps.
    """
    import leidenalg

    n = X.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(f"leiden: n_neighbors must be in 1..n_samples-1 = 1..{n - 1}; got {n_neighbors}.")
    lo, hi = (float(r) for r in resolution_range)
    if not 0 < lo < hi:
        raise ValueError(f"leiden: resolution_range must be (low, high) with 0 < low < high; got {resolution_range}.")
    sample = _fit_sample(n, fit_max_samples, seed)
    if sample is not None:
        options = dict(n_neighbors=n_neighbors, resolution_range=resolution_range, max_steps=max_steps,
                       n_iterations=n_iterations, fit_max_samples=None)
        sample_labels = _leiden(X[sample], n_clusters, seed=seed, **options)
        return _assign_by_neighbours(X, sample, sample_labels, n_neighbors)
    graph = _knn_graph(X, n_neighbors)

    # Leiden communities are connected, so K can never drop below the number of
    # connected components of the graph: fail now rather than after 30 runs.
    n_comp = len(graph.connected_components())
    if n_comp > n_clusters:
        raise ValueError(
            f"leiden: the {n_neighbors}-NN graph has {n_comp} disconnected parts, more than "
            f"n_clusters={n_clusters}; raise n_neighbors or use method='gmm' or 'kmeans'."
        )

    def run(resolution: float) -> NDArray[np.int64]:
        part = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            resolution_parameter=resolution,
            n_iterations=n_iterations,
            seed=seed,
        )
        return np.asarray(part.membership, dtype=np.int64)

    log_lo, log_hi = np.log10(lo), np.log10(hi)
    closest: tuple[int, float, int] | None = None  # (|K - target|, resolution, K)
    for _ in range(max_steps):
        mid = 0.5 * (log_lo + log_hi)
        resolution = float(10.0**mid)
        labels = run(resolution)
        k = int(labels.max()) + 1
        if k == n_clusters:
            return labels
        if closest is None or abs(k - n_clusters) < closest[0]:
            closest = (abs(k - n_clusters), resolution, k)
        if k < n_clusters:
            log_lo = mid
        else:
            log_hi = mid
    assert closest is not None
    raise RuntimeError(
        f"leiden: no resolution in [{lo:g}, {hi:g}] gave exactly n_clusters={n_clusters} "
        f"after {max_steps} steps; the closest was K={closest[2]} at resolution={closest[1]:.4g}. "
        "Try another n_neighbors or a wider resolution_range, or use method='gmm' or 'kmeans', "
        "which always return K clusters."
    )


def _mclust_r(X: NDArray[np.float64], n_clusters: int, seed: int, model: str) -> Labels | None:
    """R's mclust through rpy2; ``None`` when rpy2, R or the mclust package is missing."""
    try:
        import rpy2.robjects as ro
    except Exception:  # ImportError, or rpy2 present but R not found (RuntimeError)
        return None
    # isTRUE(): rpy2 hands back None for requireNamespace's bare result.
    if not bool(ro.r('isTRUE(suppressWarnings(requireNamespace("mclust", quietly = TRUE)))')[0]):
        return None
    n, d = X.shape
    # Column-major fill builds the R matrix without depending on numpy2ri converters,
    # whose API changed across rpy2 3.x releases.
    r_x = ro.r["matrix"](ro.FloatVector(X.ravel(order="F")), nrow=n, ncol=d)
    # Attached, not just loaded: Mclust re-evaluates its own call as mclustBIC(...),
    # which is looked up on the search path.
    ro.r("suppressPackageStartupMessages(library(mclust))")
    ro.r["set.seed"](int(seed))  # Mclust's hierarchical start uses a random subset when n > 2000
    try:
        res = ro.r["Mclust"](r_x, G=int(n_clusters), modelNames=model, verbose=False)
    except Exception as err:  # rpy2's RRuntimeError carries R's message
        raise RuntimeError(
            f"mclust: R's Mclust failed for model {model!r} with G={n_clusters} on a {n} x {d} "
            f"embedding: {str(err).strip()[:300]}; use method='gmm', its scikit-learn analogue."
        ) from err
    if bool(ro.r["is.null"](res)[0]):
        raise RuntimeError(
            f"mclust: R's Mclust could not fit model {model!r} with G={n_clusters} on a "
            f"{n} x {d} embedding (it returned NULL); reduce the embedding dimension or use "
            "method='gmm', its scikit-learn analogue."
        )
    return np.asarray(res.rx2("classification"), dtype=np.int64) - 1


def _mclust_python(X: NDArray[np.float64], n_clusters: int, seed: int, model: str, hc_subset: int | None) -> Labels:
    """pymclustr (imports as ``mclust_py``), initialised the way R's Mclust is."""
    from mclust_py import Mclust, estep, hc, hclass, mstep, partition_to_z

    n = X.shape[0]
    z_init = None
    # pymclustr's hierarchical start holds a (2n x 2n) float64 matrix: 0.5 GB at
    # n = 4,000 and 9 GB at 17,000. R's Mclust (mclust.options("subset") = 2000)
    # builds the tree on a random subset, fits one M-step there and extends it to
    # all spots with one E-step; do the same.
    if hc_subset is not None and n > hc_subset:
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(n, size=int(hc_subset), replace=False))
        tree = hc(X[subset], model_name="VVV", use="SVD")
        z_sub = partition_to_z(hclass(tree, n_clusters), G=n_clusters)
        params = mstep(model, X[subset], z_sub)
        z_init, _ = estep(X, params["pro"], params["mu"], params["sigma"])
    try:
        fit = Mclust(X, G=n_clusters, model_names=[model], z_init=z_init)
    except RuntimeError as err:  # its "no model converged" error
        raise RuntimeError(
            f"mclust (pymclustr): model {model!r} with G={n_clusters} did not converge on a "
            f"{X.shape[0]} x {X.shape[1]} embedding ({err}); reduce the embedding dimension or "
            "use method='gmm', its scikit-learn analogue."
        ) from err
    return np.asarray(fit.classification, dtype=np.int64) - 1


_MCLUST_MAX_HC = 5000


def _mclust(
    X: NDArray[np.float64],
    n_clusters: int,
    *,
    seed: int,
    model: str = "EEE",
    backend: str = "auto",
    hc_subset: int | None = 2000,
) -> Labels:
    """mclust Gaussian mixture (``Mclust(X, G=K, modelNames="EEE")``), as GraphST and STAGATE use.

    Slow. R's mclust: ~4 s on 4,000 x 30 (10 s on a busy 2-core machine). The
    pure-Python ``pymclustr`` spends almost all its time in the hierarchical start
    (O(n^2) time and memory): ~45 s on a 3,639 x 30 slice with the default
    ``hc_subset=2000`` (R's own default, which also caps the cost on larger slices),
    ~130 s with ``hc_subset=None``. Prefer ``gmm`` unless you need parity with
    published mclust numbers; on that slice (DLPFC 151673, K=7) the ARI to the
    annotation was about 0.32 for both gmm and pymclustr, and 0.31-0.38 for R
    (seeds 0 and 1).

    ``backend="auto"`` tries R (rpy2 + R + the mclust package) first, then
    ``pymclustr``; ``"r"`` or ``"python"`` force one. ``hc_subset`` (python backend
    only) is how many spots seed the hierarchical start; ``None`` uses all of them.
    Keep it above 200: at <= 200 points pymclustr switches to an exact hierarchical
    clustering that is ~100x slower. Above 2,000 spots the random subset makes the
    seed matter, and R and Python draw different subsets: their labels on that
    slice agreed only to ARI 0.66.
    """
    if backend not in ("auto", "r", "python"):
        raise ValueError(f"mclust: backend must be 'auto', 'r' or 'python'; got {backend!r}.")
    if hc_subset is not None and hc_subset < n_clusters:
        raise ValueError(f"mclust: hc_subset must be at least n_clusters={n_clusters} (or None); got {hc_subset}.")
    if (hc_subset is None or hc_subset > _MCLUST_MAX_HC) and len(X) > _MCLUST_MAX_HC and backend != "r":
        # pymclustr's hierarchical start holds a (2n)^2 float64 matrix: 9 GB at 17k spots.
        raise ValueError(
            f"mclust: a hierarchical start on {len(X)} spots needs O(n^2) memory in pymclustr; "
            f"keep cluster.options.hc_subset <= {_MCLUST_MAX_HC} (default 2000) or use cluster=gmm."
        )
    if backend in ("auto", "r"):
        labels = _mclust_r(X, n_clusters, seed, model)
        if labels is not None:
            return labels
        if backend == "r":
            raise ImportError(
                "mclust backend='r' needs R with the mclust package and the rpy2 Python package "
                "(e.g. `apt-get install r-base-core r-cran-mclust` and `pip install rpy2`)."
            )
    try:
        import mclust_py  # noqa: F401  (the import name of the pymclustr distribution)
    except ImportError as err:
        raise ImportError(
            "method='mclust' needs either R's mclust (R + the mclust package + `pip install rpy2`) "
            'or the pure-Python port: `pip install "mihd[mclust]"` (pymclustr). '
            "method='gmm' is the scikit-learn analogue and needs nothing extra."
        ) from err
    return _mclust_python(X, n_clusters, seed, model, hc_subset)


#: Method name -> function ``f(X, n_clusters, *, seed, **options) -> labels``.
METHODS: dict[str, Callable[..., Labels]] = {
    "gmm": _gmm,
    "kmeans": _kmeans,
    "leiden": _leiden,
    "mclust": _mclust,
}


# ---------------------------------------------------------------------- entry point


def _validate(X: ArrayLike, n_clusters: int) -> NDArray[np.float64]:
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"X must be a numeric array (n_samples, n_features); {err}") from err
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features); got shape {arr.shape}.")
    if arr.shape[1] == 0:
        raise ValueError(f"X has no features (shape {arr.shape}).")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"X has NaN or infinite values in {rows.size} of {arr.shape[0]} rows "
            f"(first: row {rows[0]}); check the embedding for a diverged training run."
        )
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise TypeError(f"n_clusters must be an integer; got {n_clusters!r}.")
    if not 2 <= n_clusters < arr.shape[0]:
        raise ValueError(f"n_clusters must be in 2..n_samples-1 = 2..{arr.shape[0] - 1}; got {n_clusters}.")
    return arr


def _check_options(method: str, fn: Callable[..., Labels], options: dict[str, Any]) -> None:
    accepted = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "seed"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"cluster method {method!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'none'}."
        )


def check_method(method: str, options: dict[str, Any] | None = None) -> None:
    """Validate a clustering method, its options and its backend before any long computation.

    Raises
    ------
    ValueError
        Unknown method (the message lists them).
    TypeError
        An option the method does not take (the message lists the accepted ones).
    ImportError
        The method's optional backend is not installed (the message says what to install).
    """
    import importlib.util

    if method not in METHODS:
        raise ValueError(f"unknown cluster method {method!r}; use one of {', '.join(sorted(METHODS))}.")
    _check_options(method, METHODS[method], dict(options or {}))
    missing = []
    if method == "leiden":
        missing = [m for m in ("leidenalg", "igraph") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"cluster method 'leiden' needs {' and '.join(missing)}: pip install leidenalg igraph.")
    if method == "mclust" and importlib.util.find_spec("rpy2") is None and importlib.util.find_spec("mclust_py") is None:
        raise ImportError(
            "cluster method 'mclust' needs R + the mclust package + rpy2, or the pure-Python backend: "
            'pip install "mihd[mclust]". Or use cluster=gmm (mclust EEE analogue, much faster).'
        )


def _relabel_by_size(labels: NDArray[np.int64]) -> Labels:
    """Renumber labels 0..k-1 by decreasing size (ties: smaller old label first)."""
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[order] = np.arange(uniq.size)
    return rank[inverse.ravel()]


def cluster_embedding(
    X: ArrayLike,
    n_clusters: int,
    *,
    method: str = "gmm",
    seed: int = 0,
    **options: Any,
) -> Labels:
    """Cluster an embedding into ``n_clusters`` domains.

    Parameters
    ----------
    X
        Embedding, shape ``(n_spots, n_features)``; finite values only.
    n_clusters
        Number of domains K, ``2 <= K < n_spots``.
    method
        One of `METHODS`: ``"gmm"`` (default; fast, mclust-EEE-like), ``"kmeans"``,
        ``"leiden"`` (resolution searched to hit K exactly) or ``"mclust"`` (R's
        mclust or pymclustr; slow, for parity with GraphST / STAGATE).
    seed
        Random seed; the same seed gives the same labels on CPU.
    **options
        Passed to the method:

        * gmm: ``n_init=None`` (10 up to 50,000 fitted spots, else 3), ``reg_covar=1e-6``, ``max_iter=200``, ``tol=1e-3``,
          ``fit_max_samples=200_000`` (fit on a seeded subsample, assign every spot)
        * kmeans: ``n_init=10``, ``max_iter=300``, ``fit_max_samples=200_000``
        * leiden: ``n_neighbors=15``, ``resolution_range=(1e-3, 1e2)``,
          ``max_steps=30``, ``n_iterations=2``, ``fit_max_samples=100_000``
          (search on a subsample, then a kNN vote)
        * mclust: ``model="EEE"``, ``backend="auto"`` (``"r"`` / ``"python"``),
          ``hc_subset=2000``

    Returns
    -------
    numpy.ndarray
        ``int64`` labels of shape ``(n_spots,)``, numbered ``0..K-1`` by
        decreasing cluster size.

    Raises
    ------
    ValueError
        Bad ``X`` / ``n_clusters``, unknown method, or (leiden) K not reachable.
    TypeError
        An option the method does not take.
    ImportError
        ``method="mclust"`` with neither R's mclust nor pymclustr installed.
    RuntimeError
        The method could not produce K clusters (leiden search, mclust fit).

    Warns
    -----
    UserWarning
        When a mixture model leaves a component empty, so fewer than K labels come back.
    """
    if method not in METHODS:
        raise ValueError(f"unknown cluster method {method!r}; choose one of: {', '.join(METHODS)}.")
    fn = METHODS[method]
    _check_options(method, fn, options)
    arr = _validate(X, n_clusters)
    labels = _relabel_by_size(fn(arr, int(n_clusters), seed=int(seed), **options))
    k = int(labels.max()) + 1
    if k != n_clusters:
        warnings.warn(
            f"cluster method {method!r} returned {k} non-empty clusters instead of "
            f"n_clusters={n_clusters} (a mixture component received no spot).",
            UserWarning,
            stacklevel=2,
        )
    return labels
