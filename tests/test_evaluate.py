"""mihd evaluate: plan expansion and checks, resume after SIGKILL, launchers, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import mihd
from mihd.cli import compose, main
from mihd.data import write_visium_folder
from mihd.evaluate import PlanError, build_plan, config_key, evaluate, split_overrides
from mihd.fusion import list_fusions

from conftest import shared_data_dir

TINY = ["encoder.gene_options.n_top_genes=50", "encoder.gene_options.n_comps=10", "trainer=fast"]


def _slice_entry(folder) -> str:
    return f"{{data:visium,name:toy,path:'{folder}',annotation:truth.tsv,n_domains:3}}"


def _eval_args(folder, out_dir, *extra) -> list[str]:
    return [f"slices=[{_slice_entry(folder)}]", f"out_dir={out_dir}", *TINY, *extra]


def _cfg(args):
    eval_args, train_args = split_overrides(args)
    return compose("evaluate", eval_args), train_args


@pytest.fixture(scope="module")
def visium_folder(tmp_path_factory, tiny_slice):
    return write_visium_folder(tiny_slice, tmp_path_factory.mktemp("visium") / "toy", positions_format="v2")


# --------------------------------------------------------------------------- plan


def test_default_plan_is_every_registered_fusion_on_the_bundled_slice_with_three_seeds(tmp_path):
    plan = build_plan(compose("evaluate", [f"out_dir={tmp_path}"]))
    assert len(plan.runs) == 3 * len(list_fusions())
    assert {r.fusion for r in plan.runs} == set(list_fusions())
    assert {r.seed for r in plan.runs} == {0, 1, 2} and {r.slice for r in plan.runs} == {"dlpfc_151673"}
    assert len({r.key for r in plan.runs}) == len({r.run_id for r in plan.runs}) == len(plan.runs)
    assert all(r.config["data"]["path"] is None for r in plan.runs)  # the bundled slice
    # seeds vary slower than fusions: an interrupted plan has whole seeds done
    assert [r.seed for r in plan.runs[: len(list_fusions())]] == [0] * len(list_fusions())
    assert not tmp_path.joinpath("plan.json").exists()  # planning writes nothing


def test_plan_option_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(["evaluate", "--plan", f"out_dir={tmp_path / 'ev'}", "fusions=[concat,gnn]", "seeds=[0]"]) == 0
    out = capsys.readouterr().out
    assert "concat" in out and "gnn" in out and "2 runs: 0 done, 0 failed, 2 to run" in out
    assert not (tmp_path / "ev").exists()


def test_config_key_follows_the_config_but_not_where_outputs_go(tmp_path):
    cfg = compose("train", ["fusion=concat"], stamp_run_dir=False)
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(cfg, resolve=True)
    moved = {**base, "run_dir": str(tmp_path), "cache_dir": "/elsewhere", "overwrite": True}
    assert config_key(moved) == config_key(base)
    changed = json.loads(json.dumps(base))
    changed["trainer"]["lr"] = 0.5
    assert config_key(changed) != config_key(base)


def test_train_options_on_the_command_line_apply_to_every_run(tmp_path):
    cfg, train_args = _cfg(["fusions=[concat]", "seeds=[0,1]", "trainer=fast", "trainer.lr=0.01", f"out_dir={tmp_path}"])
    assert train_args == ["trainer=fast", "trainer.lr=0.01"]
    plan = build_plan(cfg, train_args)
    assert [r.config["trainer"]["max_epochs"] for r in plan.runs] == [3, 3]
    assert {r.config["trainer"]["lr"] for r in plan.runs} == {0.01}


def test_coords_needing_fusion_on_a_coords_free_h5ad_is_rejected_before_anything_runs(tmp_path, tiny_slice, capsys):
    adata = tiny_slice.copy()
    del adata.obsm["spatial"]
    adata.uns.pop("spatial", None)
    path = tmp_path / "nocoords.h5ad"
    adata.write_h5ad(path)
    coords_fusion = sorted(mihd.NEEDS_COORDS_FUSIONS)[0]
    out_dir = tmp_path / "ev"
    entry = f"{{data:h5ad,name:nocoords,path:'{path}',n_domains:3}}"
    code = main(["evaluate", f"slices=[{entry}]", f"fusions=[concat,{coords_fusion}]", f"out_dir={out_dir}",
                 "encoder.image=none"])
    err = capsys.readouterr().err
    assert code != 0
    assert coords_fusion in err and "nocoords" in err and "no spatial coordinates" in err
    assert "concat" not in err.split("needs them")[0].split("\n")[-1]  # concat itself is fine
    assert not out_dir.exists()  # nothing started, nothing written


def test_every_problem_of_a_plan_is_reported_at_once(tmp_path, visium_folder):
    cfg, train_args = _cfg([
        f"slices=[{_slice_entry(visium_folder)},{{data:visium,name:gone,path:'{tmp_path / 'missing'}',n_domains:3}}]",
        "fusions=[concat,not_a_fusion]", "encoders=[default,no_such_encoder]", f"out_dir={tmp_path / 'ev'}",
    ])
    with pytest.raises(PlanError) as info:
        build_plan(cfg, train_args)
    text = str(info.value)
    assert "not_a_fusion" in text and "no_such_encoder" in text and "missing" in text and "does not exist" in text
    assert len(info.value.problems) >= 3


def test_run_dir_cannot_be_set_per_run(tmp_path):
    cfg, train_args = _cfg([f"out_dir={tmp_path}", "run_dir=/tmp/x"])
    with pytest.raises(PlanError, match="out_dir"):
        build_plan(cfg, train_args)


needs_dlpfc = pytest.mark.skipif(
    not (shared_data_dir() / "dlpfc" / "151674" / "filtered_feature_bc_matrix.h5").is_file(),
    reason=f"DLPFC counts not found under {shared_data_dir()} (set MIHD_DATA_DIR)",
)


@needs_dlpfc
def test_two_dlpfc_slices_by_override_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("MIHD_DATA_DIR", str(shared_data_dir()))
    out_dir = tmp_path / "ev"
    code = main(["evaluate", "slices=[dlpfc:151673,dlpfc:151674]", "fusions=[genes_only]", "seeds=[0]",
                 f"out_dir={out_dir}", "workers=2"])
    assert code == 0
    table = pd.read_csv(out_dir / "results.csv")
    assert list(table["slice"]) == ["dlpfc_151673", "dlpfc_151674"]
    assert (table["status"] == "ok").all() and (table["n_domains"] == 7).all()
    assert table["n_spots"].tolist() == [3639, 3673]
    assert (table["ari_after"] > 0.3).all()
    assert "dlpfc_151674" in (out_dir / "summary.md").read_text()


@needs_dlpfc
def test_a_slice_without_counts_is_named_in_the_plan_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MIHD_DATA_DIR", str(shared_data_dir()))
    cfg, _ = _cfg(["slices=[dlpfc:151669]", f"out_dir={tmp_path}"])
    with pytest.raises(PlanError, match="dlpfc_151669.*filtered_feature_bc_matrix.h5"):
        build_plan(cfg)
    assert compose("train", ["data=dlpfc", "data.slice=151669"]).data.n_domains == 5  # published layer count


# --------------------------------------------------------------------------- run, resume, report


def test_evaluate_runs_prepares_once_resumes_and_reports(tmp_path, visium_folder, monkeypatch):
    out_dir = tmp_path / "ev"
    cfg, train_args = _cfg(_eval_args(visium_folder, out_dir, "fusions=[concat,genes_only]", "seeds=[0]"))
    result = evaluate(cfg, train_args, progress=False)
    table = result.table
    assert len(table) == 2 and (table["status"] == "ok").all() and result.n_failed == 0
    assert table["run_id"].is_unique and table["key"].is_unique
    assert table[["ari_before", "ari_after", "nmi_after", "wall_seconds", "peak_rss_mib"]].notna().all().all()
    for run_dir in table["run_dir"]:
        metrics = json.loads(Path(run_dir, "metrics.json").read_text())
        assert metrics["prepared"]["cache_hit"] is True  # features computed once, by the evaluation itself
    assert pd.read_csv(out_dir / "results.csv")["run_id"].tolist() == table["run_id"].tolist()
    summary = (out_dir / "summary.md").read_text()
    assert "genes_only" in summary and "concat" in summary and "mean ARI" in summary
    for png in ("ari_by_method.png", "domains_toy.png"):
        assert (out_dir / png).read_bytes()[:4] == b"\x89PNG"

    # Rerun: nothing is launched again, the table is unchanged.
    import mihd.evaluate._launch as launch_mod

    called = []
    monkeypatch.setattr(launch_mod, "launch", lambda runs, *a, **k: called.append(runs))
    again = evaluate(cfg, train_args, progress=False)
    assert called == [] and again.table["ari_after"].tolist() == table["ari_after"].tolist()


def test_a_failing_slice_is_recorded_and_the_other_runs_finish(tmp_path, tiny_slice, capsys):
    broken = write_visium_folder(tiny_slice, tmp_path / "broken", positions_format="v2")
    (broken / "filtered_feature_bc_matrix.h5").write_bytes(b"not an hdf5 file")  # passes the plan check, fails to read
    good = write_visium_folder(tiny_slice, tmp_path / "good", positions_format="v2")
    out_dir = tmp_path / "ev"
    slices = f"slices=[{_slice_entry(good)},{{data:visium,name:broken,path:'{broken}',n_domains:3}}]"
    args = ["evaluate", slices, "fusions=[genes_only]", "seeds=[0]", f"out_dir={out_dir}", *TINY]
    assert main(args) == 1
    assert "1 run(s) failed" in capsys.readouterr().err
    table = pd.read_csv(out_dir / "results.csv").set_index("slice")
    assert table.loc["toy", "status"] == "ok" and table.loc["broken", "status"] == "failed"
    assert "filtered_feature_bc_matrix.h5" in table.loc["broken", "error"]
    assert "broken" in (out_dir / "summary.md").read_text().split("Failed runs")[1]
    # A rerun retries the failed run only (and it fails again: the file is still broken).
    ok_metrics = Path(table.loc["toy", "run_dir"], "metrics.json")
    before = ok_metrics.stat().st_mtime_ns
    assert main(args) == 1 and ok_metrics.stat().st_mtime_ns == before


def _ps_children(spec_dir: Path) -> list[int]:
    """PIDs of run processes whose command line names a spec under ``spec_dir`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "mihd.evaluate._worker" in cmd and str(spec_dir) in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kill test reads /proc")
def test_sigkill_mid_run_then_rerun_finishes_the_plan_without_recomputing(tmp_path, visium_folder):
    out_dir = tmp_path / "ev"
    args = _eval_args(visium_folder, out_dir, "fusions=[concat,genes_only]", "seeds=[0,1]")
    cmd = [sys.executable, "-m", "mihd.cli", "evaluate", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    finished: dict[str, tuple[int, str]] = {}
    while time.time() < deadline:
        done = sorted(out_dir.glob("runs/*/metrics.json"))
        if len(done) >= 1 and _ps_children(out_dir):  # some runs finished and one is in flight
            break
        if proc.poll() is not None:
            pytest.fail(f"the evaluation ended (code {proc.returncode}) before it could be killed")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no run finished within 300 s")
    os.kill(proc.pid, signal.SIGKILL)  # the evaluation itself, not its process group
    proc.wait()
    for _ in range(100):  # the run in flight dies with it (PR_SET_PDEATHSIG)
        if not _ps_children(out_dir):
            break
        time.sleep(0.1)
    assert not _ps_children(out_dir), "a run process outlived the killed evaluation"
    for m in out_dir.glob("runs/*/metrics.json"):
        finished[m.parent.name] = (m.stat().st_mtime_ns, m.read_text())
    assert 1 <= len(finished) < 4
    # Whatever was on disk is whole: the table parses, with one row per planned run.
    partial = pd.read_csv(out_dir / "results.csv")
    assert len(partial) == 4 and partial["run_id"].is_unique

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    table = pd.read_csv(out_dir / "results.csv")
    assert len(table) == 4 and table["run_id"].is_unique and (table["status"] == "ok").all()
    for run_id, (mtime, text) in finished.items():
        m = out_dir / "runs" / run_id / "metrics.json"
        assert (m.stat().st_mtime_ns, m.read_text()) == (mtime, text), f"{run_id} was recomputed"
    assert not list(out_dir.rglob("*.tmp"))  # no half-written file anywhere


def _worker_of(run_dir) -> tuple[int, int] | None:
    """(pid, n-th run of that process) from the header the local worker writes into run.log."""
    import re

    log = Path(run_dir, "run.log")
    found = re.search(r"worker pid (\d+): run (\d+) of this process", log.read_text()) if log.is_file() else None
    return (int(found[1]), int(found[2])) if found else None


def test_one_worker_serves_every_run_and_gives_the_labels_of_a_fresh_process(tmp_path, visium_folder):
    import anndata as ad

    cfg, train_args = _cfg(_eval_args(visium_folder, tmp_path / "ev", "fusions=[genes_only,concat,mean]", "seeds=[0]"))
    table = evaluate(cfg, train_args, progress=False).table
    assert (table["status"] == "ok").all()
    workers = [_worker_of(d) for d in table["run_dir"]]
    assert len({pid for pid, _ in workers}) == 1 and [n for _, n in workers] == [1, 2, 3]
    assert workers[0][0] != os.getpid()  # a worker process, not the evaluation itself

    # The same runs, each in a fresh process (runs_per_worker=1): bit-identical domains and embeddings.
    cfg, train_args = _cfg(_eval_args(visium_folder, tmp_path / "fresh", "fusions=[concat,mean]", "seeds=[0]",
                                      "launcher.runs_per_worker=1"))
    fresh = evaluate(cfg, train_args, progress=False).table.set_index("fusion")
    assert [_worker_of(d)[1] for d in fresh["run_dir"]] == [1, 1]
    assert len({_worker_of(d)[0] for d in fresh["run_dir"]}) == 2
    for fusion in ("concat", "mean"):
        reused = ad.read_h5ad(Path(table.set_index("fusion").loc[fusion, "run_dir"], "adata.h5ad"))
        alone = ad.read_h5ad(Path(fresh.loc[fusion, "run_dir"], "adata.h5ad"))
        assert (reused.obs[f"mihd_{fusion}"] == alone.obs[f"mihd_{fusion}"]).all()
        assert (reused.obsm[f"X_mihd_{fusion}"] == alone.obsm[f"X_mihd_{fusion}"]).all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a worker by pid")
def test_a_worker_killed_mid_run_fails_that_run_only_and_a_fresh_worker_goes_on(tmp_path, visium_folder):
    import threading

    from mihd.evaluate._launch import launch
    from mihd.evaluate._worker import write_spec

    out_dir = tmp_path / "ev"
    cfg, train_args = _cfg(_eval_args(visium_folder, out_dir, "fusions=[concat]", "seeds=[0,1,2]",
                                      "trainer.max_epochs=40"))
    runs = build_plan(cfg, train_args).runs
    for run in runs:
        write_spec(run)

    def kill_the_second_run_in_flight():  # as the out-of-memory killer would
        deadline = time.time() + 300
        while time.time() < deadline and _worker_of(runs[1].run_dir) is None:
            time.sleep(0.01)
        os.kill(_worker_of(runs[1].run_dir)[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_second_run_in_flight, daemon=True)
    killer.start()
    outcomes = {}
    launch(runs, {"name": "local", "workers": 1}, lambda run, out: outcomes.update({run.run_id: out}), out_dir=out_dir)
    killer.join(timeout=5)
    first, second, third = (outcomes[r.run_id] for r in runs)
    assert first["status"] == third["status"] == "done"
    assert second["status"] == "failed" and "exited with code -9" in second["error"]
    assert runs[0].status() == runs[2].status() == "done" and runs[1].status() == "todo"  # retried by a rerun
    assert first["pid"] != third["pid"] == _worker_of(runs[2].run_dir)[0]
    assert _worker_of(runs[2].run_dir)[1] == 1


def test_joblib_launcher(tmp_path, visium_folder):
    out_dir = tmp_path / "ev"
    cfg, train_args = _cfg(_eval_args(visium_folder, out_dir, "fusions=[genes_only,concat]", "seeds=[0]",
                                      "launcher=joblib", "workers=1"))
    result = evaluate(cfg, train_args, progress=False)
    assert (result.table["status"] == "ok").all() and len(result.table) == 2


def test_slurm_launcher_through_submitit_local_executor(tmp_path, visium_folder):
    pytest.importorskip("submitit", reason="submitit is the optional SLURM launcher (pip install 'mihd[slurm]')")
    out_dir = tmp_path / "ev"
    cfg, train_args = _cfg(_eval_args(visium_folder, out_dir, "fusions=[genes_only]", "seeds=[0,1]",
                                      "launcher=slurm", "launcher.cluster=local", "launcher.cpus_per_task=1"))
    result = evaluate(cfg, train_args, progress=False)
    assert (result.table["status"] == "ok").all() and len(result.table) == 2
    assert (out_dir / "submitit").is_dir()


@pytest.mark.parametrize("group", ["launcher", "experiment"])
def test_every_evaluate_config_composes(group, tmp_path):
    from mihd._config import config_dir

    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    assert options
    for option in options:
        cfg = compose("evaluate", [f"{group}={option}"])
        assert cfg.seeds and cfg.slices


@needs_dlpfc
def test_the_dev_set_experiment_plans_seven_datasets_with_five_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("MIHD_DATA_DIR", str(shared_data_dir()))
    cfg, train_args = _cfg(["experiment=dev_set", "fusions=[concat]", "variants=[default]",
                            "slices=[dlpfc:151673,dlpfc:151674]", f"out_dir={tmp_path}"])
    plan = build_plan(cfg, train_args)
    assert [(r.slice, r.seed) for r in plan.runs] == [(s, k) for s in ("dlpfc_151673", "dlpfc_151674") for k in range(5)]


def test_variants_are_separate_methods_with_their_own_runs(tmp_path, visium_folder):
    out_dir = tmp_path / "ev"
    cfg, train_args = _cfg(_eval_args(
        visium_folder, out_dir, "fusions=[genes_only]", "seeds=[0]",
        "variants=[default,{name:raw,overrides:['spatial.smooth_inputs=false']}]",
    ))
    plan = build_plan(cfg, train_args)
    assert [r.variant for r in plan.runs] == ["default", "raw"]
    assert [r.config["spatial"]["smooth_inputs"] for r in plan.runs] == [True, False]
    assert len({r.key for r in plan.runs}) == 2 and "raw" in plan.runs[1].run_id
    result = evaluate(cfg, train_args, progress=False)
    assert list(result.table["variant"]) == ["default", "raw"] and (result.table["status"] == "ok").all()
    assert "genes_only [raw]" in (out_dir / "summary.md").read_text()


def test_a_variant_can_be_limited_to_some_fusions(tmp_path, visium_folder):
    cfg, train_args = _cfg(_eval_args(
        visium_folder, tmp_path / "ev", "fusions=[concat,genes_only]", "seeds=[0,1]",
        "variants=[default,{name:raw,overrides:['spatial.smooth_inputs=false'],fusions:[genes_only]}]",
    ))
    plan = build_plan(cfg, train_args)
    assert sorted((r.variant, r.fusion) for r in plan.runs) == sorted(
        [(v, f) for v, f in [("default", "concat"), ("default", "genes_only"), ("raw", "genes_only")] for _ in range(2)]
    )
    cfg, train_args = _cfg(_eval_args(
        visium_folder, tmp_path / "ev2", "variants=[{name:raw,overrides:[],fusions:[no_such_fusion]}]",
    ))
    with pytest.raises(PlanError, match="no_such_fusion"):
        build_plan(cfg, train_args)


def test_a_malformed_variant_is_a_plan_problem(tmp_path):
    cfg, train_args = _cfg([f"out_dir={tmp_path}", "variants=[{overrides:['seed=1']}]"])
    with pytest.raises(PlanError, match="variants"):
        build_plan(cfg, train_args)


def test_auto_threads_honour_the_users_omp_num_threads(monkeypatch):
    from mihd.evaluate._launch import threads_per_worker

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker({"workers": 2}) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_worker({"workers": 2}) == 1
    assert threads_per_worker({"workers": 2, "threads_per_worker": 3}) == 3  # an explicit setting wins
