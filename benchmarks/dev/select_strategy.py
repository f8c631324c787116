"""Apply the pre-registered selection rule (PREREGISTRATION.md) to a development batch.

Reads ``results.csv`` (development slices only), keeps the rows of one batch tag, and among the
trained fusions (every variant but the floor) picks the highest median ARI after refinement; within
0.001, the higher mean; then the higher worst run. Nothing from the scored slices is read unless
``--scored`` is given, and then only *after* the choice, to print how well the development ranking
predicted the scored one (a diagnostic of the development set, never an input to the choice).

    .venv/bin/python benchmarks/dev/select_strategy.py --tag v2-zoo-prereg
    .venv/bin/python benchmarks/dev/select_strategy.py --tag v2-zoo-prereg --scored benchmarks/compare/results.csv
    .venv/bin/python benchmarks/dev/select_strategy.py --tag v3-validate v3-screen v3-zoo --scored benchmarks/compare/results.csv

``--evaluate`` reads a ``mihd evaluate`` results table instead (``experiment=dlpfc_dev_real``: the
ten unscored slices with real counts, once those are local): the default variant's fusions, with
``genes_only`` as the floor. A table holding a scored slice is refused.

    .venv/bin/python benchmarks/dev/select_strategy.py --evaluate evaluations/dlpfc_dev_real/results.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from semisynthetic import SCORED_SLICES  # noqa: E402

FLOOR = "floor"
TIE = 0.001


def evaluate_rows(path: Path) -> pd.DataFrame:
    """A ``mihd evaluate`` results.csv as development rows (variant, slice, seed, ari_after).

    Only the ``default`` variant's runs count (``genes_only [raw]`` and other variants are not
    candidates); ``genes_only`` is the floor. Failed or unfinished runs make the batch incomplete:
    the rule is applied to whole batches only.
    """
    table = pd.read_csv(path)
    missing = {"status", "slice", "fusion", "variant", "seed", "ari_after"} - set(table.columns)
    if missing:
        raise SystemExit(f"{path}: not a mihd evaluate results table (no column {', '.join(sorted(missing))})")
    scored = sorted({s for s in table["slice"].astype(str) if s.rsplit("_", 1)[-1] in SCORED_SLICES})
    if scored:
        raise SystemExit(f"{path}: holds the scored slice(s) {scored}; the rule may only read development slices")
    table = table[table["variant"] == "default"]
    bad = table[table["status"] != "ok"]
    if not bad.empty:
        raise SystemExit(f"{path}: {len(bad)} run(s) not ok (e.g. {bad['run_id'].iloc[0]}); rerun the evaluation to finish them")
    return pd.DataFrame({
        "tag": "evaluate",
        "variant": table["fusion"].replace({"genes_only": FLOOR}),
        "slice": table["slice"],
        "seed": table["seed"],
        "ari_after": table["ari_after"],
    })


def per_variant(rows: pd.DataFrame) -> pd.DataFrame:
    g = rows.groupby("variant")["ari_after"]
    return pd.DataFrame({"median": g.median(), "mean": g.mean(), "min": g.min(), "sd": g.std(), "n": g.size()})


def choose(stats: pd.DataFrame) -> str:
    """The rule: highest median; within TIE of the best median, the higher mean, then the higher min."""
    trained = stats.drop(FLOOR, errors="ignore")
    if trained.empty:
        raise SystemExit("no trained variant in this batch")
    close = trained[trained["median"] >= trained["median"].max() - TIE]
    return str(close.sort_values(["mean", "min"], ascending=False).index[0])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=HERE / "results.csv")
    ap.add_argument("--tag", nargs="+", help="one batch tag, or several batches run on the same cells")
    ap.add_argument("--evaluate", type=Path, default=None, help="a mihd evaluate results.csv (experiment=dlpfc_dev_real)")
    ap.add_argument("--only", nargs="*", default=None, help="restrict to these variants (e.g. to compare two batches' rankings)")
    ap.add_argument("--scored", type=Path, default=None, help="benchmarks/compare/results.csv, read after the choice")
    args = ap.parse_args(argv)
    if (args.evaluate is None) == (args.tag is None):
        ap.error("give exactly one of --tag (a batch of results.csv) and --evaluate (a mihd evaluate table)")
    if args.evaluate is not None:
        source, tags, rows = args.evaluate, ["evaluate"], evaluate_rows(args.evaluate)
    else:
        source, tags, rows = args.results, args.tag, pd.read_csv(args.results)
        rows = rows[rows["tag"].isin(tags)]
    if args.only:
        rows = rows[rows["variant"].isin(args.only)]
    if rows.empty:
        raise SystemExit(f"{source}: no rows with tag {tags!r}")
    cells = rows.groupby("variant").apply(lambda g: len(set(zip(g["slice"], g["seed"]))), include_groups=False)
    if cells.nunique() != 1:
        raise SystemExit(f"the batch is incomplete: slice x seed cells per variant differ: {cells.to_dict()}")
    stats = per_variant(rows).sort_values("median", ascending=False)
    pick = choose(stats)
    print(f"batch {' + '.join(tags)}: {rows['slice'].nunique()} slices x {rows['seed'].nunique()} seeds, {int(cells.iloc[0])} runs per variant\n")
    print("| variant | median | mean | sd | min | n |\n|---|---|---|---|---|---|")
    for v, r in stats.iterrows():
        mark = " (chosen)" if v == pick else " (floor)" if v == FLOOR else ""
        print(f"| {v}{mark} | {r['median']:.3f} | {r['mean']:.3f} | {r['sd']:.3f} | {r['min']:.3f} | {int(r['n'])} |")
    print(f"\nchosen by the pre-registered rule: {pick}")
    if args.scored is not None:
        scored = pd.read_csv(args.scored)
        scored = scored[(scored["status"] == "ok") & (scored["method"].isin(stats.index) | (scored["method"] == "genes_only"))]
        med = scored.groupby("method")["ari_after"].median().rename({"genes_only": FLOOR})
        both = stats.join(med.rename("scored"), how="inner")
        rho = both["median"].rank().corr(both["scored"].rank())
        print(f"\ndiagnostic, after the choice: Spearman correlation of development and scored medians over "
              f"{len(both)} methods: {rho:.2f}")
        for v, r in both.sort_values("scored", ascending=False).iterrows():
            print(f"  {v:16s} dev {r['median']:.3f}  scored {r['scored']:.3f}")


if __name__ == "__main__":
    main()
