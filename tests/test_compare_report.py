"""The development-set report (benchmarks/compare/compare.py) and its experiment."""

from __future__ import annotations

import pandas as pd
import pytest

from mihd._config import compose


@pytest.fixture(scope="module")
def compare(load_script):
    return load_script("benchmarks/compare/compare.py")


def _table(levels: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    rows = []
    for method, per_slice in levels.items():
        for slice_name, values in per_slice.items():
            for seed, ari in enumerate(values):
                rows.append({"run_id": f"{method}-{slice_name}-{seed}", "status": "ok", "slice": slice_name,
                             "fusion": method, "variant": "default", "seed": seed, "ari_after": ari,
                             "nmi_after": ari / 2, "wall_seconds": 10.0, "peak_rss_mib": 100.0})
    t = pd.DataFrame(rows)
    t["method"] = t["fusion"]
    return t


def test_acceptance_compares_the_default_with_the_best_peer_on_each_dataset(compare):
    table = _table({
        "gated": {"a": [0.60, 0.62, 0.61], "b": [0.40, 0.50, 0.60]},
        "GraphST": {"a": [0.55], "b": [0.52]},
        "STAGATE": {"a": [0.58], "b": [0.40]},
    })
    stats = compare.per_dataset(table)
    lines = compare.acceptance(stats, "gated")
    a = next(line for line in lines if line.startswith("- a:"))
    b = next(line for line in lines if line.startswith("- b:"))
    assert "best peer here STAGATE 0.580" in a and "meets the target" in a and "sd ≤ 0.03" in a
    assert "best peer here GraphST 0.520" in b and "behind the target by 0.020" in b and "sd > 0.03" in b
    assert "no finished run of the default `film`" in compare.acceptance(stats, "film")[0]


def test_the_issue_targets_count_where_they_are_higher_and_a_finished_row_wins(compare):
    table = _table({"gated": {"dlpfc_151675": [0.55] * 3, "starmap_BZ5": [0.70] * 3},
                    "GraphST": {"dlpfc_151675": [0.48], "starmap_BZ5": [0.60]}})
    lines = compare.acceptance(compare.per_dataset(table), "gated")
    line = next(x for x in lines if x.startswith("- dlpfc_151675"))
    assert "issue's STAGATE 0.589 is higher" in line and "behind the target by 0.039" in line
    assert any(x.startswith("- STARmap") and "meets the best peer mean BANKSY (issue) 0.693" in x for x in lines)


def test_the_main_fusion_is_held_to_graphsts_mean_over_the_four_dlpfc_slices(compare):
    four = ["dlpfc_151673", "dlpfc_151674", "dlpfc_151675", "dlpfc_151676"]
    # issue's GraphST: 0.598 / 0.543 / 0.476 / 0.562 (mean 0.545); an own GraphST run of 0.70 on 151673 raises it
    table = _table({"adaln_attention": {sl: [0.55] for sl in four}, "GraphST": {"dlpfc_151673": [0.70]}})
    line = next(x for x in compare.acceptance(compare.per_dataset(table), "gated") if "`adaln_attention` mean" in x)
    assert "0.550 is behind by 0.020 GraphST's mean 0.570" in line and "own runs on 1/4 slices" in line
    table = _table({"adaln_attention": {sl: [0.55] for sl in four}})
    line = next(x for x in compare.acceptance(compare.per_dataset(table), "gated") if "`adaln_attention` mean" in x)
    assert "0.550 meets GraphST's mean 0.545" in line
    table = _table({"adaln_attention": {sl: [0.55] for sl in four[:3]}})
    assert any("not every slice has a finished run" in x for x in compare.acceptance(compare.per_dataset(table), "gated"))


def test_a_todo_row_of_a_later_plan_does_not_hide_a_finished_run(compare, tmp_path):
    done = _table({"gated": {"a": [0.6]}})
    later = done.assign(status="todo", ari_after=float("nan"))
    done.to_csv(tmp_path / "one.csv", index=False)
    later.to_csv(tmp_path / "two.csv", index=False)
    table = compare.load([tmp_path / "one.csv", tmp_path / "two.csv"])
    assert len(table) == 1 and table["status"].tolist() == ["ok"]


def test_pooled_table_gives_median_mean_and_the_worst_dataset(compare):
    table = _table({"gated": {"a": [0.6, 0.6], "b": [0.2, 0.4]}, "concat": {"a": [0.5, 0.5], "b": [0.5, 0.5]}})
    stats = compare.per_dataset(table)
    pooled = compare.pooled(stats, table, ["a", "b"]).set_index("method")
    assert pooled.loc["gated", "worst dataset"] == "0.300 (b)"
    assert pooled.loc["gated", "median ARI (all runs)"] == pytest.approx(0.5)
    assert pooled.index[0] == "concat"  # ranked by the mean over datasets (0.5 > 0.45)


def test_report_writes_every_section(compare, tmp_path):
    table = _table({"genes_only": {"dlpfc_151673": [0.6, 0.61]}, "BANKSY": {"dlpfc_151673": [0.4]}})
    text = compare.report(table, command="bash benchmarks/compare/run.sh", default="genes_only")
    for part in ("## Acceptance lines", "## Pooled over datasets", "## dlpfc_151673", "BANKSY (peer)", "0.605 ± 0.005"):
        assert part in text


def test_the_dev_set_experiment_covers_both_platforms_every_fusion_five_seeds():
    cfg = compose("evaluate", ["experiment=dev_set"])
    assert list(cfg.slices) == ["dlpfc:151673", "dlpfc:151674", "dlpfc:151675", "dlpfc:151676",
                                "starmap_mpfc:BZ5", "starmap_mpfc:BZ9", "starmap_mpfc:BZ14",
                                "dlpfc_pooled:151673", "dlpfc_pooled:151674", "dlpfc_pooled:151675", "dlpfc_pooled:151676"]
    assert list(cfg.seeds) == [0, 1, 2, 3, 4] and cfg.fusions == "all"
    variants = {v if isinstance(v, str) else v["name"] for v in cfg.variants}
    assert variants == {"default", "raw", "no_image", "permuted_image"}


def test_the_dev_set_plan_resolves_every_dataset(data_dir, tmp_path, monkeypatch):
    from mihd.evaluate import build_plan

    needed = [data_dir / "dlpfc" / s / "filtered_feature_bc_matrix.h5" for s in ("151673", "151674", "151675", "151676")]
    needed += [data_dir / "starmap_mpfc" / f"{s}.h5ad" for s in ("BZ5", "BZ9", "BZ14")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"development data missing under {data_dir} (set MIHD_DATA_DIR): {missing[:2]}")
    monkeypatch.setenv("MIHD_DATA_DIR", str(data_dir))
    plan = build_plan(compose("evaluate", ["experiment=dev_set", "seeds=[0]", "fusions=[genes_only]", f"out_dir={tmp_path}"]))
    assert sorted({r.slice for r in plan.runs}) == sorted(
        ["dlpfc_151673", "dlpfc_151674", "dlpfc_151675", "dlpfc_151676", "starmap_BZ5", "starmap_BZ9", "starmap_BZ14",
         "dlpfc_pooled_151673", "dlpfc_pooled_151674", "dlpfc_pooled_151675", "dlpfc_pooled_151676"])


def test_issue25_lines_name_losses_the_worst_dataset_and_the_image_gain(compare):
    table = _table({"gated": {"dlpfc_151673": [0.61] * 3, "dlpfc_151674": [0.55] * 3, "dlpfc_pooled_151673": [0.42] * 3}})
    table["depth_share"] = table["slice"].map({"dlpfc_151673": 0.98, "dlpfc_151674": 0.97, "dlpfc_pooled_151673": 0.91})
    table["image_weight"], table["image_share"] = 0.0, 0.0
    extra = table[table["slice"] == "dlpfc_151673"].copy()
    for variant, ari in (("no_image", 0.60), ("permuted_image", 0.605)):
        rows = extra.assign(variant=variant, ari_after=ari, run_id=lambda t, v=variant: t["run_id"] + v)
        table = pd.concat([table, rows], ignore_index=True)
    stats = compare.per_dataset(table[table["variant"] == "default"])
    lines = compare.issue25(table, stats, "gated")
    assert any(x.startswith("- dlpfc_151673") and "holds" in x for x in lines)
    assert any(x.startswith("- dlpfc_151674") and "LOSES" in x for x in lines)  # 0.55 < 0.577 - 0.01
    assert any("worst dataset of `gated`: dlpfc_pooled_151673 0.420 (depth share of its gene PCs 0.91)" in x for x in lines)
    row = next(x for x in lines if x.startswith("| dlpfc_151673 | gated |"))
    assert "+0.010" in row and "+0.005" in row  # gain 0.61 - 0.60, permuted - without 0.605 - 0.60


def test_image_benchmark_tables_show_with_without_permuted_and_gain(load_script, tmp_path):
    tables = load_script("benchmarks/image/tables.py")
    rows = []
    for seed in range(2):
        for variant, ari in (("default", 0.95), ("no_image", 0.62), ("permuted_image", 0.62)):
            rows.append({"status": "ok", "slice": "synth", "fusion": "gated", "variant": variant, "seed": seed,
                         "ari_after": ari, "image_weight": 1.0 if variant == "default" else 0.0,
                         "image_agreement": 0.7, "image_share": 0.8 if variant == "default" else 0.0})
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    text = tables.table(str(path))
    line = next(r for r in text.splitlines() if r.startswith("| synth | gated |"))
    assert "0.950 ± 0.000" in line and "+0.330" in line and "+0.000" in line and "| 1.00 |" in line
