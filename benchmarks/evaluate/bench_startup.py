"""Start-up cost of ``mihd evaluate`` on many small runs (issue 17, item 8).

Writes 8 small synthetic ``.h5ad`` slices (``mihd.datasets.synthetic_slice``, one seed each),
then times ``mihd evaluate`` over them x 4 fusions x 1 seed from the command line, as a user
runs it, with its own empty cache and output folder. Prints the total wall time, the time
spent inside the runs (``wall_seconds`` of ``results.csv``, summed) and the overhead per run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate/bench_startup.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate/bench_startup.py -- launcher.reuse=false

Arguments after ``--`` are passed to ``mihd evaluate`` (e.g. a launcher option).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUSIONS = ("genes_only", "concat", "mean", "gnn")


def write_slices(folder: Path, n_slices: int, n_spots: int, n_domains: int) -> list[Path]:
    """``n_slices`` synthetic slices (counts, coordinates, truth; no image), one h5ad each."""
    from mihd.datasets import synthetic_slice

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_slices):
        adata = synthetic_slice(n_spots, n_genes=200, n_domains=n_domains, image=False, seed=i)
        path = folder / f"small_{i}.h5ad"
        adata.write_h5ad(path)
        paths.append(path)
    return paths


def evaluate_command(paths: list[Path], out_dir: Path, n_domains: int, fusions, extra: list[str]) -> list[str]:
    slices = ",".join(f"{{data:h5ad,name:{p.stem},path:'{p}',n_domains:{n_domains}}}" for p in paths)
    return [str(Path(sys.executable).with_name("mihd")), "evaluate", f"slices=[{slices}]",
            f"fusions=[{','.join(fusions)}]", "seeds=[0]", f"out_dir={out_dir}", "trainer=fast", *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--spots", type=int, default=600)
    parser.add_argument("--domains", type=int, default=4)
    parser.add_argument("--fusions", nargs="+", default=list(FUSIONS))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("extra", nargs="*", help="options for mihd evaluate (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mihd_bench_startup_") as tmp:
        work = args.workdir or Path(tmp)
        paths = write_slices(work / "slices", args.slices, args.spots, args.domains)
        out_dir = work / f"ev_{time.strftime('%H%M%S')}"
        env = {**os.environ, "MIHD_CACHE_DIR": str(out_dir / "cache")}
        cmd = evaluate_command(paths, out_dir, args.domains, args.fusions, args.extra)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode

        import pandas as pd

        table = pd.read_csv(out_dir / "results.csv")
        n, in_runs = len(table), float(table["wall_seconds"].sum())
        print(f"mihd evaluate: {args.slices} slices x {len(args.fusions)} fusions x 1 seed = {n} runs "
              f"({(table['status'] == 'ok').sum()} ok), {args.spots} spots each, options {args.extra or '(none)'}")
        print(f"total wall {wall:.1f} s; inside the runs {in_runs:.1f} s; overhead {(wall - in_runs) / n:.2f} s per run")
        print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
