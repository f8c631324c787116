"""Label-free clustering objectives on the smoothed gene PCs of the development set.

Development slices only (never 151673 / 151674). Features are prepared exactly as in
`diagnose_clustering.py` (the smoothed-PCA floor's input); each variant is scored after the
same 6-NN majority refinement.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/explore_clustering.py [--slices ...] [--seeds ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from diagnose_clustering import hmrf, load, score  # noqa: E402
from semisynthetic import DEV_SLICES, SCORED_SLICES  # noqa: E402


def adjacency(nb: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Symmetric count of kNN edges between clusters (diagonal zeroed)."""
    n = nb.shape[0]
    rows = np.repeat(labels, nb.shape[1] - 1)
    cols = labels[nb[:, 1:]].ravel()
    a = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(k, k)).toarray()
    a = a + a.T
    np.fill_diagonal(a, 0)
    return a


def merge(x, labels, nb, k_target, *, metric="ward", need_adjacent=True, prec=None):
    """Greedy agglomeration of over-split clusters down to k_target."""
    labels = labels.copy()
    groups = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    while len(groups) > k_target:
        keys = sorted(groups)
        idx = {c: i for i, c in enumerate(keys)}
        lab = np.empty_like(labels)
        for c, m in groups.items():
            lab[m] = idx[c]
        a = adjacency(nb, lab, len(keys))
        sizes = np.array([groups[c].size for c in keys], float)
        means = np.stack([x[groups[c]].mean(0) for c in keys])
        diff = means[:, None] - means[None]
        if prec is not None:
            d2 = np.einsum("abf,fg,abg->ab", diff, prec, diff)
        else:
            d2 = (diff**2).sum(-1)
        if metric == "ward":
            cost = sizes[:, None] * sizes[None] / (sizes[:, None] + sizes[None]) * d2
        elif metric == "centroid":
            cost = d2.copy()
        elif metric == "ward_over_contact":
            bnd = a.sum(1)
            frac = a / np.minimum(bnd[:, None], bnd[None]).clip(1)
            cost = sizes[:, None] * sizes[None] / (sizes[:, None] + sizes[None]) * d2 / (frac + 1e-3)
        else:
            raise ValueError(metric)
        np.fill_diagonal(cost, np.inf)
        if need_adjacent:
            cost[a == 0] = np.inf
            if not np.isfinite(cost).any():
                cost = sizes[:, None] * sizes[None] / (sizes[:, None] + sizes[None]) * d2
                np.fill_diagonal(cost, np.inf)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        ci, cj = keys[i], keys[j]
        groups[ci] = np.concatenate([groups[ci], groups.pop(cj)])
    out = np.empty_like(labels)
    for t, c in enumerate(sorted(groups)):
        out[groups[c]] = t
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MIHD_DATA_DIR", str(HERE.parents[2] / "shared" / "data")))
    ap.add_argument("--slices", nargs="+", default=list(DEV_SLICES))
    ap.add_argument("--preset", default="v3")
    ap.add_argument("--gen", action="append", default=[], help="generator option KEY=VALUE over the preset (see semisynthetic.py)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args(argv)
    bad = set(args.slices) & SCORED_SLICES
    if bad:
        ap.error(f"--slices {sorted(bad)} are the scored slices")
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.mixture import GaussianMixture

    from mihd.cluster import cluster_embedding

    rows: dict[str, list[float]] = {}

    def gmm_over(x, k, sd, factor):
        g = GaussianMixture(factor * k, covariance_type="tied", n_init=3, random_state=sd).fit(x)
        return g.predict(x), np.linalg.inv(g.covariances_ + 1e-6 * np.eye(x.shape[1]))

    variants = {
        "floor gmm n10": lambda d, x, k, sd: cluster_embedding(x, k, method="gmm", seed=sd),
        "HMRF beta=2": lambda d, x, k, sd: hmrf(x, d["nb"][:, 1:], k, sd, beta=2.0),
        "HMRF beta=4": lambda d, x, k, sd: hmrf(x, d["nb"][:, 1:], k, sd, beta=4.0),
        "gmm 50 starts": lambda d, x, k, sd: cluster_embedding(x, k, method="gmm", seed=sd, n_init=50),
        "kmeans": lambda d, x, k, sd: cluster_embedding(x, k, method="kmeans", seed=sd),
        "spatial ward (spots, 6-NN connectivity)": lambda d, x, k, sd: AgglomerativeClustering(
            k, connectivity=knn_graph(d["nb"]), linkage="ward"
        ).fit_predict(x),
        "gmm 2K -> ward merge, adjacent": lambda d, x, k, sd: merge(x, gmm_over(x, k, sd, 2)[0], d["nb"], k),
        "gmm 3K -> ward merge, adjacent": lambda d, x, k, sd: merge(x, gmm_over(x, k, sd, 3)[0], d["nb"], k),
        "gmm 3K -> mahalanobis ward, adjacent": lambda d, x, k, sd: _maha(x, k, sd, d),
        "gmm 3K -> ward merge, any": lambda d, x, k, sd: merge(x, gmm_over(x, k, sd, 3)[0], d["nb"], k, need_adjacent=False),
        "gmm 3K -> ward/contact": lambda d, x, k, sd: merge(x, gmm_over(x, k, sd, 3)[0], d["nb"], k, metric="ward_over_contact"),
        "kmeans 5K -> ward merge, adjacent": lambda d, x, k, sd: merge(
            x, cluster_embedding(x, 5 * k, method="kmeans", seed=sd), d["nb"], k
        ),
        "consensus of 20 single-start GMMs (one-hot -> kmeans)": lambda d, x, k, sd: consensus(x, k, sd, 20, soft=False),
        "consensus of 20 single-start GMMs (posteriors -> kmeans)": lambda d, x, k, sd: consensus(x, k, sd, 20, soft=True),
        "consensus of 10 3-start GMMs (one-hot -> kmeans)": lambda d, x, k, sd: consensus(x, k, sd, 10, soft=False, n_init=3),
        "l2-normalised spots": lambda d, x, k, sd: cluster_embedding(x / np.linalg.norm(x, axis=1, keepdims=True), k, method="gmm", seed=sd),
        "quantile-normal per PC": lambda d, x, k, sd: cluster_embedding(_quantile(x), k, method="gmm", seed=sd),
        "multi-scale: 6-NN and 18-NN means stacked": lambda d, x, k, sd: cluster_embedding(np.hstack([x, _smooth(d, 18)]), k, method="gmm", seed=sd),
        "diagonal-covariance GMM": lambda d, x, k, sd: GaussianMixture(k, covariance_type="diag", n_init=10, random_state=sd).fit_predict(x),
        "gmm full cov": lambda d, x, k, sd: GaussianMixture(k, covariance_type="full", n_init=10, random_state=sd).fit_predict(x),
        "gmm on PCs 1-10": lambda d, x, k, sd: cluster_embedding(x[:, :10], k, method="gmm", seed=sd),
        "ICA, K most non-Gaussian components": lambda d, x, k, sd: cluster_embedding(_pursuit(x, k, sd), k, method="gmm", seed=sd),
        "ICA, 2K most non-Gaussian components": lambda d, x, k, sd: cluster_embedding(_pursuit(x, 2 * k, sd), k, method="gmm", seed=sd),
        "pearson residuals PCA, smoothed": lambda d, x, k, sd: cluster_embedding(_pearson(d), k, method="gmm", seed=sd),
        "MAF: 10 most autocorrelated directions": lambda d, x, k, sd: cluster_embedding(_maf(d, 10), k, method="gmm", seed=sd),
        "MAF: 20 most autocorrelated directions": lambda d, x, k, sd: cluster_embedding(_maf(d, 20), k, method="gmm", seed=sd),
        "spectral ncut, smoothed-PC weights, h=median": lambda d, x, k, sd: _ncut(d, x, k, sd, 1.0),
        "spectral ncut, smoothed-PC weights, h=median/4": lambda d, x, k, sd: _ncut(d, x, k, sd, 0.25),
        "spectral ncut, raw-PC weights, h=median": lambda d, x, k, sd: _ncut(d, d["raw_gene"], k, sd, 1.0),
        "spectral ncut eigvecs (2K) + smoothed PCs -> gmm": lambda d, x, k, sd: cluster_embedding(
            np.hstack([x, _ncut(d, x, 2 * k, sd, 0.25, embed_only=True)]), k, method="gmm", seed=sd),
        "log UMI regressed out of the PCs, then smoothed": lambda d, x, k, sd: cluster_embedding(_without_depth(d), k, method="gmm", seed=sd),
        "AGF18: smoothed PCs + gradient magnitude stacked": lambda d, x, k, sd: cluster_embedding(
            np.hstack([x, _agf(d, 18)]), k, method="gmm", seed=sd),
        "AGF18: stacked, PCA 30": lambda d, x, k, sd: cluster_embedding(_pca(np.hstack([x, _agf(d, 18)]), 30), k, method="gmm", seed=sd),
        "BANKSY-like: own 0.2, 18-NN mean, AGF18 -> PCA 20": lambda d, x, k, sd: cluster_embedding(_banksy(d, 0.8, 20), k, method="gmm", seed=sd),
    }

    def _maha(x, k, sd, d):
        lab, prec = gmm_over(x, k, sd, 3)
        return merge(x, lab, d["nb"], k, prec=prec)

    if args.only:
        variants = {n: f for n, f in variants.items() if any(o in n for o in args.only)}
    for s in args.slices:
        d = load(Path(args.data_dir), s, args.preset, gen=args.gen)
        x, k = d["gene"], d["k"]
        line = []
        for name, fn in variants.items():
            t = time.time()
            vals = [score(d, fn(d, x, k, sd)) for sd in args.seeds]  # seed-free variants just repeat
            rows.setdefault(name, []).extend(vals)
            line.append(f"{name}: {np.round(vals, 3)} ({time.time() - t:.0f}s)")
        print(f"{s} (K={k}):\n  " + "\n  ".join(line), flush=True)
    print("\n| variant | median | mean | min | n |\n|---|---|---|---|---|")
    for name, v in rows.items():
        a = np.asarray(v)
        print(f"| {name} | {np.median(a):.3f} | {a.mean():.3f} | {a.min():.3f} | {len(a)} |")


def consensus(x, k, seed, runs, *, soft, n_init=1):
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    blocks = []
    for r in range(runs):
        g = GaussianMixture(k, covariance_type="tied", n_init=n_init, random_state=seed * 1000 + r).fit(x)
        if soft:
            blocks.append(g.predict_proba(x))
        else:
            blocks.append(np.eye(k)[g.predict(x)])
    h = np.hstack(blocks)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(h)


def _quantile(x):
    from sklearn.preprocessing import QuantileTransformer

    return QuantileTransformer(output_distribution="normal", n_quantiles=min(1000, x.shape[0])).fit_transform(x)


def _once(d, key, make):
    """A seed-free feature of slice ``d``, computed once and kept in ``d`` (variants x seeds reuse it)."""
    if key not in d:
        d[key] = make()
    return d[key]


def _smooth(d, k):
    from mihd.graph import knn_indices
    from mihd.train._runner import _neighbourhood_mean

    return _once(d, ("smooth", k), lambda: _neighbourhood_mean(d["raw_gene"], knn_indices(d["xy"], k, include_self=True)))


def _pursuit(x, m, seed):
    """Projection pursuit: FastICA on the smoothed PCs, keep the ``m`` components whose distribution
    is furthest from a Gaussian (|excess kurtosis| + skewness^2, a multimodality / tail score)."""
    from scipy.stats import kurtosis, skew
    from sklearn.decomposition import FastICA

    s = FastICA(n_components=x.shape[1], whiten="unit-variance", random_state=seed, max_iter=1000).fit_transform(x)
    score = np.abs(kurtosis(s, axis=0)) + skew(s, axis=0) ** 2
    return s[:, np.argsort(score)[::-1][:m]]


def _pearson(d):
    """mihd's `pearson` gene encoder (analytic Pearson residuals, 3000 genes, 30 PCs), each PC
    standardised, then the 6-NN mean (as the floor's input)."""
    from mihd.encoders import get_gene_encoder
    from mihd.train._runner import _neighbourhood_mean, _standardise

    z = _standardise({"gene": get_gene_encoder("pearson")().encode(d["adata"])}, "zscore")["gene"]
    return _neighbourhood_mean(z, d["nb"])


def _ncut(d, x, k, seed, h, embed_only=False):
    """Normalised-cut spectral clustering (Ng, Jordan & Weiss 2002) on the symmetrised 6-NN spatial
    graph weighted by expression similarity exp(-||x_i - x_j||^2 / (h * median)): cuts are cheap
    where expression jumps (layer borders) and dear where it drifts smoothly (nuisance fields)."""
    from scipy.sparse.linalg import eigsh
    from sklearn.cluster import KMeans

    nb = d["nb"][:, 1:]
    n = x.shape[0]
    d2 = ((x[:, None, :] - x[nb]) ** 2).sum(-1)
    w = np.exp(-d2 / (h * np.median(d2)))
    a = sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), nb.shape[1]), nb.ravel())), shape=(n, n))
    a = a.maximum(a.T)
    deg = np.asarray(a.sum(1)).ravel()
    dinv = sparse.diags(1.0 / np.sqrt(deg))
    m = dinv @ a @ dinv
    _, vecs = eigsh(m, k=k, which="LA", v0=np.random.default_rng(seed).random(n))
    u = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)  # rows on the unit sphere
    return u if embed_only else KMeans(k, n_init=10, random_state=seed).fit_predict(u)


def _maf(d, m):
    """Maximum autocorrelation factors of the smoothed PCs: the generalised eigenvectors of the
    covariance of neighbour differences against the total covariance, the m smoothest kept."""
    from scipy.linalg import eigh

    x = d["gene"] - d["gene"].mean(0)
    nb = d["nb"][:, 1:]
    diff = (x[:, None, :] - x[nb]).reshape(-1, x.shape[1])
    _, vecs = eigh(diff.T @ diff / diff.shape[0], x.T @ x / x.shape[0])
    return (x @ vecs[:, :m]).astype(np.float32)


def _without_depth(d):
    """Raw gene PCs minus their least-squares fit on log UMI (sequencing depth), then the 6-NN mean."""
    from mihd.train._runner import _neighbourhood_mean

    design = np.column_stack([np.ones_like(d["log_umi"]), d["log_umi"]])
    coef, *_ = np.linalg.lstsq(design, d["raw_gene"], rcond=None)
    return _neighbourhood_mean((d["raw_gene"] - design @ coef).astype(np.float32), d["nb"])


def _agf(d, k):
    """First-order azimuthal Gabor filter (BANKSY, Singhal et al. 2024) of the raw gene PCs: per PC
    the magnitude |sum_j w_ij (x_j - m_i) exp(i phi_ij)| over the k nearest spots, w a Gaussian kernel
    of distance (sd: the median neighbour distance), phi_ij the direction from spot i to spot j, m_i
    the weighted mean. Large where expression changes across the neighbourhood (a border), small inside
    a domain."""
    from mihd.graph import knn_indices

    def make():
        xy = np.asarray(d["xy"], float)
        nb = knn_indices(xy, k, include_self=False)
        vec = xy[nb] - xy[:, None, :]
        dist = np.linalg.norm(vec, axis=-1)
        w = np.exp(-0.5 * (dist / np.median(dist)) ** 2)
        w /= w.sum(1, keepdims=True)
        phase = np.exp(1j * np.arctan2(vec[..., 1], vec[..., 0]))
        xn = d["raw_gene"][nb]  # (n, k, f)
        centred = xn - (w[..., None] * xn).sum(1, keepdims=True)
        return np.abs((w[..., None] * phase[..., None] * centred).sum(1)).astype(np.float32)

    return _once(d, ("agf", k), make)


def _pca(x, m):
    from sklearn.decomposition import PCA

    return PCA(m, random_state=0).fit_transform(x - x.mean(0)).astype(np.float32)


def _banksy(d, lam, m):
    """BANKSY's feature matrix on the gene PCs: own (sqrt(1 - lam)), 18-NN mean (sqrt(lam / 2)) and AGF
    (sqrt(lam / 2)), each block z-scored per column, then PCA."""
    from mihd.train._runner import _standardise

    z = _standardise({"own": d["raw_gene"], "mean": _smooth(d, 18), "agf": _agf(d, 18)}, "zscore")
    weights = {"own": np.sqrt(1 - lam), "mean": np.sqrt(lam / 2), "agf": np.sqrt(lam / 2)}
    return _pca(np.hstack([w * z[b] for b, w in weights.items()]), m)


def knn_graph(nb):
    n = nb.shape[0]
    g = sparse.csr_matrix((np.ones(nb[:, 1:].size), (np.repeat(np.arange(n), nb.shape[1] - 1), nb[:, 1:].ravel())), shape=(n, n))
    return g + g.T


if __name__ == "__main__":
    main()
