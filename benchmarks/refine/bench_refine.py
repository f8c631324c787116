"""Speed and memory of spatial label refinement (`mihd.refine_labels`) up to 10^6 cells.

Synthetic slices: uniform random points and a jittered hexagonal lattice (Visium-like),
both at unit density, labelled with 7 banded domains with wavy borders, 10% of the
labels flipped at random. For every layout x N x k x engine it times

* ``knn``   -- `mihd.graph.knn_indices` (self + k nearest),
* ``vote``  -- `mihd.refine.majority_vote` on those indices,
* ``total`` -- `mihd.refine_labels` end to end (search, label encoding, vote, decoding),

each the best of ``--repeats`` runs after a warm-up (numba compile excluded; the cold
compile time is measured once, in a subprocess with an empty numba cache, and reported
on its own line). Peak memory is the resident set (RSS) high-water mark of this process
during one ``refine_labels`` call: ``VmHWM`` from ``/proc/self/status``, reset before
the call by writing ``5`` to ``/proc/self/clear_refs``. Where that reset is not allowed
the script says so and reports the process-lifetime peak (``resource.getrusage``).

Run from the repository root::

    python benchmarks/refine/bench_refine.py                       # full grid, writes results.md
    python benchmarks/refine/bench_refine.py --n 10000 --k 6 --repeats 1 --output -   # quick look
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_machine.py
from _machine import cpu_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from mihd.graph import knn_indices  # noqa: E402
from mihd.refine import majority_vote, refine_labels  # noqa: E402

N_DOMAINS = 7
FLIP_FRACTION = 0.10
ACCEPTANCE_SECONDS = 3.0


# --------------------------------------------------------------------------- data


def make_layout(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points at unit density: uniform random, or a hex lattice jittered by 10% of its pitch."""
    if kind == "random":
        side = np.sqrt(n)
        return rng.random((n, 2)) * side
    if kind == "hex":
        pitch = np.sqrt(2 / np.sqrt(3))  # unit density
        cols = int(np.ceil(np.sqrt(n * 2 / np.sqrt(3))))
        rows = int(np.ceil(n / cols))
        r, c = np.divmod(np.arange(n), cols)
        x = (c + 0.5 * (r % 2)) * pitch
        y = r * pitch * np.sqrt(3) / 2
        return np.column_stack([x, y]) + rng.normal(0.0, 0.1 * pitch, (n, 2))
    raise ValueError(f"unknown layout {kind!r}; use random or hex")


def make_labels(coords: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """7 bands with wavy borders (truth) and a copy with 10% of labels flipped to another domain."""
    x, y = coords[:, 0], coords[:, 1]
    span = max(np.ptp(x), np.ptp(y), 1.0)
    t = y + 0.05 * span * np.sin(2 * np.pi * x / span * 3)
    truth = np.minimum(((t - t.min()) / (np.ptp(t) + 1e-12) * N_DOMAINS).astype(np.int64), N_DOMAINS - 1)
    noisy = truth.copy()
    flip = rng.random(len(noisy)) < FLIP_FRACTION
    noisy[flip] = (noisy[flip] + rng.integers(1, N_DOMAINS, flip.sum())) % N_DOMAINS
    return truth, noisy


# --------------------------------------------------------------------------- measuring


def best_time(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    # glibc keeps freed blocks (and raises its mmap threshold after large frees), so
    # without this the RSS before a call already includes memory the call will reuse
    # and the measured increase is too small.
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn) -> tuple[float, float]:
    """(peak RSS during fn, peak minus RSS just before fn), in MB."""
    _release_free_memory()
    if _can_reset_peak():
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
    else:  # lifetime peak only; the delta is then a lower bound
        before = _status_kb("VmRSS")
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024, (peak - before) / 1024


def cold_compile_seconds() -> float:
    """First grid kNN + vote in a fresh interpreter with an empty numba cache."""
    code = (
        "import time, numpy as np;"
        "from mihd.graph import knn_indices; from mihd.refine import majority_vote;"
        "pts = np.random.default_rng(0).random((2000, 2));"
        "t = time.perf_counter();"
        "idx = knn_indices(pts, 6, engine='grid'); majority_vote(idx, np.arange(2000) % 7);"
        "print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO_ROOT))
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def warm_up(engines: list[str], k_values: list[int]) -> None:
    pts = np.random.default_rng(0).random((5000, 2))
    for engine in engines:
        for k in k_values:
            refine_labels(pts, np.arange(len(pts)) % N_DOMAINS, n_neighbors=k, engine=engine)


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, str]:
    import numba
    import scipy

    cpu = cpu_model()
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    return {
        "nproc": nproc,
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def render(
    rows: list[dict], info: dict, args: argparse.Namespace, compile_s: float, loads: tuple, mem_note: str
) -> str:
    command = "python benchmarks/refine/bench_refine.py " + " ".join(
        [
            "--n " + " ".join(map(str, args.n)),
            "--k " + " ".join(map(str, args.k)),
            "--engine " + " ".join(args.engine),
            "--layout " + " ".join(args.layout),
            f"--repeats {args.repeats}",
        ]
    )
    lines = [
        "# Spatial label refinement: speed and memory",
        "",
        f"- machine: {info['nproc']} cores (`nproc`), {info['cpu']}",
        f"- python {info['python']}, numpy {info['numpy']}, scipy {info['scipy']}, numba {info['numba']}",
        f"- date: {info['date']}",
        f"- load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f}"
        " (other jobs running on the same cores slow every number below)",
        f"- rerun: `{command}`",
        f"- numba cold compile (first grid kNN + vote, empty cache, own process): {compile_s:.1f} s;"
        " later processes load the cached machine code in well under a second",
        f"- peak memory: {mem_note}",
        "",
        "Times are the best of the repeats, in seconds, compile excluded. `knn` = `knn_indices`"
        " (self + k nearest), `vote` = `majority_vote` on those indices, `total` = `refine_labels`"
        " end to end. `accuracy` = fraction of spots matching the 7 true domains before -> after"
        " refinement (10% of labels were flipped). `load` = 1-minute load average after the row"
        " (2.0 = both cores busy); the three timings of a row are interleaved repeats.",
        "",
        "| layout | N | k | engine | knn s | vote s | total s | peak RSS MB | +RSS MB | accuracy | load |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['n']:,} | {r['k']} | {r['engine']} | {r['knn']:.3f} | {r['vote']:.3f} |"
            f" {r['total']:.3f} | {r['peak']:.0f} | {r['delta']:.0f} | {r['acc_before']:.3f} -> {r['acc_after']:.3f} |"
            f" {r['load']:.1f} |"
        )
    big = [r for r in rows if r["n"] >= 1_000_000 and r["engine"] in ("grid", "auto")]
    if big:
        worst = max(big, key=lambda r: r["total"])
        verdict = "met" if worst["total"] < ACCEPTANCE_SECONDS else "NOT met"
        lines += [
            "",
            f"Acceptance (10^6 cells, k up to {max(r['k'] for r in big)}, total < {ACCEPTANCE_SECONDS:.0f} s):"
            f" {verdict}; slowest grid run {worst['total']:.2f} s ({worst['layout']}, k = {worst['k']}).",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--k", type=int, nargs="+", default=[6, 18, 50])
    parser.add_argument("--engine", nargs="+", default=["grid", "kdtree"], choices=["grid", "kdtree", "auto"])
    parser.add_argument("--layout", nargs="+", default=["random", "hex"], choices=["random", "hex"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output",
        default=str(Path(__file__).with_name("results.md")),
        help="markdown file to write; '-' prints to stdout only",
    )
    args = parser.parse_args(argv)

    load_start = os.getloadavg()[0]
    compile_s = cold_compile_seconds()
    print(f"numba cold compile: {compile_s:.1f} s", flush=True)
    warm_up(args.engine, args.k)
    mem_note = (
        "VmHWM of this process during one `refine_labels` call, reset via /proc/self/clear_refs"
        " after returning freed memory to the OS (malloc_trim); +RSS = peak minus RSS just before the"
        " call, i.e. what refinement itself needs on top of its inputs"
        if _can_reset_peak()
        else "process-lifetime ru_maxrss (the VmHWM reset was not allowed here); +RSS is a lower bound"
    )

    rows = []
    rng = np.random.default_rng(args.seed)
    for layout in args.layout:
        for n in args.n:
            coords = make_layout(layout, n, rng)
            truth, noisy = make_labels(coords, rng)
            for k in args.k:
                for engine in args.engine:
                    def refine():
                        return refine_labels(coords, noisy, n_neighbors=k, engine=engine)

                    idx = knn_indices(coords, k, engine=engine)
                    refined = refine()
                    # Interleaved repeats: a burst of load from other jobs then hits all
                    # three timings alike instead of one of them.
                    t_knn = t_vote = t_total = np.inf
                    for _ in range(args.repeats):
                        t_knn = min(t_knn, best_time(lambda: knn_indices(coords, k, engine=engine), 1))
                        t_vote = min(t_vote, best_time(lambda: majority_vote(idx, noisy, n_codes=N_DOMAINS), 1))
                        t_total = min(t_total, best_time(refine, 1))
                    del idx
                    peak, delta = peak_memory_mb(refine)
                    row = {
                        "layout": layout,
                        "n": n,
                        "k": k,
                        "engine": engine,
                        "knn": t_knn,
                        "vote": t_vote,
                        "total": t_total,
                        "peak": peak,
                        "delta": delta,
                        "acc_before": float((noisy == truth).mean()),
                        "acc_after": float((refined == truth).mean()),
                        "load": os.getloadavg()[0],
                    }
                    rows.append(row)
                    print(
                        f"{layout:6s} N={n:>9,} k={k:>3} {engine:6s} knn {t_knn:7.3f}s vote {t_vote:6.3f}s"
                        f" total {t_total:7.3f}s peak {peak:7.0f} MB (+{delta:.0f})",
                        flush=True,
                    )
    report = render(rows, machine_info(), args, compile_s, (load_start, os.getloadavg()[0]), mem_note)
    if args.output == "-":
        print(report)
    else:
        Path(args.output).write_text(report)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
