"""Wall time and peak memory vs N for the HD path: graph build, refine, one training epoch,
clustering, and `mihd train` end to end on a synthetic slice.

Every (stage, N) runs in its own Python process, so each peak is that stage's own:
``peak_rss_mib`` is the process's resident high-water mark (``ru_maxrss`` read through
``os.wait4`` for the end-to-end run), ``base_rss_mib`` the resident size just before the
timed stage began (imports and inputs), so ``peak - base`` is what the stage itself added.

Inputs per stage (generated, seeded):

* ``graph``   -- uniform random coordinates at unit density; `mihd.graph.knn_indices` (k=6, self
  included) then `build_spatial_graph` (sparse CSR, symmetric).
* ``refine``  -- the same coordinates, 7 banded labels with 10 % flipped; `refine_labels` (k=6).
* ``epoch``   -- one epoch of the ``gnn`` fusion through the Lightning runner pieces
  (gene 30 + image 27 features, k=6 neighbourhoods, batch 4096).
* ``cluster`` -- a 16-dimensional embedding with 7 Gaussian blobs; ``cluster_embedding`` gmm with
  its defaults (fit on 2 x 10^5 sampled cells above that, then assignment).
* ``trend``   -- the same embedding on banded coordinates (uniform random points), plus a linear drift in
  x; `gmm_spatial_trend` started at the plain gmm partition (its EM on 2 x 10^5 sampled cells, assignment
  and the 6-NN coherence guard on all N).
* ``e2e``     -- ``mihd train fusion=gnn data=synthetic data.n_cells=N trainer=hd`` (generation,
  features, training, clustering, refinement, scoring and writing the run folder).

Run from the repository root (writes benchmarks/scale/results.md)::

    OMP_NUM_THREADS=1 python benchmarks/scale/bench_scale.py --n 10000 100000 1000000
    python benchmarks/scale/bench_scale.py --n 10000 --stages graph refine --output -   # quick look
    python benchmarks/scale/bench_scale.py --device cuda --n 1000000 10000000 --stages graph refine epoch
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
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_machine.py
from _machine import cpu_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1].parent
STAGES = ("graph", "refine", "epoch", "cluster", "trend", "e2e")


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _coords(n: int, seed: int = 0) -> np.ndarray:
    side = np.sqrt(n)
    return np.random.default_rng(seed).uniform(0, side, size=(n, 2))


def _child(stage: str, n: int, device: str) -> dict:
    """Run one stage at size n in this process; return its timings and memory."""
    out: dict = {}
    if stage in ("graph", "refine"):
        from mihd.graph import build_spatial_graph, knn_indices
        from mihd.refine import refine_labels

        xy = _coords(n)
        labels = np.minimum((xy[:, 1] / np.sqrt(n) * 7).astype(np.int64), 6)
        flip = np.random.default_rng(1).random(n) < 0.1
        labels[flip] = np.random.default_rng(2).integers(0, 7, flip.sum())
        knn_indices(xy[:2000], 6)  # compile the numba kernels outside the timing
        refine_labels(xy[:2000], labels[:2000], n_neighbors=6, device=device)
        base = _rss_mib()
        t0 = time.perf_counter()
        if stage == "graph":
            knn_indices(xy, 6)
            out["knn_seconds"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            g = build_spatial_graph(xy, n_neighbors=6)
            out["csr_seconds"] = round(time.perf_counter() - t1, 3)
            out["edges"] = int(g.nnz)
        else:
            refine_labels(xy, labels, n_neighbors=6, device=device)
        out["seconds"] = round(time.perf_counter() - t0, 3)
    elif stage == "epoch":
        import pytorch_lightning as pl
        import torch

        from mihd.fusion import fusion_info
        from mihd.graph import knn_indices
        from mihd.train._datamodule import SpotDataModule
        from mihd.train._plan import FusionTrainingPlan

        rng = np.random.default_rng(0)
        feats = {"gene": rng.standard_normal((n, 30), dtype=np.float32), "image": rng.standard_normal((n, 27), dtype=np.float32)}
        xy = _coords(n)
        nbrs = knn_indices(xy, 6, include_self=False)
        dims = {m: x.shape[1] for m, x in feats.items()}
        info = fusion_info("gnn")
        torch.manual_seed(0)
        plan = FusionTrainingPlan(info.cls(dims, out_dim=16), dims, out_dim=16, needs_coords=True)
        dm = SpotDataModule(feats, coords=((xy - xy.mean(0)) / xy.std()).astype(np.float32), neighbors=nbrs,
                            batch_size=4096, seed=0)
        trainer = pl.Trainer(max_epochs=1, accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        base = _rss_mib()
        t0 = time.perf_counter()
        trainer.fit(plan, datamodule=dm)
        out["seconds"] = round(time.perf_counter() - t0, 3)
        out["steps"] = int(trainer.global_step)
    elif stage == "cluster":
        from sklearn.datasets import make_blobs

        from mihd.cluster import cluster_embedding

        X, _ = make_blobs(n_samples=n, n_features=16, centers=7, cluster_std=2.0, random_state=0)
        base = _rss_mib()
        t0 = time.perf_counter()
        cluster_embedding(X, 7, method="gmm", seed=0)
        out["seconds"] = round(time.perf_counter() - t0, 3)
    elif stage == "trend":
        from sklearn.datasets import make_blobs

        from mihd.cluster import cluster_embedding, gmm_spatial_trend

        xy = _coords(n)
        X, _ = make_blobs(n_samples=n, n_features=16, centers=7, cluster_std=4.0, random_state=0)  # overlapping: EM works
        X += np.outer((xy[:, 0] - xy[:, 0].mean()) / xy[:, 0].std(), np.linspace(0.5, 2.0, 16))
        start = cluster_embedding(X, 7, method="gmm", seed=0)
        base = _rss_mib()
        t0 = time.perf_counter()
        _, info = gmm_spatial_trend(X, xy, start, seed=0, return_info=True)
        out["seconds"] = round(time.perf_counter() - t0, 3)
        out["em_steps"] = info["n_iter"]
    else:
        raise ValueError(stage)
    out.update(base_rss_mib=round(base, 1), peak_rss_mib=round(_peak_mib(), 1))
    return out


def _e2e(n: int, device: str, fusion: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        chosen = [f"fusion={fusion}"] if fusion else []  # none: the package default (mihd train without fusion=)
        cmd = [sys.executable, "-m", "mihd.cli", "train", *chosen, "data=synthetic", f"data.n_cells={n}",
               "trainer=hd", "trainer.progress_bar=false", f"run_dir={tmp}/run", "cache_dir=null",
               f"trainer.accelerator={device}"]  # mihd's names: cpu, cuda (it maps cuda to Lightning's gpu)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        log = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if status != 0:
            raise RuntimeError(f"end-to-end run failed:\n{log[-3000:]}")
        metrics = json.loads(Path(tmp, "run", "metrics.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "ari_after": round(metrics["scores"]["after_refinement"]["ari"], 3),
        "stages_seconds": metrics["timing_seconds"],
        "fusion": metrics["fusion"],
        "spatial_neighbors": metrics.get("spatial_neighbors"),
    }


def _run(stage: str, n: int, device: str, fusion: str | None = None) -> dict:
    if stage == "e2e":
        return _e2e(n, device, fusion)
    cmd = [sys.executable, __file__, "--child", stage, "--n", str(n), "--device", device]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{stage} at n={n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--output", default=str(Path(__file__).with_name("results.md")), help="'-' prints only")
    ap.add_argument("--fusion", default=None, help="e2e stage: the fusion to run (default: the package default)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.n[0], args.device)))
        return

    rows = []
    for stage in args.stages:
        for n in args.n:
            r = _run(stage, n, args.device, args.fusion)
            rows.append((stage, n, r))
            print(f"{stage:<8}{n:>10}  {r['seconds']:>9.2f} s  peak {r['peak_rss_mib']:>9.0f} MiB  {json.dumps(r)}", flush=True)

    lines = [
        f"| stage | N | seconds | peak RSS (MiB) | stage added (MiB) | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for stage, n, r in rows:
        added = r["peak_rss_mib"] - r["base_rss_mib"] if "base_rss_mib" in r else float("nan")
        notes = {k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mib", "base_rss_mib")}
        lines.append(f"| {stage} | {n:,} | {r['seconds']:.2f} | {r['peak_rss_mib']:,.0f} | "
                     f"{'' if np.isnan(added) else f'{added:,.0f}'} | {json.dumps(notes)} |")
    cpu = cpu_model()
    header = [
        f"## {args.device.upper()} run, {_dt.date.today().isoformat()}",
        "",
        f"Machine: {platform.node()} ({cpu}), {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "",
        "Command: `" + " ".join(["python", "benchmarks/scale/bench_scale.py", *sys.argv[1:]]) + "`",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    if args.output == "-":
        print(text)
        return
    out = Path(args.output)
    previous = out.read_text() if out.exists() else "# Scale benchmark: time and memory vs N\n\n" + __doc__.split("\n\n")[1] + "\n\n"
    out.write_text(previous.rstrip() + "\n\n" + text)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
