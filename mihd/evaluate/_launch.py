"""Launchers: where the runs of a plan execute (``launcher=local | joblib | slurm``).

Each takes the runs still to do, each with its ``spec.json`` written, and calls
``on_done(run, outcome)`` as runs finish, in the parent process. All of them are
safe to kill at any moment: a run is finished only once its ``metrics.json`` exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["launch", "LAUNCHERS", "threads_per_worker"]

OnDone = Callable[[object, dict], None]


def threads_per_worker(launcher: dict) -> int:
    """Torch / BLAS threads per run: ``auto`` shares the CPU cores among the workers, and never
    exceeds a thread count the user set in ``OMP_NUM_THREADS`` (which is honoured, not replaced)."""
    value = launcher.get("threads_per_worker", "auto")
    if value in (None, "auto"):
        if launcher.get("name") == "slurm":
            return max(1, int(launcher.get("cpus_per_task") or 1))
        share = max(1, (os.cpu_count() or 1) // max(1, int(launcher.get("workers", 1))))
        user = os.environ.get("OMP_NUM_THREADS", "")
        return min(share, int(user)) if user.isdigit() and int(user) >= 1 else share
    return max(1, int(value))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the run process gets SIGKILL when mihd evaluate dies, so no orphan keeps computing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Worker:
    """One ``python -m mihd.evaluate._worker --serve`` process, started from this (main) thread so
    its death signal follows the evaluation; it runs the specs written to its stdin one at a time."""

    def __init__(self, out_dir: Path, threads: int, env: dict, answers: queue.Queue):
        cmd = [sys.executable, "-m", "mihd.evaluate._worker", "--serve", str(out_dir), "--threads", str(threads),
               "--parent-pid", str(os.getpid())]
        with open(out_dir / "workers.log", "ab") as log_file:  # anything said before the worker takes over its output
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env, text=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.run, self.served = None, 0
        threading.Thread(target=self._read, args=(answers,), daemon=True).start()

    def _read(self, answers: queue.Queue) -> None:
        try:
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError):  # only the worker's JSON answers reach this pipe
                    answers.put((self, json.loads(line)))
        finally:
            answers.put((self, None))  # end of output: the process is gone

    def send(self, run) -> None:
        self.run, self.served = run, self.served + 1
        try:
            self.proc.stdin.write(f"{run.run_dir / 'spec.json'}\n")
            self.proc.stdin.flush()
        except OSError:  # already dead; its end-of-output answer fails the run
            pass

    def retire(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # end of input: it exits after the run in flight


def _launch_local(runs, launcher: dict, on_done: OnDone, *, out_dir: Path) -> None:
    """Runs in ``workers`` local worker processes, each importing once and serving runs one at a time.

    A worker serves ``runs_per_worker`` runs (0: no limit; 1: a fresh process per run) before
    a fresh one replaces it. A worker that dies (killed, out of memory) fails its run in flight
    only; the next run goes to a fresh worker. Each run's output goes to ``<run_dir>/run.log``.
    """
    n_workers = max(1, int(launcher.get("workers", 1)))
    per_worker = max(0, int(launcher.get("runs_per_worker") or 0))
    threads = threads_per_worker(launcher)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    todo, answers = deque(runs), queue.Queue()
    idle: list[_Worker] = []
    busy: set[_Worker] = set()
    retired: list[_Worker] = []
    try:
        while todo or busy:
            while todo and len(busy) < n_workers:
                worker = idle.pop() if idle else _Worker(out_dir, threads, env, answers)
                run = todo.popleft()
                run.run_dir.mkdir(parents=True, exist_ok=True)
                worker.send(run)
                busy.add(worker)
            worker, answer = answers.get()
            retired = [w for w in retired if w.proc.poll() is None]  # reap the ones that exited
            if worker not in busy:  # a retired or idle worker ending: nothing was in flight
                if worker in idle:
                    idle.remove(worker)
                continue
            busy.discard(worker)
            run = worker.run
            if answer is None:
                code = worker.proc.wait()
                outcome = {"status": "failed", "returncode": code}
                if not (run.run_dir / "error.json").exists():
                    # Killed (e.g. out of memory) before it could record its own error.
                    outcome["error"] = (f"the run process exited with code {code}; see {run.run_dir / 'run.log'} "
                                        f"(and {out_dir / 'workers.log'})")
            else:
                outcome = answer
                if per_worker and worker.served >= per_worker:
                    worker.retire()
                    retired.append(worker)
                else:
                    idle.append(worker)
            on_done(run, outcome)
    finally:
        for worker in idle:
            worker.retire()
        for worker in busy:
            worker.proc.kill()
        for worker in [*idle, *busy, *retired]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=30)


def _launch_joblib(runs, launcher: dict, on_done: OnDone) -> None:
    """joblib's loky process pool (workers are reused between runs)."""
    from joblib import Parallel, delayed, parallel_config

    from ._worker import run_one

    workers = max(1, int(launcher.get("workers", 1)))
    threads = threads_per_worker(launcher)
    by_id = {r.run_id: r for r in runs}
    with parallel_config(backend="loky", inner_max_num_threads=threads):
        results = Parallel(n_jobs=workers, return_as="generator_unordered")(
            delayed(run_one)(str(r.run_dir / "spec.json"), threads) for r in runs
        )
        for out in results:
            on_done(by_id[out["run_id"]], out)


def _launch_slurm(runs, launcher: dict, on_done: OnDone, *, out_dir: Path) -> None:
    """One job per run through submitit, submitted as an array (``cluster: local`` for a dry run)."""
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "launcher=slurm needs submitit: pip install 'mihd[slurm]' (or pip install submitit)."
        ) from None
    from ._worker import run_one

    cluster = launcher.get("cluster", "slurm")
    executor = submitit.AutoExecutor(folder=str(out_dir / "submitit" / "%j"), cluster=cluster)
    params = {
        "timeout_min": int(launcher.get("timeout_min", 60)),
        "cpus_per_task": int(launcher.get("cpus_per_task", 4)),
        "mem_gb": launcher.get("mem_gb"),
        "gpus_per_node": int(launcher.get("gpus_per_node", 0)),
        "name": "mihd-evaluate",
    }
    if cluster == "slurm":
        params["slurm_array_parallelism"] = int(launcher.get("workers", 16))
        if launcher.get("partition"):
            params["slurm_partition"] = launcher["partition"]
        if launcher.get("additional_parameters"):
            params["slurm_additional_parameters"] = dict(launcher["additional_parameters"])
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    threads = threads_per_worker(launcher)
    jobs = executor.map_array(run_one, [str(r.run_dir / "spec.json") for r in runs], [threads] * len(runs))
    log.info("submitted %d runs (%s job ids %s..%s)", len(jobs), cluster, jobs[0].job_id, jobs[-1].job_id)
    pending = dict(zip(jobs, runs))
    while pending:
        time.sleep(0.5)
        for job in [j for j in pending if j.done()]:
            run = pending.pop(job)
            try:
                out = job.result()
            except Exception as err:  # the job itself died (timeout, node failure, cancelled)
                out = {"status": "failed", "error": f"{cluster} job {job.job_id}: {type(err).__name__}: {err}"}
            on_done(run, out)


LAUNCHERS = {"local": _launch_local, "joblib": _launch_joblib, "slurm": _launch_slurm}


def launch(runs, launcher: dict, on_done: OnDone, *, out_dir: Path) -> None:
    """Run ``runs`` with the launcher config ``launcher`` (its ``name`` picks the launcher)."""
    name = launcher.get("name", "local")
    if name not in LAUNCHERS:
        raise ValueError(f"launcher={name!r} is unknown; use one of {', '.join(LAUNCHERS)}.")
    if not runs:
        return
    if name == "joblib":
        _launch_joblib(runs, launcher, on_done)
    else:
        LAUNCHERS[name](runs, launcher, on_done, out_dir=out_dir)
