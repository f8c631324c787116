"""One planned run, in whatever process a launcher gives it: ``python -m mihd.evaluate._worker spec.json``.

The run folder is locked while the run is in flight (``fcntl.flock``, released by the OS when
the process dies), so a rerun never runs a plan entry twice at once; ``metrics.json``, written
last and atomically, marks it finished, and a finished run is never recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

__all__ = ["run_one", "write_spec"]


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
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
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


def main(argv: list[str]) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m mihd.evaluate._worker")
    parser.add_argument("spec")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 3  # the evaluation that started us is already gone: do not run orphaned
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    out = run_one(args.spec, args.threads)
    print(json.dumps(out))
    return 1 if out["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
