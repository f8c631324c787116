"""Issue 16, item 2: why the gene recipe failed on DLPFC 151675, and which step moves the partition.

Label-free features, the package's own functions, refined ARI against the annotation only to report:

1. gene recipe x slice: dispersion-ranked HVGs scaled (the old default), the same unscaled (the
   "plain scanpy recipe"), and genes ranked by Moran's I, scaled (the new default); 6-NN mean of
   30 PCs, tied GMM (10 k-means starts), 6-NN majority refinement; plus the largest |correlation|
   of a leading PC with log library size (sequencing depth);
2. which partition: the old default's clusters on 151675 against the layers, with each cluster's
   median UMI count;
3. neighbourhood size (smoothing) on both platforms, and the depth rule ``spatial.n_neighbors=auto``;
4. the clustering search: over 40 single-start fits on the new features, ARI against the
   log-likelihood the fit reached (is the best-likelihood partition the layers'?).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare/diagnose.py            # writes DIAGNOSIS_RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
DLPFC = ("151673", "151674", "151675", "151676")
STARMAP = ("BZ5", "BZ9", "BZ14")
RECIPES = {
    "hvg, scaled (old default)": dict(genes="hvg", scale=True),
    "hvg, unscaled (plain scanpy recipe)": dict(genes="hvg", scale=False),
    "Moran's I, scaled (new default)": dict(genes="moran", scale=True),
}


def load(data_dir: Path, name: str):
    from mihd.data import read_slice

    if name in STARMAP:
        a = read_slice(data_dir / "starmap_mpfc" / f"{name}.h5ad")
        truth = a.obs["truth"].astype(str).to_numpy()
        k = 4
    else:
        a = read_slice(data_dir / "dlpfc" / name, annotation="truth.tsv", annotation_key="truth")
        truth = a.obs["truth"].astype(str).to_numpy()
        k = 7
    return a, truth, k


def smoothed(pcs: np.ndarray, coords: np.ndarray, k: int) -> np.ndarray:
    from mihd.graph import knn_indices
    from mihd.train._runner import _neighbourhood_mean

    return _neighbourhood_mean(pcs, knn_indices(coords, k, include_self=True))


def refined_ari(x, coords, truth, k_domains, seed):
    from mihd.cluster import cluster_embedding
    from mihd.metrics import score_labels
    from mihd.refine import refine_labels

    labels = cluster_embedding(x, k_domains, method="gmm", seed=seed)
    return score_labels(refine_labels(coords, labels, n_neighbors=6), truth)["ari"], labels


def main(argv=None) -> None:
    from mihd.encoders.pca import PCAGeneEncoder
    from mihd.graph import neighbors_for_depth

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MIHD_DATA_DIR", HERE.parents[1].parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=HERE / "DIAGNOSIS_RESULTS.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    t0 = time.time()
    data = {n: load(args.data_dir, n) for n in DLPFC + STARMAP}
    out = ["# Diagnosis results (issue 16, item 2)", "", "```", "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare/diagnose.py", "```", ""]

    # 1. recipes
    rows, pcs_cache = [], {}
    for recipe, opts in RECIPES.items():
        row = {"gene recipe": recipe}
        for n in DLPFC:
            a, truth, kd = data[n]
            pcs = PCAGeneEncoder(**opts).encode(a)
            pcs_cache[(recipe, n)] = pcs
            x = smoothed(pcs, a.obsm["spatial"], 6)
            aris = [refined_ari(x, a.obsm["spatial"], truth, kd, s)[0] for s in args.seeds]
            loglib = np.log(np.asarray(a.X.sum(1)).ravel())
            depth = max(abs(np.corrcoef(loglib, pcs[:, j])[0, 1]) for j in range(5))
            row[n] = f"{np.mean(aris):.3f} ± {np.std(aris):.3f} (depth r {depth:.2f})"
        rows.append(row)
        print(row, flush=True)
    out += ["## 1. Gene recipe (DLPFC; 6-NN mean, tied GMM, refined ARI mean ± sd over seeds "
            f"{','.join(map(str, args.seeds))}; depth r = max |corr(PC1-5, log UMI)|)", "", _md(pd.DataFrame(rows)), ""]

    # 2. the partition the old default lands on
    a, truth, kd = data["151675"]
    x = smoothed(pcs_cache[("hvg, scaled (old default)", "151675")], a.obsm["spatial"], 6)
    _, labels = refined_ari(x, a.obsm["spatial"], truth, kd, 0)
    tab = pd.crosstab(pd.Series(truth, name="layer"), pd.Series(labels, name="cluster"))
    umi = pd.Series(np.asarray(a.X.sum(1)).ravel()).groupby(labels).median()
    tab.loc["median UMI"] = umi.reindex(tab.columns).round(0).to_numpy()
    out += ["## 2. 151675, old default, seed 0: clusters (columns) against layers, and each cluster's median UMI", "",
            _md(tab.reset_index()), ""]

    # 3. neighbourhood size
    rows = []
    for n in DLPFC + STARMAP:
        a, truth, kd = data[n]
        pcs = pcs_cache.get(("Moran's I, scaled (new default)", n))
        if pcs is None:
            pcs = PCAGeneEncoder().encode(a)
        auto = neighbors_for_depth(np.asarray(a.X.sum(1)).ravel())
        row = {"dataset": n, "median UMI": int(np.median(np.asarray(a.X.sum(1)))), "auto k": auto}
        for k in (6, 10, 15, 20):
            x = smoothed(pcs, a.obsm["spatial"], k)
            row[f"k={k}"] = f"{np.mean([refined_ari(x, a.obsm['spatial'], truth, kd, s)[0] for s in args.seeds]):.3f}"
        x = smoothed(pcs, a.obsm["spatial"], auto)
        row["auto"] = f"{np.mean([refined_ari(x, a.obsm['spatial'], truth, kd, s)[0] for s in args.seeds]):.3f}"
        rows.append(row)
        print(row, flush=True)
    out += ["## 3. Smoothing neighbourhood (new gene recipe; refined ARI, mean over seeds)", "", _md(pd.DataFrame(rows)), ""]

    # 4. the search
    from sklearn.mixture import GaussianMixture

    from mihd.metrics import score_labels
    from mihd.refine import refine_labels

    rows = []
    for n in DLPFC:
        a, truth, kd = data[n]
        x = smoothed(pcs_cache[("Moran's I, scaled (new default)", n)], a.obsm["spatial"], 6)
        res = []
        for st in range(40):
            g = GaussianMixture(kd, covariance_type="tied", n_init=1, random_state=st, reg_covar=1e-6).fit(x)
            res.append((score_labels(refine_labels(a.obsm["spatial"], g.predict(x), n_neighbors=6), truth)["ari"], g.score(x)))
        r = np.array(res)
        rows.append({"slice": n, "ARI range over 40 starts": f"{r[:, 0].min():.3f}-{r[:, 0].max():.3f}",
                     "ARI of the best-likelihood start": f"{r[np.argmax(r[:, 1]), 0]:.3f}",
                     "corr(ARI, log-likelihood)": f"{np.corrcoef(r[:, 0], r[:, 1])[0, 1]:.2f}"})
        print(rows[-1], flush=True)
    out += ["## 4. The clustering search (new features; 40 single k-means-started tied GMM fits)", "", _md(pd.DataFrame(rows)), "",
            f"Total {time.time() - t0:.0f} s.", ""]
    from mihd._io import write_text

    write_text(args.out, "\n".join(out))
    print(f"wrote {args.out}")


def _md(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.astype(object).to_numpy()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
