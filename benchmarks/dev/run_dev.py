"""Score mihd settings on the semi-synthetic DLPFC-geometry slices (the development set).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/run_dev.py --slices 151507 151669 151676 \
        --seeds 0 1 --variant "smoothed=fusion=genes_only" --variant "raw=fusion=genes_only,spatial.smooth_inputs=false"

Each ``--variant NAME=OVERRIDE[,OVERRIDE...]`` is a set of ``mihd train`` overrides. Rows are
appended to ``benchmarks/dev/results.csv`` (one per slice x seed x variant); a summary
(median / mean ARI after refinement per variant) is printed. The scored slices 151673 /
151674 are refused: defaults are chosen here, on other slices' geometry.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
from semisynthetic import DEV_SLICES, SCORED_SLICES, dlpfc_geometry_slice, preset_options  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MIHD_DATA_DIR", str(here.parents[2] / "shared" / "data")))
    ap.add_argument("--slices", nargs="+", default=["151507", "151669", "151676"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--variant", action="append", default=[], help="NAME=override,override")
    ap.add_argument("--summary", action="store_true", help="only summarise --out into results.md")
    ap.add_argument("--out", default=str(here / "results.csv"))
    ap.add_argument("--preset", default="v3", help="generator preset (semisynthetic.PRESETS); --gen overrides it")
    ap.add_argument("--gen", action="append", default=[], help="generator option KEY=VALUE (see semisynthetic.py)")
    ap.add_argument("--tag", default="", help="free text stored with each row (e.g. the commit)")
    args = ap.parse_args(argv)
    if args.summary:
        return summarise(Path(args.out))
    if not args.variant:
        ap.error("give at least one --variant NAME=override,... (or --summary)")
    bad = set(args.slices) & SCORED_SLICES
    if bad:
        ap.error(f"--slices {sorted(bad)} are the scored slices; use dev slices: {', '.join(DEV_SLICES)}")

    gen = preset_options(args.preset, args.gen)
    from mihd._config import compose
    from mihd.train import train

    variants = []
    for v in args.variant:
        name, _, ov = v.partition("=")
        variants.append((name, [o for o in ov.split(",") if o]))
    out = Path(args.out)
    new = not out.exists()
    rows = []
    with out.open("a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["date", "tag", "variant", "overrides", "slice", "seed", "ari_before", "ari_after", "nmi_after", "seconds"])
        for s in args.slices:
            base = dlpfc_geometry_slice(Path(args.data_dir) / "dlpfc" / s, seed=0, **gen)
            k = base.obs["ground_truth"].cat.categories.size
            for seed in args.seeds:
                for name, ov in variants:
                    cfg = compose("train", [
                        "data=h5ad", "data.path=unused", f"data.n_domains={k}", f"seed={seed}",
                        "cache_dir=/tmp/mihd_dev_cache", "trainer.progress_bar=false", *ov,
                    ], stamp_run_dir=False)
                    t0 = time.perf_counter()
                    res = train(cfg, adata=base.copy(), progress=False, write=False)
                    sc = res.metrics["scores"]
                    row = [time.strftime("%Y-%m-%d %H:%M"), args.tag, name, " ".join(ov), s, seed,
                           round(sc["before_refinement"]["ari"], 4), round(sc["after_refinement"]["ari"], 4),
                           round(sc["after_refinement"]["nmi"], 4), round(time.perf_counter() - t0, 1)]
                    w.writerow(row)
                    fh.flush()
                    rows.append(row)
                    t = res.metrics.get("timing_seconds", {})
                    print(f"{s} seed{seed} {name:24s} ARI {row[6]:.3f} -> {row[7]:.3f}  ({row[9]} s; {t})", flush=True)
    print("\nvariant                   median   mean   min  (ARI after refinement, n)")
    for name, _ in variants:
        a = np.array([r[7] for r in rows if r[2] == name])
        print(f"{name:24s} {np.median(a):.3f}  {a.mean():.3f}  {a.min():.3f}  n={len(a)}")


def summarise(path: Path) -> None:
    """results.md beside results.csv: ARI after refinement per (batch tag, variant), over slices x seeds."""
    import pandas as pd

    t = pd.read_csv(path)
    g = t.groupby(["tag", "variant"], sort=False)
    out = g["ari_after"].agg(["median", "mean", "std", "min", "count"]).round(3)
    out["slices"] = g["slice"].agg(lambda s: " ".join(sorted(set(map(str, s)))))
    out["seeds"] = g["seed"].agg(lambda s: " ".join(map(str, sorted(set(s)))))
    out["overrides"] = g["overrides"].first().fillna("")
    lines = ["# Development set: semi-synthetic DLPFC-geometry slices (never 151673 / 151674)", "",
             "ARI after refinement over the slices x seeds of each batch; rows are in the order they were run.", "",
             "| batch | variant | median | mean | sd | min | n | slices | seeds | overrides |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (tag, var), r in out.iterrows():
        lines.append(f"| {tag} | {var} | {r['median']:.3f} | {r['mean']:.3f} | {r['std']:.3f} | {r['min']:.3f} | {int(r['count'])} "
                     f"| {r['slices']} | {r['seeds']} | `{r['overrides']}` |")
    (path.with_name("results.md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
