"""Side-by-side report: every mihd fusion, the genes-only baselines and the peers on the same slices.

Reads tables that share ``mihd evaluate``'s columns (``RESULT_COLUMNS``) and writes one report:

- the mihd evaluation (``mihd evaluate experiment=dlpfc_pair``): every registered fusion,
  including ``genes_only`` (the gene PCA averaged over each spot and its 6 nearest spots, the
  package default), plus the ``genes_only [raw]`` variant (the gene PCA alone, no spatial
  averaging);
- the peers (``benchmarks/peers/results.csv``, from ``benchmarks/peers/run_all.sh``).

Outputs (atomic): ``results.csv`` (all rows), ``summary.md`` (per-slice ARI / NMI mean ± sd,
median ARI over all slices and seeds, wall time, peak memory, the two baselines named, and a
verdict line computed from the table), ``ari_by_method.png``.

    .venv/bin/python benchmarks/compare/compare.py --mihd evaluations/dlpfc_pair/results.csv \
        --peers benchmarks/peers/results.csv --out benchmarks/compare
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mihd._io import atomic_write, write_text
from mihd.evaluate._evaluate import RESULT_COLUMNS
from mihd.evaluate._report import plot_ari, summary_markdown

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _machine import cpu_model  # noqa: E402

PEERS = ("GraphST", "SpaGCN")
# The trained strategy named before the scored runs it is judged on: benchmarks/dev/PREREGISTRATION.md.
DEV_CHOICE = "gated"
BASELINES = {"genes_only": "genes averaged over spatial neighbours (smoothed PCA)", "genes_only [raw]": "genes only (PCA)"}


def load(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for p in paths:
        if not p.exists():
            raise SystemExit(f"{p}: no such results table; run `bash benchmarks/compare/run.sh` (or the step that writes it) first.")
        t = pd.read_csv(p)
        missing = [c for c in ("run_id", "status", "slice", "fusion", "seed", "ari_after") if c not in t.columns]
        if missing:
            raise SystemExit(f"{p}: not a mihd results table (missing columns {missing}).")
        frames.append(t.reindex(columns=list(RESULT_COLUMNS)))
    table = pd.concat(frames, ignore_index=True).drop_duplicates("run_id", keep="last")
    # One name per method across tools: the peer's name, or the fusion plus its non-default variant.
    variant = table["variant"].fillna("default").astype(str)
    fusion = table["fusion"].astype(str)
    table["method"] = fusion.where(variant == "default", fusion + " [" + variant + "]")
    return table


def median_difference_interval(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """95 % bootstrap interval of median(a) - median(b) (runs resampled within each method) and the
    bootstrap share of resamples where a's median is higher. Seeded: the same tables give the same text."""
    rng = np.random.default_rng(seed)
    da = np.median(rng.choice(a, (n_boot, len(a))), 1)
    db = np.median(rng.choice(b, (n_boot, len(b))), 1)
    d = da - db
    return float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975)), float((d > 0).mean())


class _Runs:
    """Per-method ARI after refinement of a table's ok runs: medians, counts, runs, per-slice medians."""

    def __init__(self, table: pd.DataFrame):
        ok = table[table["status"] == "ok"]
        self.med = ok.groupby("method")["ari_after"].median()
        self.n = ok.groupby("method").size()
        self.runs = {m: g.to_numpy(float) for m, g in ok.groupby("method")["ari_after"]}
        self.per_slice = ok.groupby(["method", "slice"])["ari_after"].median().unstack()
        self.seeds = {m: sorted(set(g.astype(int))) for m, g in ok.groupby("method")["seed"]}

    def describe(self, m: str) -> str:
        slices = ", ".join(f"{s} {v:.3f}" for s, v in self.per_slice.loc[m].dropna().items())
        return f"{self.med[m]:.3f} (n={self.n[m]}; per slice: {slices})"


def _against(a: _Runs, m: str, b: _Runs, others: list[str], seeds_note: bool = False) -> list[str]:
    """One line per other method: median difference, its bootstrap interval, and the noise flag."""
    out = []
    for other in others:
        diff = a.med[m] - b.med[other]
        lo, hi, share = median_difference_interval(a.runs[m], b.runs[other])
        word = "ahead of" if diff > 0 else "behind" if diff < 0 else "tied with"
        noise = " (within the seed noise: the interval spans 0)" if lo <= 0 <= hi else ""
        seeds = f" seeds {','.join(map(str, b.seeds[other]))}," if seeds_note else ""
        out.append(
            f"  - {word} {other}:{seeds} {b.describe(other)}; difference {diff:+.3f}, "
            f"95 % bootstrap interval [{lo:+.3f}, {hi:+.3f}], higher in {share:.0%} of resamples{noise}"
        )
    return out


def verdict(table: pd.DataFrame, dev_choice: str | None = None) -> list[str]:
    """Where the best trained mihd fusion (and the one chosen beforehand on the development set)
    stands against each peer and baseline: median ARI after refinement over all ok runs (slices x
    seeds), per slice, and a bootstrap interval of the difference, so a gap inside the seed noise is
    called that."""
    r = _Runs(table)
    peers = {m for m in r.med.index if m in PEERS}
    base = {m for m in r.med.index if m in BASELINES}
    others = sorted(peers | base)
    trained = r.med.drop(list(peers | base), errors="ignore")
    if trained.empty:
        return ["- no trained mihd fusion has finished runs yet"]
    best = trained.idxmax()
    lines = [f"- best trained mihd strategy by median ARI: **{best}** {r.describe(best)}"]
    lines += _against(r, best, r, others)
    lines.append(
        f"  - note: picking the best of {len(trained)} trained strategies on these same runs favours it (winner's "
        "curse); the row below is the strategy named beforehand, on the development set"
    )
    if dev_choice:
        if dev_choice not in trained.index:
            lines.append(f"- strategy chosen on the development set: {dev_choice} (no finished runs here)")
        else:
            lines.append(
                f"- strategy chosen beforehand on the development set (`benchmarks/dev`): **{dev_choice}** "
                f"{r.describe(dev_choice)}; rank {int((trained > r.med[dev_choice]).sum()) + 1} of {len(trained)} trained"
            )
            lines += _against(r, dev_choice, r, others)
    return lines


def confirmatory(confirm: pd.DataFrame, table: pd.DataFrame, dev_choice: str) -> list[str]:
    """The pre-registered test (benchmarks/dev/PREREGISTRATION.md): the development-set choice on
    fresh seeds, against the floor and the raw baseline on the same fresh seeds and the peers'
    runs of the main table."""
    c, r = _Runs(confirm), _Runs(table)
    if dev_choice not in c.med.index:
        return [f"- no finished confirmatory run of {dev_choice} in the confirmatory table"]
    seeds = ",".join(map(str, c.seeds[dev_choice]))
    lines = [f"- **{dev_choice}** on fresh seeds {seeds}: {c.describe(dev_choice)}"]
    lines += _against(c, dev_choice, c, sorted(m for m in c.med.index if m in BASELINES), seeds_note=True)
    lines += _against(c, dev_choice, r, sorted(m for m in r.med.index if m in PEERS), seeds_note=True)
    return lines


def followups(tests: list[pd.DataFrame], names: list[str], table: pd.DataFrame, label: str = "fresh seeds") -> list[str]:
    """Later tests (PREREGISTRATION.md addenda): each table's candidate methods (all but the
    baselines) against the floor on the same seeds and the peers' runs of the main table. ``label``
    says what the seeds were (``"fresh seeds"`` for a pre-registered test)."""
    r = _Runs(table)
    peers = sorted(m for m in r.med.index if m in PEERS)
    lines = []
    for name, t in zip(names, tests):
        c = _Runs(t)
        candidates = [m for m in c.med.index if m not in BASELINES]
        if not candidates:
            lines.append(f"- `{name}`: no finished candidate runs")
            continue
        for m in candidates:
            seeds = ",".join(map(str, c.seeds[m]))
            lines.append(f"- **{m}** (`{name}`), {label} {seeds}: {c.describe(m)}")
            lines += _against(c, m, c, sorted(b for b in c.med.index if b in BASELINES), seeds_note=True)
            lines += _against(c, m, r, peers, seeds_note=True)
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mihd", type=Path, nargs="+", required=True, help="mihd evaluate results.csv file(s)")
    ap.add_argument("--peers", type=Path, nargs="+", default=[HERE.parent / "peers" / "results.csv"])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--command", default="bash benchmarks/compare/run.sh")
    ap.add_argument(
        "--dev-choice",
        default=DEV_CHOICE,
        help="the trained strategy named beforehand on the development set (benchmarks/dev/PREREGISTRATION.md), reported beside the best",
    )
    ap.add_argument(
        "--confirm",
        type=Path,
        default=None,
        help="mihd evaluate results.csv of the pre-registered confirmatory run (fresh seeds; experiment=dlpfc_confirm)",
    )
    ap.add_argument(
        "--followup",
        type=Path,
        nargs="*",
        default=[],
        help="results.csv of later pre-registered tests (PREREGISTRATION.md addenda; e.g. experiment=dlpfc_confirm_pearson)",
    )
    ap.add_argument(
        "--posthoc",
        type=Path,
        nargs="*",
        default=[],
        help="results.csv of post-hoc re-measurements on already spent seeds (reported apart; they decide nothing)",
    )
    args = ap.parse_args(argv)
    table = load(args.mihd + args.peers)
    confirm = load([args.confirm]) if args.confirm else None
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    if confirm is not None:
        atomic_write(args.out / "confirm_results.csv", lambda tmp: confirm.to_csv(tmp, index=False))
    text = summary_markdown(table, title="mihd vs GraphST and SpaGCN on DLPFC", command=args.command)
    text += "\n## Verdict (computed from the table above)\n\n" + "\n".join(verdict(table, args.dev_choice)) + "\n"
    if confirm is not None:
        text += (
            "\n## Confirmatory run (pre-registered in `benchmarks/dev/PREREGISTRATION.md`)\n\n"
            "The strategy was picked by a rule fixed before its development batch ran; it ran here on seeds that "
            "no method had run before (`mihd evaluate experiment=dlpfc_confirm`). The peers' rows are their runs "
            "of the main table.\n\n" + "\n".join(confirmatory(confirm, table, args.dev_choice)) + "\n"
        )
    sections = [
        (args.followup, "fresh seeds", "Later pre-registered tests (addenda in `benchmarks/dev/PREREGISTRATION.md`)",
         "Each candidate was screened on the development set, written down with its hypotheses and committed "
         "before it ran here, on seeds no method had run before. None changes a default unless it holds."),
        (args.posthoc, "spent seeds", "Post-hoc re-measurements (not tests)",
         "Made after a test's outcome was known, on its already spent seeds (see the addendum named in each "
         "experiment's config); they describe, and decide nothing."),
    ]
    for paths, label, heading, intro in sections:
        if paths:
            rows = followups([load([f]) for f in paths], [f.stem for f in paths], table, label=label)
            text += f"\n## {heading}\n\n{intro}\n\n" + "\n".join(rows) + "\n"
    text += (
        "\n## Baselines\n\n"
        + "\n".join(f"- `{m}`: {d}, clustered and refined exactly like every fusion" for m, d in BASELINES.items())
        + "\n\n## Provenance\n\n"
        f"- written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model()}\n"
        "- mihd rows: `mihd evaluate experiment=dlpfc_pair` (defaults of this commit; nothing chosen by ARI)\n"
        "- peer rows: `benchmarks/peers/` (own venv, tutorial defaults, scored with `mihd.metrics`); their per-run "
        "details, versions and parameters are in `benchmarks/peers/results.md`\n"
        "- wall times are on a shared 2-core machine where the peers ran beside the mihd runs: upper bounds. "
        "Several GraphST runs shared the cores with mihd runs or ran at low priority beside them (one was paused "
        "with SIGSTOP), which their wall times include; those that ran on a quiet machine took 936-1232 s. "
        "Per-run conditions are in `benchmarks/peers/results.md`\n"
    )
    write_text(args.out / "summary.md", text)
    plot_ari(table, args.out / "ari_by_method.png")
    print(text)


if __name__ == "__main__":
    main()
