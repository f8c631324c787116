"""Planned runs, in whatever process a launcher gives them.

``python -m mihd.evaluate._worker spec.json`` runs one; ``python -m mihd.evaluate._worker --serve
OUT_DIR`` (the local launcher) imports once and then runs spec after spec, read from stdin one
path per line, answering each with one JSON line on stdout, so the 5-15 s of imports and compiles
are paid once per worker, not once per run.

The run folder is locked while the run is in flight (``fcntl.flock``, released by the OS when
the process dies), so a rerun never runs a plan entry twice at once; ``metrics.json``, written
last and atomically, marks it finished, and a finished run is never recomputed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

__all__ = ["run_one", "serve", "write_spec"]


def write_spec(run, path: Path | None = None) -> Path:
    """Write the run's resolved config and identity to ``<run_dir>/spec.json`` (atomically)."""
    from .._io import write_json

    path = path or run.run_dir / "spec.json"
    write_json(path, {**run.describe(), "config": run.config})
    return path


@contextlib.contextmanager
def _run_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock, rely on metrics.json
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # waits for a leftover process still running this run
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _limit_threads(threads: int | None) -> None:
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    if "numba" in sys.modules:
        # In-process runs (workers=1 through joblib): numba has launched its pool already, and a
        # NUMBA_NUM_THREADS that differs from it makes numba's next config reload raise.
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    else:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(int(threads))


def run_one(spec_path: str | os.PathLike, threads: int | None = None) -> dict:
    """Run the planned run described by ``spec_path`` unless it already finished.

    Returns ``{"run_id", "status": "done" | "skipped" | "failed", "error"?}``; a failure is
    recorded in ``<run_dir>/error.json`` (with the traceback) instead of raised, so one bad
    run does not stop the others.
    """
    from .._io import write_json

    spec = json.loads(Path(spec_path).read_text())
    run_dir = Path(spec["config"]["run_dir"])
    _limit_threads(threads)
    with _run_lock(run_dir / ".lock"):
        if (run_dir / "metrics.json").is_file():
            return {"run_id": spec["run_id"], "status": "skipped"}
        with contextlib.suppress(FileNotFoundError):
            (run_dir / "error.json").unlink()
        t0 = time.time()
        try:
            from omegaconf import OmegaConf

            from ..train import train

            train(OmegaConf.create(spec["config"]), progress=False)
        except Exception as err:  # recorded for the report; the plan goes on
            error = f"{type(err).__name__}: {err}"
            write_json(
                run_dir / "error.json",
                {"run_id": spec["run_id"], "key": spec["key"], "error": error, "traceback": traceback.format_exc(),
                 "seconds": round(time.time() - t0, 2)},
            )
            return {"run_id": spec["run_id"], "status": "failed", "error": error}
    return {"run_id": spec["run_id"], "status": "done"}


def _reset_peak_memory() -> None:
    """Linux: restart the process's peak-RSS count, so a reused worker reports each run's own peak."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


@contextlib.contextmanager
def _output_to(path: Path, idle_fd: int):
    """Send this process's stdout and stderr (fds 1 and 2, so C libraries too) to ``path``; back to ``idle_fd`` after."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(idle_fd, 1)
        os.dup2(idle_fd, 2)
        os.close(fd)


def serve(out_dir: str | os.PathLike, threads: int | None = None) -> int:
    """Run the specs named on stdin, one path per line, one after the other.

    Each run's output goes to its ``<run_dir>/run.log`` (headed by this worker's pid and how
    many runs it has served); output between runs to ``<out_dir>/workers.log``. After each run
    one JSON line (`run_one`'s answer plus ``"pid"``) goes to the original stdout. Returns 0
    at the end of the input (the launcher closing the pipe, or dying).
    """
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    idle = os.open(Path(out_dir) / "workers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(idle, 1)
    os.dup2(idle, 2)
    _limit_threads(threads)
    from ..train import train  # noqa: F401 - the heavy imports, once, before the first run arrives

    served = 0
    for line in sys.stdin:
        spec = line.strip()
        if not spec:
            continue
        served += 1
        with _output_to(Path(spec).parent / "run.log", idle):
            print(f"mihd evaluate worker pid {os.getpid()}: run {served} of this process", flush=True)
            _reset_peak_memory()
            try:
                out = run_one(spec, threads)
            except Exception as err:  # an unreadable spec: that run fails, the worker goes on
                traceback.print_exc()
                out = {"run_id": Path(spec).parent.name, "status": "failed", "error": f"{type(err).__name__}: {err}"}
            gc.collect()  # the run's arrays go before the next run's peak is counted
        channel.write(json.dumps({**out, "pid": os.getpid()}) + "\n")
    return 0


def main(argv: list[str]) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m mihd.evaluate._worker")
    parser.add_argument("spec", nargs="?", help="run this one spec.json and exit")
    parser.add_argument("--serve", metavar="OUT_DIR", help="run the specs named on stdin (the evaluation in OUT_DIR)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if (args.spec is None) == (args.serve is None):
        parser.error("give either a spec.json or --serve OUT_DIR")
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 3  # the evaluation that started us is already gone: do not run orphaned
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    if args.serve is not None:
        return serve(args.serve, args.threads)
    out = run_one(args.spec, args.threads)
    print(json.dumps(out))
    return 1 if out["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
