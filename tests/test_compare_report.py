"""The issue-6 comparison report (benchmarks/compare/compare.py): its verdict and the confirmatory section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mihd._config import compose


@pytest.fixture(scope="module")
def compare(load_script):
    return load_script("benchmarks/compare/compare.py")


@pytest.fixture(scope="module")
def select(load_script):
    return load_script("benchmarks/dev/select_strategy.py")


def _table(levels: dict[str, list[float]], seeds=range(5), variant="default") -> pd.DataFrame:
    rows = []
    for method, values in levels.items():
        fusion, _, var = method.partition(" [")
        for (slice_name, seed), ari in zip(((s, k) for s in ("dlpfc_151673", "dlpfc_151674") for k in seeds), values):
            rows.append({"run_id": f"{method}-{slice_name}-{seed}", "status": "ok", "slice": slice_name, "fusion": fusion,
                         "variant": var.rstrip("]") or variant, "seed": seed, "ari_after": ari})
    t = pd.DataFrame(rows)
    t["method"] = t["fusion"].where(t["variant"] == "default", t["fusion"] + " [" + t["variant"] + "]")
    return t


def test_median_difference_interval_is_seeded_and_separates_clear_gaps(compare):
    rng = np.random.default_rng(0)
    a, b = 0.6 + 0.01 * rng.standard_normal(10), 0.4 + 0.01 * rng.standard_normal(10)
    assert compare.median_difference_interval(a, b) == compare.median_difference_interval(a, b)
    lo, hi, share = compare.median_difference_interval(a, b)
    assert 0.15 < lo < hi < 0.25 and share == 1.0
    lo, hi, share = compare.median_difference_interval(a, a[::-1])
    assert lo <= 0 <= hi and 0.2 < share < 0.8


def test_verdict_flags_a_lead_inside_the_seed_noise(compare):
    rng = np.random.default_rng(1)
    noisy = list(0.60 + 0.05 * rng.standard_normal(10))
    table = _table({"gated": noisy, "concat": [0.5] * 10, "genes_only": list(np.array(noisy)[::-1] - 0.001),
                    "GraphST": [0.3] * 10})
    lines = compare.verdict(table, dev_choice="concat")
    assert "**gated**" in lines[0]
    floor = next(line for line in lines[:4] if "genes_only" in line)
    graphst = next(line for line in lines[:4] if "GraphST" in line)
    assert "within the seed noise" in floor and "within the seed noise" not in graphst
    assert any("**concat**" in line and "rank 2 of 2 trained" in line for line in lines)


def test_confirmatory_section_uses_fresh_seeds_for_baselines_and_the_main_table_for_peers(compare):
    main = _table({"gated": [0.6] * 10, "genes_only": [0.5] * 10, "GraphST": [0.55] * 10})
    fresh = _table({"gated": [0.7] * 10, "genes_only": [0.4] * 10}, seeds=range(5, 10))
    lines = compare.confirmatory(fresh, main, "gated")
    assert "fresh seeds 5,6,7,8,9" in lines[0] and "0.700" in lines[0]
    floor = next(line for line in lines if "genes_only" in line)
    graphst = next(line for line in lines if "GraphST" in line)
    assert "seeds 5,6,7,8,9" in floor and "difference +0.300" in floor
    assert "seeds 0,1,2,3,4" in graphst and "difference +0.150" in graphst
    assert "no finished confirmatory run" in compare.confirmatory(fresh, main, "film")[0]


def test_the_confirmatory_experiment_runs_fresh_seeds_and_the_pre_registered_choice(compare):
    pair, confirm = compose("evaluate", ["experiment=dlpfc_pair"]), compose("evaluate", ["experiment=dlpfc_confirm"])
    assert list(confirm.slices) == list(pair.slices)
    assert len(confirm.seeds) == 5 and not set(confirm.seeds) & set(pair.seeds)
    assert set(confirm.fusions) == {compare.DEV_CHOICE, "genes_only"}


def test_followup_section_scores_each_candidate_on_its_own_fresh_seeds(compare):
    main = _table({"gated": [0.6] * 10, "genes_only": [0.5] * 10, "GraphST": [0.55] * 10})
    later = _table({"genes_only [pearson]": [0.3] * 10, "genes_only": [0.6] * 10}, seeds=range(15, 20))
    lines = compare.followups([later], ["confirm_pearson_results"], main)
    assert lines[0].startswith("- **genes_only [pearson]** (`confirm_pearson_results`), fresh seeds 15,16,17,18,19: 0.300")
    floor = next(line for line in lines if "genes_only:" in line)
    graphst = next(line for line in lines if "GraphST" in line)
    assert "behind genes_only: seeds 15,16,17,18,19, 0.600" in floor and "difference -0.300" in floor
    assert "seeds 0,1,2,3,4" in graphst and "difference -0.250" in graphst
    only_floor = _table({"genes_only": [0.6] * 10}, seeds=range(15, 20))
    assert compare.followups([only_floor], ["t"], main) == ["- `t`: no finished candidate runs"]


def test_every_pre_registered_test_spends_seeds_no_other_scored_run_used():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tests = sorted(p.stem for p in (root / "configs" / "experiment").glob("dlpfc_confirm_*.yaml"))
    assert {"dlpfc_confirm_context", "dlpfc_confirm_pearson"} <= set(tests)
    seen: set[int] = set()
    for name in ["dlpfc_pair", "dlpfc_confirm", *tests]:
        cfg = compose("evaluate", [f"experiment={name}"])
        assert list(cfg.slices) == ["dlpfc:151673", "dlpfc:151674"], name
        assert not set(cfg.seeds) & seen, f"{name} reuses seeds {sorted(set(cfg.seeds) & seen)}"
        seen |= set(cfg.seeds)
    # Each later test and each post-hoc re-measurement is in the report that run.sh regenerates.
    run_sh = (root / "benchmarks" / "compare" / "run.sh").read_text()
    followups = run_sh.split('followups="', 1)[1].split('"', 1)[0].split()
    posthocs = run_sh.split('posthocs="', 1)[1].split('"', 1)[0].split()
    assert sorted(f"dlpfc_confirm_{t}" for t in followups) == tests
    assert sorted(f"dlpfc_posthoc_{t}" for t in posthocs) == sorted(
        p.stem for p in (root / "configs" / "experiment").glob("dlpfc_posthoc_*.yaml"))


def test_posthoc_rows_are_labelled_as_spent_seeds(compare):
    main = _table({"genes_only": [0.5] * 10, "GraphST": [0.55] * 10})
    again = _table({"genes_only [pearson_z]": [0.52] * 10, "genes_only": [0.6] * 10}, seeds=range(15, 20))
    assert "spent seeds 15,16,17,18,19" in compare.followups([again], ["posthoc"], main, label="spent seeds")[0]


def test_the_pre_registered_rule_picks_by_median_then_mean_then_worst_run(select):
    def rows(**levels):
        return pd.DataFrame([{"variant": v, "ari_after": a} for v, values in levels.items() for a in values])

    stats = select.per_variant(rows(floor=[0.9] * 3, a=[0.40, 0.50, 0.60], b=[0.30, 0.45, 0.90], c=[0.2, 0.3, 0.4]))
    assert select.choose(stats) == "a"  # the floor is never chosen, and b's higher mean does not beat a higher median
    stats = select.per_variant(rows(a=[0.40, 0.50, 0.60], b=[0.30, 0.4995, 0.90]))
    assert select.choose(stats) == "b"  # medians within 0.001: the higher mean
    stats = select.per_variant(rows(a=[0.25, 0.5, 0.75], b=[0.375, 0.5, 0.625]))  # exact in binary
    assert select.choose(stats) == "b"  # same median and mean: the higher worst run


def test_selection_can_pool_batches_run_on_the_same_cells_and_restrict_variants(select, tmp_path, capsys):
    cells = [("151507", 0), ("151507", 1), ("151669", 0)]
    rows = [{"tag": tag, "variant": v, "slice": s, "seed": k, "ari_after": a}
            for tag, v, a in (("t1", "floor", 0.5), ("t1", "x", 0.6), ("t2", "y", 0.7), ("t2", "z", 0.8))
            for s, k in cells]
    table = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    select.main(["--results", str(table), "--tag", "t1", "t2", "--only", "floor", "x", "y"])
    out = capsys.readouterr().out
    assert "chosen by the pre-registered rule: y" in out and "| z" not in out  # z excluded, y from the second batch
    pd.DataFrame(rows[:-1]).to_csv(table, index=False)  # one cell of z missing: an incomplete pooled batch
    with pytest.raises(SystemExit, match="incomplete"):
        select.main(["--results", str(table), "--tag", "t1", "t2"])


# --------------------------------------------------------------------------- real development set


def test_the_real_development_experiment_plans_the_ten_unscored_slices(load_script):
    gen = load_script("benchmarks/dev/semisynthetic.py")
    cfg = compose("evaluate", ["experiment=dlpfc_dev_real"])
    ids = [s.split(":", 1)[1] for s in cfg.slices]
    assert sorted(ids) == sorted(gen.DEV_SLICES) and not set(ids) & gen.SCORED_SLICES
    assert list(cfg.seeds) == [0, 1, 2] and cfg.fusions == "all"  # every registered fusion


def test_the_real_development_set_names_the_missing_counts_before_running(data_dir, tmp_path, monkeypatch):
    from mihd.evaluate import PlanError, build_plan

    if not (data_dir / "dlpfc" / "151507" / "truth.tsv").is_file():
        pytest.skip(f"DLPFC geometry not found under {data_dir} (set MIHD_DATA_DIR)")
    if (data_dir / "dlpfc" / "151507" / "filtered_feature_bc_matrix.h5").is_file():
        pytest.skip("the development slices' counts are present here: nothing is missing")
    monkeypatch.setenv("MIHD_DATA_DIR", str(data_dir))
    with pytest.raises(PlanError, match=r"10 problems(.|\n)*dlpfc_151676.*filtered_feature_bc_matrix.h5"):
        build_plan(compose("evaluate", ["experiment=dlpfc_dev_real", "seeds=[0]", "fusions=[genes_only]", f"out_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_real_development_runs_feed_the_pre_registered_rule(data_dir, tmp_path, monkeypatch, load_script, select, capsys):
    """End to end on one development slice whose counts are placed beside its real geometry (simulated
    here, so the test runs without them): mihd evaluate writes the table and the rule reads it."""
    from mihd.cli import main
    from mihd.data._visium import write_10x_h5

    real = data_dir / "dlpfc" / "151507"
    if not (real / "truth.tsv").is_file():
        pytest.skip(f"DLPFC geometry not found under {data_dir} (set MIHD_DATA_DIR)")
    gen = load_script("benchmarks/dev/semisynthetic.py")
    folder = tmp_path / "data" / "dlpfc" / "151507"
    folder.mkdir(parents=True)
    for name in ("spatial", "truth.tsv"):
        (folder / name).symlink_to(real / name)
    adata = gen.dlpfc_geometry_slice(real, seed=0, **{**gen.PRESETS["v3"], "n_genes": 400})
    write_10x_h5(adata, folder / "filtered_feature_bc_matrix.h5", library_id="151507", writer="test")
    monkeypatch.setenv("MIHD_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "ev"
    args = ["evaluate", "experiment=dlpfc_dev_real", "slices=[dlpfc:151507]", "seeds=[0]", "fusions=[concat,genes_only]",
            f"out_dir={out}", "workers=2", "encoder.gene_options.n_top_genes=200", "encoder.gene_options.n_comps=10", "trainer=fast"]
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 and (table["status"] == "ok").all()  # 2 fusions + genes_only [raw]
    capsys.readouterr()
    select.main(["--evaluate", str(out / "results.csv")])
    printed = capsys.readouterr().out
    floor = table.set_index(["fusion", "variant"]).loc[("genes_only", "default"), "ari_after"]
    assert f"| floor (floor) | {floor:.3f} |" in printed and "raw" not in printed  # the raw PCA is no candidate
    assert "chosen by the pre-registered rule: concat" in printed
    # A table with a scored slice, or with an unfinished run, is refused.
    scored = table.assign(slice="dlpfc_151673")
    scored.to_csv(tmp_path / "scored.csv", index=False)
    with pytest.raises(SystemExit, match="scored slice"):
        select.main(["--evaluate", str(tmp_path / "scored.csv")])
    table.assign(status=["failed"] + ["ok"] * (len(table) - 1)).to_csv(tmp_path / "failed.csv", index=False)
    with pytest.raises(SystemExit, match="not ok"):
        select.main(["--evaluate", str(tmp_path / "failed.csv")])
