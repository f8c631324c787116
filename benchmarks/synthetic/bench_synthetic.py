"""Time and peak memory of the synthetic slice generator (`mihd.datasets.synthetic_slice`) up to 10^6 cells.

Every (case, N) runs in its own Python process, one after the other, so the peak resident
set (``ru_maxrss``) is that of one generation: ``peak`` is the process's high-water mark,
``+RSS`` the peak minus the high-water mark after the imports (what generation itself
needs). Time is the wall time of the ``synthetic_slice`` call only (imports excluded).
Cases (``--cases``):

* ``cells``        -- ``layout="cells"``, ``pattern="layers"``, lowres image (the HD default),
* ``cells_hires``  -- the same plus ``pattern="mixed"`` and the uint8 hires image,
* ``bins``         -- ``layout="bins"`` (Visium HD 8 µm), ``pattern="gradient"``,
* ``hex``          -- the original Visium layout (``layout="hex"``), about 1,900 counts per spot.

All with the default 200 genes and 7 domains. A second table gives a sense of difficulty:
the adjusted Rand index of a non-spatial baseline (log-normalised counts, PCA 20, k-means
with the true number of domains) at ``--ari-n`` observations; spatial methods should beat it.

Run from the repository root (``OMP_NUM_THREADS=1`` on a shared machine)::

    OMP_NUM_THREADS=1 python benchmarks/synthetic/bench_synthetic.py                 # writes results.md
    python benchmarks/synthetic/bench_synthetic.py --n 10000 --cases cells --ari-n 0 --output -   # quick look
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_machine.py
from _machine import cpu_model  # noqa: E402

N_DOMAINS = 7
CASES = {
    "cells": {"layout": "cells", "pattern": "layers"},
    "cells_hires": {"layout": "cells", "pattern": "mixed", "hires": True},
    "bins": {"layout": "bins", "pattern": "gradient"},
    "hex": {"layout": "hex", "pattern": "layers"},
}
ACCEPTANCE = {"seconds": 60.0, "peak_mb": 4096.0}  # 10^6 cells, default genes: well under both


# --------------------------------------------------------------------------- one generation (child)


def run_child(case: str, n: int, seed: int) -> dict:
    """Generate one slice in this process and report time, memory and what was made."""
    import numpy as np

    from mihd.datasets import synthetic_slice

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    adata = synthetic_slice(n, n_domains=N_DOMAINS, seed=seed, **CASES[case])
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    X = adata.X
    images = adata.uns["spatial"]["synthetic"]["images"]
    return {
        "case": case,
        "n": n,
        "seconds": seconds,
        "peak_mb": peak_kb / 1024,
        "delta_mb": (peak_kb - base_kb) / 1024,
        "nnz_per_obs": X.nnz / adata.n_obs,
        "counts_per_obs": float(X.sum()) / adata.n_obs,
        "x_mb": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20,
        "images": {k: "x".join(map(str, np.shape(v)[:2])) + f" {np.asarray(v).dtype}" for k, v in images.items()},
    }


def measure(case: str, n: int, seed: int) -> dict:
    """Run one generation in a fresh process (so its peak RSS is its own) and parse its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, str(n), "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["load"] = os.getloadavg()[0]
    return row


# --------------------------------------------------------------------------- difficulty


def baseline_ari(n: int, seed: int) -> list[dict]:
    """Non-spatial baseline (log-normalise, PCA 20, k-means) ARI per layout and pattern."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    from mihd.datasets import synthetic_slice

    rows = []
    for layout in ("hex", "cells", "bins"):
        for pattern in ("layers", "blobs", "gradient", "mixed"):
            adata = synthetic_slice(n, n_domains=N_DOMAINS, layout=layout, pattern=pattern, image=False, seed=seed)
            X = adata.X.toarray()
            X = np.log1p(X / np.maximum(X.sum(axis=1, keepdims=True), 1) * np.median(X.sum(axis=1)))
            Z = PCA(20, random_state=0).fit_transform(X - X.mean(axis=0))
            labels = KMeans(N_DOMAINS, n_init=3, random_state=0).fit_predict(Z)
            ari = adjusted_rand_score(adata.obs["ground_truth"].to_numpy(), labels)
            rows.append({"layout": layout, "pattern": pattern, "ari": ari})
            print(f"baseline ARI {layout:5s} {pattern:8s} {ari:.3f}", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, str]:
    from importlib.metadata import version

    import numpy as np
    import scipy

    cpu = cpu_model()
    # Not `nproc`: it reports OMP_NUM_THREADS when that is set.
    nproc = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    return {
        "nproc": nproc,
        "cpu": cpu,
        "mem": f"{mem_gib:.0f} GiB",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "anndata": version("anndata"),
        "omp": os.environ.get("OMP_NUM_THREADS", "unset"),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def render(rows: list[dict], ari_rows: list[dict], info: dict, args: argparse.Namespace, loads: tuple) -> str:
    command = (
        f"OMP_NUM_THREADS={info['omp']} python benchmarks/synthetic/bench_synthetic.py"
        f" --n {' '.join(map(str, args.n))} --cases {' '.join(args.cases)} --ari-n {args.ari_n} --seed {args.seed}"
    )
    lines = [
        "# Synthetic slice generator: time and memory",
        "",
        f"- machine: {info['nproc']} cores, {info['cpu']}, {info['mem']} RAM (shared with other jobs)",
        f"- python {info['python']}, numpy {info['numpy']}, scipy {info['scipy']}, anndata {info['anndata']};"
        f" OMP_NUM_THREADS={info['omp']}",
        f"- date: {info['date']}",
        f"- load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f}"
        " (2.0 = both cores busy; other jobs on the same cores slow every number below)",
        f"- rerun: `{command}`",
        "- each row is its own process: `s` = wall time of the `synthetic_slice` call, `peak` = the process's"
        " ru_maxrss, `+RSS` = peak minus the high-water mark after the imports; `X MB` = the CSR buffers",
        "",
        "Cases: `cells` = `layout=\"cells\"` (Xenium-like, ~10 µm apart), layers, lowres image; `cells_hires` ="
        " cells, `pattern=\"mixed\"`, plus the uint8 hires image; `bins` = Visium HD 8 µm bins, gradient;"
        " `hex` = the original Visium layout with its dense counts (~1,900 per spot). Default 200 genes, 7 domains.",
        "",
        "| case | N | s | peak RSS MB | +RSS MB | X MB | nnz / obs | counts / obs | images | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        images = ", ".join(f"{k} {v}" for k, v in r["images"].items())
        lines.append(
            f"| {r['case']} | {r['n']:,} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['delta_mb']:.0f} |"
            f" {r['x_mb']:.0f} | {r['nnz_per_obs']:.1f} | {r['counts_per_obs']:.1f} | {images} | {r['load']:.1f} |"
        )
    big = [r for r in rows if r["n"] >= 1_000_000]
    if big:
        worst_t = max(big, key=lambda r: r["seconds"])
        worst_m = max(big, key=lambda r: r["peak_mb"])
        met = worst_t["seconds"] < ACCEPTANCE["seconds"] and worst_m["peak_mb"] < ACCEPTANCE["peak_mb"]
        lines += [
            "",
            f"Acceptance (10^6 observations, default genes: under {ACCEPTANCE['seconds']:.0f} s and"
            f" {ACCEPTANCE['peak_mb'] / 1024:.0f} GiB peak): {'met' if met else 'NOT met'}; slowest"
            f" {worst_t['seconds']:.1f} s ({worst_t['case']}),"
            f" largest peak {worst_m['peak_mb']:.0f} MB ({worst_m['case']}).",
        ]
    if ari_rows:
        patterns = list(dict.fromkeys(r["pattern"] for r in ari_rows))
        lines += [
            "",
            f"## Difficulty: non-spatial baseline ARI at {args.ari_n:,} observations",
            "",
            "Log-normalised counts, PCA 20, k-means with the true 7 domains, no coordinates. 1.0 means the domains"
            " are trivially separable from expression alone; the HD layouts mix cell types (15% of cells, 30% of"
            " bins express another domain's program) and add 3 shared smooth programs, so they are not. k-means"
            " prefers equal-sized clusters, so `blobs` (one large background domain) scores low even where the"
            " expression is separable (hex).",
            "",
            "| layout | " + " | ".join(patterns) + " |",
            "|---|" + "---:|" * len(patterns),
        ]
        for layout in dict.fromkeys(r["layout"] for r in ari_rows):
            vals = {r["pattern"]: r["ari"] for r in ari_rows if r["layout"] == layout}
            lines.append(f"| {layout} | " + " | ".join(f"{vals[p]:.3f}" for p in patterns) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--ari-n", type=int, default=20_000, help="observations for the difficulty table; 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        default=str(Path(__file__).with_name("results.md")),
        help="markdown file to write; '-' prints to stdout only",
    )
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), args.seed)))
        return

    load_start = os.getloadavg()[0]
    rows = []
    for case in args.cases:
        for n in args.n:
            row = measure(case, n, args.seed)  # one at a time: never two large generations at once
            rows.append(row)
            print(
                f"{case:11s} N={n:>9,} {row['seconds']:7.2f} s  peak {row['peak_mb']:6.0f} MB"
                f" (+{row['delta_mb']:.0f})  X {row['x_mb']:.0f} MB  load {row['load']:.1f}",
                flush=True,
            )
    ari_rows = baseline_ari(args.ari_n, args.seed) if args.ari_n else []
    report = render(rows, ari_rows, machine_info(), args, (load_start, os.getloadavg()[0]))
    if args.output == "-":
        print(report)
    else:
        Path(args.output).write_text(report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
