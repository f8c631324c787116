"""``evaluate(cfg)``: check the whole plan, prepare each slice once, run what is left, report.

Outputs under ``out_dir``::

    plan.json              every planned run (id, key, slice, fusion, encoder, cluster, seed)
    runs/<run id>/         one train run folder each (spec.json, run.log, metrics.json, ...)
    results.csv            one row per planned run (and the same as results.parquet)
    summary.md             fusion x slice, mean +- sd ARI / NMI, rank
    ari_by_method.png      ARI per fusion over slices and seeds
    domains_<slice>.png    refined domain maps of every fusion on one slice

The table is rebuilt from the run folders (their ``metrics.json`` / ``error.json``) and
written atomically after every finished run, so it never holds a duplicate row or a
half-written line, whenever the evaluation is killed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .._config import check_output_dir
from .._io import atomic_write, write_json
from ._plan import Plan, PlannedRun, build_plan

log = logging.getLogger(__name__)

__all__ = ["evaluate", "EvaluationResult", "results_table", "RESULT_COLUMNS"]

_SCORES = ("ari", "nmi", "ami", "homogeneity", "completeness", "chaos", "pas")
RESULT_COLUMNS = (
    ["run_id", "key", "status", "slice", "fusion", "encoder", "cluster", "variant", "seed", "n_spots", "n_domains",
     "device", "epochs"]
    + [f"{s}_before" for s in _SCORES]
    + [f"{s}_after" for s in _SCORES]
    + ["image_weight", "image_agreement", "image_share", "depth_share", "depth_share_pcs"]
    + ["wall_seconds", "train_seconds", "prepare_seconds", "cluster_seconds", "peak_rss_mib", "error", "run_dir"]
)


@dataclass
class EvaluationResult:
    """What ``evaluate`` returns: the plan, the results table and the report files."""

    plan: Plan
    table: object  # pandas.DataFrame
    files: dict
    n_failed: int


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _row(run: PlannedRun) -> dict:
    """The results-table row of one planned run, from its folder."""
    row = {c: math.nan for c in RESULT_COLUMNS}
    row.update(run.describe())
    row.update(status="todo", error="", run_dir=str(run.run_dir))
    metrics_path, error_path = run.run_dir / "metrics.json", run.run_dir / "error.json"
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        t = m.get("timing_seconds", {})
        row.update(
            status="ok", n_spots=m.get("n_spots"), n_domains=m.get("n_domains"), device=m.get("device"),
            epochs=m.get("training", {}).get("epochs"), wall_seconds=t.get("total"), train_seconds=t.get("train"),
            prepare_seconds=t.get("prepare"), cluster_seconds=t.get("cluster"),
            peak_rss_mib=m.get("memory", {}).get("peak_rss_mib"),
        )
        image = m.get("image") or {}  # absent: no image, or a fusion that never sees it (genes_only)
        row.update(image_weight=image.get("weight", math.nan), image_agreement=image.get("agreement", math.nan),
                   image_share=image.get("share", math.nan))
        depth = m.get("depth_share") or {}
        row.update(depth_share=_number(depth.get("of_depth")), depth_share_pcs=_number(depth.get("of_pcs")))
        for stage, suffix in (("before_refinement", "before"), ("after_refinement", "after")):
            for s in _SCORES:
                row[f"{s}_{suffix}"] = m["scores"][stage].get(s, math.nan)
    elif error_path.is_file():
        row.update(status="failed", error=json.loads(error_path.read_text()).get("error", ""))
    return row


def results_table(plan: Plan, rows: dict | None = None):
    """One row per planned run, in plan order (``status`` ok / failed / todo)."""
    import pandas as pd

    rows = rows if rows is not None else {r.run_id: _row(r) for r in plan.runs}
    return pd.DataFrame([rows[r.run_id] for r in plan.runs], columns=list(RESULT_COLUMNS))


def _write_table(table, out_dir: Path) -> dict:
    files = {"results_csv": atomic_write(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False))}
    try:
        files["results_parquet"] = atomic_write(out_dir / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    except Exception as err:  # the CSV is the record; a parquet problem must not stop the evaluation
        log.warning("results.parquet not written (%s: %s); results.csv is complete", type(err).__name__, err)
    return files


def _prepare_once(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Compute gene + image features once per (slice, encoder settings), before runs start.

    The runs then all load them from the cache instead of racing to compute them. A slice
    that cannot be read or encoded fails its own runs (``error.json``), not the evaluation;
    the runs that can go ahead are returned.
    """
    from ..train import load_slice, prepare_slice_inputs

    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        c = run.config
        ident = json.dumps([c["data"], c["encoder"], c.get("cache_dir")], sort_keys=True, default=str)
        groups.setdefault(ident, []).append(run)
    ready = []
    for group in groups.values():
        first = group[0]
        t0 = time.perf_counter()
        log.info("reading slice %s and preparing its features (encoder %s) ...", first.slice, first.encoder)
        try:
            adata = load_slice(first.config["data"])
            prepared = prepare_slice_inputs(first.config, adata)
        except Exception as err:  # recorded per run, reported in the summary
            error = f"preparing slice {first.slice!r} (encoder {first.encoder!r}): {type(err).__name__}: {err}"
            log.error(error)
            for run in group:
                write_json(run.run_dir / "error.json", {"run_id": run.run_id, "key": run.key, "error": error})
            continue
        state = "cached" if prepared.meta.get("cache_hit") else f"computed in {time.perf_counter() - t0:.1f} s"
        log.info("features of slice %s, encoder %s: %s", first.slice, first.encoder, state)
        del adata, prepared
        ready += group
    return ready


def evaluate(cfg, train_overrides: list[str] = (), *, out_dir: str | Path | None = None, plan_only: bool = False,
             progress: bool = True, command: str | None = None) -> EvaluationResult | Plan:
    """Run (or, with ``plan_only``, just check and return) the evaluation an ``evaluate`` config describes.

    Parameters
    ----------
    cfg
        The composed ``evaluate`` config (``configs/evaluate.yaml``).
    train_overrides
        Train options applied to every run (e.g. ``["trainer=fast"]``).
    out_dir
        Where run folders, tables and figures go (replaces ``cfg.out_dir``); one of the two is required,
        so that nothing is written into the working folder unasked. It must be (or can be made as) a
        writable folder: checked before any data is read.
    plan_only
        Check and expand the plan, write nothing, return the `Plan`.
    progress
        One progress bar over the runs, with ETA.
    command
        The command line, recorded in the summary.

    Returns
    -------
    EvaluationResult (the plan, the results table, the report files, the number of failed
    runs), or the `Plan` when ``plan_only``.
    """
    from omegaconf import DictConfig, OmegaConf

    from ._launch import LAUNCHERS, launch  # light; the report and worker modules load after the plan checks

    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if out_dir is not None:
        cfg["out_dir"] = str(out_dir)
    if not cfg.get("out_dir"):
        raise ValueError("evaluate() needs out_dir: evaluate(cfg, out_dir='evaluations/mine') or compose('evaluate', "
                         "['out_dir=...']) (mihd evaluate on the command line defaults to evaluations/default).")
    if not plan_only:
        check_output_dir(cfg["out_dir"], "out_dir")
    launcher = dict(cfg.get("launcher") or {"name": "local"})
    if launcher.get("name", "local") not in LAUNCHERS:
        raise ValueError(f"launcher={launcher.get('name')!r} is unknown; use one of {', '.join(LAUNCHERS)}.")
    plan = build_plan(cfg, list(train_overrides))  # raises PlanError before anything runs
    if plan_only:
        return plan

    out_dir = plan.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "plan.json", {"evaluate": cfg, "train_overrides": list(train_overrides),
                                       "runs": [r.describe() for r in plan.runs]})
    retry = bool(cfg.get("retry_failed", True))
    todo = [r for r in plan.runs if r.status() == "todo" or (retry and r.status() == "failed")]
    rows = {r.run_id: _row(r) for r in plan.runs}
    n_done = sum(row["status"] == "ok" for row in rows.values())
    log.info("%d planned runs: %d finished earlier, %d to run (%s launcher)", len(plan.runs), n_done, len(todo),
             launcher.get("name", "local"))
    files = _write_table(results_table(plan, rows), out_dir)

    if todo:
        from ._worker import write_spec

        ready = {r.run_id for r in _prepare_once(todo)}
        for run in todo:
            if run.run_id not in ready:
                rows[run.run_id] = _row(run)
        todo = [r for r in todo if r.run_id in ready]
        _write_table(results_table(plan, rows), out_dir)
        for run in todo:
            write_spec(run)
        bar = _progress_bar(len(plan.runs), n_done, progress)

        def on_done(run: PlannedRun, outcome: dict) -> None:
            rows[run.run_id] = row = _row(run)
            if row["status"] != "ok" and outcome.get("error") and not row["error"]:
                row.update(status="failed", error=outcome["error"])
            _write_table(results_table(plan, rows), out_dir)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{run.fusion} seed {run.seed}: " + (
                    f"ARI {row['ari_after']:.3f}" if row["status"] == "ok" else row["status"]))
            if row["status"] != "ok":
                log.warning("run %s failed: %s", run.run_id, row["error"])

        try:
            launch(todo, launcher, on_done, out_dir=out_dir)
        finally:
            if bar is not None:
                bar.close()

    table = results_table(plan, rows)
    # A run whose outcome never reached us (e.g. a lost SLURM job) is still "todo": say so.
    table.loc[table["status"] == "todo", "status"] = "failed"
    table.loc[(table["status"] == "failed") & (table["error"] == ""), "error"] = "did not finish"
    files.update(_write_table(table, out_dir))
    from ._report import write_report

    files.update(write_report(table, out_dir, plot_slice=cfg.get("plot_slice"), command=command))
    n_failed = int((table["status"] == "failed").sum())
    return EvaluationResult(plan, table, files, n_failed)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="run", desc="mihd evaluate", dynamic_ncols=True)
