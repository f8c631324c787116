"""ARI of `mihd train` on the bundled slice over seeds, per fusion, with wall time.

Rerun (the full table: every registered fusion, 3 seeds, bundled 151673 and 151674):
    OMP_NUM_THREADS=1 python benchmarks/train/bench_train.py --fusions all --seeds 0 1 2 \
        --slices bundled dlpfc_151674:../shared/data/dlpfc/151674:7
Appends a dated section per slice to benchmarks/train/results.md (replaced atomically).
Ground truth is read only by the scoring inside `train`; nothing here selects by it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_slice(spec: str, fusions: list[str], args, compose) -> str:
    """Train every fusion x seed on one slice; return its Markdown section."""
    from mihd.train import train

    if spec == "bundled":
        name, slice_overrides = "bundled DLPFC 151673", []
    else:
        try:
            label, path, k = spec.split(":")
        except ValueError:
            raise SystemExit(f"--slices {spec!r}: use 'bundled' or NAME:PATH:K") from None
        name = label
        slice_overrides = [f"data=visium", f"data.name={label}", f"data.path={path}", "data.annotation=truth.tsv", f"data.n_domains={k}"]

    load_at_start = os.getloadavg()[0]
    rows = []
    for fusion in fusions:
        for seed in args.seeds:
            cfg = compose("train", [f"fusion={fusion}", f"seed={seed}", "trainer.progress_bar=false", *slice_overrides, *args.overrides])
            t0 = time.perf_counter()
            res = train(cfg, write=False)
            wall = time.perf_counter() - t0
            s = res.metrics["scores"]
            rows.append((fusion, seed, s["before_refinement"]["ari"], s["after_refinement"]["ari"], s["after_refinement"]["nmi"], wall))
            print(f"{fusion:<18} seed={seed}  ARI {rows[-1][2]:.3f} -> {rows[-1][3]:.3f}  NMI {rows[-1][4]:.3f}  {wall:.1f} s", flush=True)

    cmd = "OMP_NUM_THREADS=1 python benchmarks/train/bench_train.py " + " ".join(
        ["--fusions", *args.fusions, "--seeds", *map(str, args.seeds), "--slices", *args.slices]
        + (["--overrides", *args.overrides] if args.overrides else [])
    )
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    lines = [
        f"## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — {name}",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}; load average at start "
        f"{load_at_start:.1f} (other processes share the 2 cores, so wall times are upper bounds). Wall time includes reading, preprocessing (cached after the first run), training, clustering, refinement.",
        "",
        "| fusion | seed | ARI before refine | ARI after refine | NMI after | wall s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {f} | {s} | {a:.3f} | {b:.3f} | {n:.3f} | {w:.1f} |" for f, s, a, b, n, w in rows]
    lines += ["", "| fusion | ARI after refine, mean ± sd | NMI after, mean | wall s, mean |", "|---|---|---|---|"]
    for fusion in fusions:
        sel = [r for r in rows if r[0] == fusion]
        ari = [r[3] for r in sel]
        sd = statistics.stdev(ari) if len(ari) > 1 else 0.0
        lines.append(
            f"| {fusion} | {statistics.mean(ari):.3f} ± {sd:.3f} (n={len(ari)}) | "
            f"{statistics.mean(r[4] for r in sel):.3f} | {statistics.mean(r[5] for r in sel):.1f} |"
        )
    return "\n".join(lines) + "\n\n"



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fusions", nargs="+", default=["adaln_attention"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument(
        "--slices", nargs="+", default=["bundled"],
        help="'bundled' or NAME:PATH:K for a Space Ranger folder with truth.tsv (K domains)",
    )
    ap.add_argument("--out", default=str(HERE / "results.md"))
    args = ap.parse_args()

    from mihd.cli import compose
    from mihd.fusion import list_fusions

    fusions = list_fusions() if args.fusions == ["all"] else args.fusions
    sections = [run_slice(spec, fusions, args, compose) for spec in args.slices]
    section = "".join(sections)

    out = Path(args.out)
    old = out.read_text() if out.exists() else "# `mihd train` accuracy on the bundled slice\n\n"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(old + section)
    os.replace(tmp, out)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
