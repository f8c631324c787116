"""Issue 25 item 4: gene recipes on Visium, coarse (legacy-ST-like) spots and single cells.

For each dataset x gene recipe: the depth share of the gene PCs (`mihd.metrics.depth_share`: R² of
log total counts per spot regressed on the 30 PCs) and the refined ARI of `mihd train` (default
`genes_only`, seeds 0-4; `--fusions gated --seeds 0 1 2` for the trained default). Datasets: the
4 DLPFC development slices pooled into pseudo-spots (`data=dlpfc_pooled`: each centre + its 6
neighbours, ~500 per section, `mihd.data.pool_spots`), the same 4 slices at Visium resolution
(`data=dlpfc`) and STARmap mPFC BZ5 / BZ9 / BZ14 (`data=starmap_mpfc`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/genes/bench_genes.py                       # genes_only, seeds 0-4
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/genes/bench_genes.py --fusions gated --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/genes/bench_genes.py --report              # tables only

Rows are appended to results.csv (a run already there is skipped, so an interrupted sweep resumes);
`--report` (also done after every sweep) writes results.md. The annotation is read only by the
scoring inside `train`; no recipe is chosen by it here (the tables report, the reader decides).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.csv"
REPORT = HERE / "results.md"
FIELDS = ["dataset", "recipe", "fusion", "seed", "ari", "depth_share", "depth_var_share", "n_spots", "seconds"]

DATASETS = {  # name -> train overrides
    **{f"pooled_{s}": ["data=dlpfc_pooled", f"data.slice='{s}'"] for s in ("151673", "151674", "151675", "151676")},
    **{f"dlpfc_{s}": ["data=dlpfc", f"data.slice='{s}'"] for s in ("151673", "151674", "151675", "151676")},
    **{f"starmap_{s}": ["data=starmap_mpfc", f"data.slice={s}"] for s in ("BZ5", "BZ9", "BZ14")},
}
# recipe -> encoder.gene_options (on top of configs/encoder/default.yaml: 3000 genes, 30 PCs)
RECIPES = {
    "moran+pareto (default)": {"genes": "moran", "scale": "pareto"},
    "hvg+pareto": {"genes": "hvg", "scale": "pareto"},
    "hvg+unit": {"genes": "hvg", "scale": "unit"},
    "hvg+unit+clip10": {"genes": "hvg", "scale": "unit", "clip": 10},
    "moran+unit": {"genes": "moran", "scale": "unit"},
    "moran+unit+clip10": {"genes": "moran", "scale": "unit", "clip": 10},
    # data-derived: log depth regressed out of every selected, scaled gene before the PCA (research
    # encoder registered below, not in the package)
    "moran+pareto+regress": {"genes": "moran", "scale": "pareto", "gene": "pca_regress_depth"},
    "hvg+unit+clip10+regress": {"genes": "hvg", "scale": "unit", "clip": 10, "gene": "pca_regress_depth"},
}


def _register_research_encoders() -> None:
    """``pca_regress_depth``: the pca recipe with log total counts regressed out of the selected,
    scaled genes before the PCA, O(nnz): the centred matrix times (I - u u^T), u the unit centred
    log depth, as an implicit operator for ARPACK (no densified matrix)."""
    from mihd.encoders import get_gene_encoder, list_gene_encoders
    from mihd.encoders._registry import register_gene_encoder

    if "pca_regress_depth" in list_gene_encoders():
        return
    base = get_gene_encoder("pca")

    @register_gene_encoder("pca_regress_depth")
    class PCARegressDepth(base):
        def encode(self, adata):
            from scipy import sparse
            from scipy.sparse.linalg import LinearOperator, svds

            y = np.log(np.asarray(adata.X.sum(1), dtype=np.float64).ravel())
            u = y - y.mean()
            u /= np.linalg.norm(u)
            X = self.pca_input(adata)
            X = sparse.csr_matrix(X, dtype=np.float64)
            mu = np.asarray(X.mean(0)).ravel()

            def mv(v):  # v: (genes,) or (genes, m)
                w = X @ v - np.outer(np.ones(X.shape[0]), mu @ v).reshape(X.shape[0], *np.shape(v)[1:])
                return w - np.multiply.outer(u, u @ w).reshape(w.shape)

            def rmv(w):  # w: (spots,) or (spots, m)
                w = w - np.multiply.outer(u, u @ w).reshape(w.shape)
                return X.T @ w - np.multiply.outer(mu, w.sum(0)).reshape(X.shape[1], *np.shape(w)[1:])

            op = LinearOperator(X.shape, matvec=mv, rmatvec=rmv, matmat=mv, rmatmat=rmv, dtype=np.float64)
            k = min(self.n_comps, min(X.shape) - 1)
            v0 = np.random.default_rng(self.seed).uniform(-1, 1, min(X.shape))
            U, S, _ = svds(op, k=k, v0=v0)
            order = np.argsort(-S)
            return (U[:, order] * S[order]).astype(np.float32)


def overrides(dataset: str, recipe: str, fusion: str, seed: int) -> list[str]:
    opts = [f"encoder.gene={v}" if k == "gene" else f"encoder.gene_options.{k}={v}" for k, v in RECIPES[recipe].items()]
    return [*DATASETS[dataset], f"fusion={fusion}", f"seed={seed}", "trainer.progress_bar=false", *opts]


def done_keys() -> set[tuple]:
    if not RESULTS.exists():
        return set()
    with RESULTS.open() as fh:
        return {(r["dataset"], r["recipe"], r["fusion"], int(r["seed"])) for r in csv.DictReader(fh)}


def append(row: dict) -> None:
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def sweep(datasets, recipes, fusions, seeds, cache_dir: str) -> None:
    from mihd._config import compose
    from mihd.metrics import depth_share
    from mihd.train import load_slice, prepare_slice_inputs, train

    _register_research_encoders()
    done = done_keys()
    for dataset in datasets:
        todo = [(r, f, s) for r in recipes for f in fusions for s in seeds if (dataset, r, f, s) not in done]
        if not todo:
            continue
        adata = load_slice(compose("train", overrides(dataset, recipes[0], fusions[0], seeds[0]), stamp_run_dir=False).data)
        totals = np.asarray(adata.X.sum(1)).ravel()
        shares = {}
        for recipe, fusion, seed in todo:
            cfg = compose("train", [*overrides(dataset, recipe, fusion, seed), f"cache_dir={cache_dir}"], stamp_run_dir=False)
            if recipe not in shares:  # the gene PCs as the run sees them (cached for its seeds)
                pcs = prepare_slice_inputs(cfg, adata).features["gene"]
                shares[recipe] = (depth_share(pcs, totals), depth_share(pcs, totals, of="pcs"))
            t0 = time.perf_counter()
            res = train(cfg, adata=adata.copy(), write=False)
            row = {"dataset": dataset, "recipe": recipe, "fusion": fusion, "seed": seed,
                   "ari": round(res.metrics["scores"]["after_refinement"]["ari"], 4),
                   "depth_share": round(shares[recipe][0], 4), "depth_var_share": round(shares[recipe][1], 4), "n_spots": adata.n_obs,
                   "seconds": round(time.perf_counter() - t0, 1)}
            append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)


def report() -> str:
    import pandas as pd

    df = pd.read_csv(RESULTS)
    order = [d for d in DATASETS if d in set(df.dataset)]
    all_recipes = [r for r in RECIPES if r in set(df.recipe)] + sorted(set(df.recipe) - set(RECIPES))
    sys.path.insert(0, str(HERE.parent))  # benchmarks/_machine.py
    from _machine import cpu_model, usable_cores

    import mihd

    out = ["# Gene recipes on Visium, pooled (legacy-ST-like) spots and single cells", "",
           f"Generated by `benchmarks/genes/bench_genes.py --report` from {RESULTS.name} ({len(df)} runs); see README.md. "
           f"Machine: {usable_cores()} cores, {cpu_model()}, Python {platform.python_version()}, mihd from "
           f"{Path(mihd.__file__).parent.parent}.", ""]
    for fusion in sorted(set(df.fusion), key=lambda f: (f != "genes_only", f)):
        sub = df[df.fusion == fusion]
        recipes = [r for r in all_recipes if r in set(sub.recipe)]
        seeds = sorted(set(sub.seed))
        out += [f"## {fusion}: refined ARI, mean ± sd over seeds {', '.join(map(str, seeds))} [depth share: R² of log depth on the 30 gene PCs / share of the PCs' variance explained by log depth]", ""]
        out += ["| dataset | " + " | ".join(recipes) + " |", "|---" * (len(recipes) + 1) + "|"]
        worst = {}
        for d in order:
            cells = []
            for r in recipes:
                g = sub[(sub.dataset == d) & (sub.recipe == r)]
                if g.empty:
                    cells.append("")
                    continue
                m, sd = g.ari.mean(), g.ari.std(ddof=1) if len(g) > 1 else 0.0
                worst.setdefault(r, []).append(m)
                cells.append(f"{m:.3f} ± {sd:.3f} [{g.depth_share.iloc[0]:.2f} / {g.depth_var_share.iloc[0]:.2f}]")
            out.append(f"| {d} | " + " | ".join(cells) + " |")
        full = {r: v for r, v in worst.items() if len(v) == len(order)}
        out.append("| **worst dataset** | " + " | ".join(f"**{min(full[r]):.3f}**" if r in full else "" for r in recipes) + " |")
        out.append("| mean over datasets | " + " | ".join(f"{np.mean(full[r]):.3f}" if r in full else "" for r in recipes) + " |")
        if full:
            best = max(full, key=lambda r: min(full[r]))
            out += ["", f"Best worst dataset ({len(order)} datasets): **{best}** ({min(full[best]):.3f})."]
        out.append("")
    text = "\n".join(out)
    REPORT.write_text(text)
    return text


def main() -> None:
    global RESULTS, REPORT
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--fusions", nargs="+", default=["genes_only"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mihd_bench_genes_cache"))
    p.add_argument("--report", action="store_true", help="only rebuild results.md from results.csv")
    p.add_argument("--csv", type=Path, default=RESULTS, help="rows file (the tables go beside it, .md)")
    args = p.parse_args()
    RESULTS, REPORT = args.csv.resolve(), args.csv.resolve().with_suffix(".md")
    if not args.report:
        sweep(args.datasets, args.recipes, args.fusions, args.seeds, args.cache_dir)
    print(report())


if __name__ == "__main__":
    sys.exit(main())
