"""Where the smoothed-PCA floor loses ARI on the development set: features or clustering objective?

Development slices only (never 151673 / 151674). For each slice of preset v2 it prepares the
default gene PCs and image features exactly as `mihd train` does (`prepare_slice_inputs`,
`_standardise`), averages them over each spot and its 6 nearest spots, then scores, after the
same 6-NN majority refinement:

- ``floor``: the tied GMM (mihd's default clustering, seeds 0-2);
- ``oracle-init GMM``: the same GMM started from the true layer means (an upper reference that
  reads the labels; never a method) and its log-likelihood against the free fits';
- ``LDA``: a linear classifier fitted on the labels (how separable the layers are linearly), and its
  5-fold cross-validated accuracy on the genes, the image features and both (what the image adds);
- label-free alternatives that were candidates for a better default: bilateral (edge-aware)
  smoothing, a mean-field Potts HMRF on top of the GMM, and gene PCs concatenated with image
  features.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/diagnose_clustering.py [--slices ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import cross_val_predict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from semisynthetic import DEV_SLICES, SCORED_SLICES, dlpfc_geometry_slice, preset_options  # noqa: E402


def load(data_dir: Path, slice_id: str, preset: str, encoder: str = "default", gen=()):
    from mihd._config import compose
    from mihd.graph import knn_indices
    from mihd.train._runner import _neighbourhood_mean, _standardise, gene_scaling, prepare_slice_inputs

    adata = dlpfc_geometry_slice(data_dir / "dlpfc" / slice_id, seed=0, **preset_options(preset, gen))
    cfg = compose("train", ["data=h5ad", "data.path=unused", "cache_dir=/tmp/mihd_dev_cache", f"encoder={encoder}"],
                  stamp_run_dir=False)
    prepared = prepare_slice_inputs(cfg, adata)
    feats = _standardise(prepared.features, gene_scaling(cfg))
    nb = knn_indices(prepared.coords, 6, include_self=True)
    truth = adata.obs["ground_truth"].astype(object).where(adata.obs["ground_truth"].notna(), None).to_numpy()
    return {
        "raw_gene": feats["gene"],
        "gene": _neighbourhood_mean(feats["gene"], nb),
        "image": _neighbourhood_mean(feats["image"], nb),
        "xy": prepared.coords,
        "nb": nb,
        "truth": truth,
        "k": adata.obs["ground_truth"].cat.categories.size,
        "log_umi": np.log(np.asarray(adata.X.sum(1)).ravel()),
        "adata": adata,
    }


def score(d, labels) -> float:
    from mihd.metrics import score_labels
    from mihd.refine import refine_labels

    return score_labels(refine_labels(d["xy"], labels, n_neighbors=6), d["truth"], d["xy"])["ari"]


def bilateral(d) -> np.ndarray:
    """Neighbour weights exp(-||x_i - x_j||^2 / h) on the raw PCs, h the median neighbour distance."""
    x, nb = d["raw_gene"], d["nb"]
    d2 = ((x[nb] - x[:, None]) ** 2).sum(-1)
    w = np.exp(-d2 / np.median(d2[:, 1:]))
    w /= w.sum(1, keepdims=True)
    return (w[..., None] * x[nb]).sum(1)


def hmrf(x, nb, k, seed, beta=1.0, iters=20) -> np.ndarray:
    """Tied GMM, then mean-field EM with a Potts prior over the 6-NN graph (beta per agreeing neighbour)."""
    g = GaussianMixture(k, covariance_type="tied", n_init=3, random_state=seed).fit(x)
    resp, mu, cov = g.predict_proba(x), g.means_, g.covariances_
    n, f = x.shape
    for _ in range(iters):
        prec = np.linalg.inv(cov + 1e-6 * np.eye(f))
        diff = x[:, None, :] - mu[None]
        loglik = -0.5 * np.einsum("nkf,fg,nkg->nk", diff, prec, diff)
        prior = beta * resp[nb].sum(1)
        logp = loglik + prior - logsumexp(prior, 1, keepdims=True)
        resp = np.exp(logp - logsumexp(logp, 1, keepdims=True))
        mu = (resp.T @ x) / (resp.sum(0)[:, None] + 1e-10)
        cov = sum(((x - mu[j]).T * resp[:, j]) @ (x - mu[j]) for j in range(k)) / n
    return resp.argmax(1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MIHD_DATA_DIR", str(HERE.parents[2] / "shared" / "data")))
    ap.add_argument("--slices", nargs="+", default=["151507", "151510", "151669", "151676"])
    ap.add_argument("--preset", default="v3")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--encoder", default="default", help="encoder config (e.g. ssl_cnn for the self-supervised image CNN)")
    ap.add_argument("--crosstab", action="store_true", help="print the floor's domains (first seed) against the layers")
    args = ap.parse_args(argv)
    bad = set(args.slices) & SCORED_SLICES
    if bad:
        ap.error(f"--slices {sorted(bad)} are the scored slices; use dev slices: {', '.join(DEV_SLICES)}")
    from mihd.cluster import cluster_embedding

    rows: dict[str, list[float]] = {}

    def add(name, values):
        rows.setdefault(name, []).extend(values)

    for s in args.slices:
        d = load(Path(args.data_dir), s, args.preset, args.encoder)
        x, k, seeds = d["gene"], d["k"], args.seeds
        free_labels = [cluster_embedding(x, k, method="gmm", seed=sd, n_init=3) for sd in seeds]
        free = [score(d, lab) for lab in free_labels]
        if args.crosstab:  # which layers the free fit splits or merges (reads labels: a diagnostic only)
            import pandas as pd

            from mihd.refine import refine_labels

            lab = refine_labels(d["xy"], free_labels[0], n_neighbors=6)
            print(f"{s}, seed {seeds[0]}:\n{pd.crosstab(pd.Series(d['truth']).fillna('NA'), lab)}", flush=True)
        add("floor (tied GMM, 3 starts)", free)
        known = np.array([t is not None for t in d["truth"]])
        cats = sorted(set(d["truth"][known]))
        means = np.stack([x[d["truth"] == c].mean(0) for c in cats])
        oracle = GaussianMixture(len(cats), covariance_type="tied", means_init=means, random_state=0).fit(x)
        add("oracle-init GMM (reads labels)", [score(d, oracle.predict(x))])
        lls = [GaussianMixture(k, covariance_type="tied", n_init=3, random_state=sd).fit(x).score(x) for sd in seeds]
        lls10 = [GaussianMixture(k, covariance_type="tied", n_init=10, random_state=sd).fit(x).score(x) for sd in seeds]
        # How much layer information each modality carries: 5-fold cross-validated LDA accuracy.
        acc = {
            m: np.mean(cross_val_predict(LinearDiscriminantAnalysis(), f[known], d["truth"][known].astype(str), cv=5)
                       == d["truth"][known].astype(str))
            for m, f in (("genes", x), ("image", d["image"]), ("genes+image", np.hstack([x, d["image"]])))
        }
        lda = LinearDiscriminantAnalysis().fit(x[known], d["truth"][known].astype(str))
        add("LDA on the labels (reads labels)", [score(d, lda.predict(x))])
        add("bilateral smoothing", [score(d, cluster_embedding(bilateral(d), k, method="gmm", seed=sd, n_init=3)) for sd in seeds])
        add("HMRF beta=1", [score(d, hmrf(x, d["nb"][:, 1:], k, sd)) for sd in seeds])
        add("gene PCs + 0.05 x image", [score(d, cluster_embedding(np.hstack([x, 0.05 * d["image"]]), k, method="gmm", seed=sd, n_init=3)) for sd in seeds])
        print(
            f"{s}: floor {np.round(free, 3)}; oracle-init {rows['oracle-init GMM (reads labels)'][-1]:.3f} "
            f"(log-lik {oracle.score(x):.3f} vs free fits {np.round(lls, 3)}, with 10 starts {np.round(lls10, 3)}); "
            f"LDA {rows['LDA on the labels (reads labels)'][-1]:.3f}; cross-validated LDA accuracy "
            + ", ".join(f"{m} {a:.3f}" for m, a in acc.items()),
            flush=True,
        )
    print("\n| variant | median | mean | min | n |\n|---|---|---|---|---|")
    for name, v in rows.items():
        a = np.asarray(v)
        print(f"| {name} | {np.median(a):.3f} | {a.mean():.3f} | {a.min():.3f} | {len(a)} |")


if __name__ == "__main__":
    main()
