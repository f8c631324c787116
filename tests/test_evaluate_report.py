"""Evaluation report: Markdown summary, ARI box plot, spatial domain grid."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from mihd.evaluate._report import (
    _domain_panels,
    match_labels,
    plot_ari,
    plot_domain_grid,
    summary_markdown,
    write_report,
)

SLICES = ("151673", "151674")
LEVELS = {"concat": 0.45, "adaln_attention": 0.55, "mean": 0.35}
FAILED_RUN = "concat-151674-s2"


def _row(fusion, slice_name, seed, ari, *, encoder="pca", cluster="gmm", run_dir="/nonexistent", **extra):
    row = {
        "run_id": f"{fusion}-{slice_name}-s{seed}", "key": f"{fusion}|{slice_name}|{seed}", "status": "ok",
        "slice": slice_name, "fusion": fusion, "encoder": encoder, "cluster": cluster, "seed": seed,
        "n_spots": 3639, "n_domains": 7, "device": "cpu", "epochs": 200,
        "wall_seconds": 30.0 + seed, "train_seconds": 20.0, "prepare_seconds": 5.0, "cluster_seconds": 2.0,
        "peak_rss_mib": 1500.0 + 10 * seed, "error": None, "run_dir": str(run_dir),
    }
    for stage, shift in (("before", -0.05), ("after", 0.0)):
        a = ari + shift
        row.update({f"ari_{stage}": a, f"nmi_{stage}": a + 0.1, f"ami_{stage}": a + 0.08, f"homogeneity_{stage}": a + 0.12,
                    f"completeness_{stage}": a + 0.09, f"chaos_{stage}": 0.03, f"pas_{stage}": 0.1 - shift})
    row.update(extra)
    return row


@pytest.fixture
def table():
    rng = np.random.default_rng(1)
    rows = [_row(f, s, seed, level + rng.normal(0, 0.03)) for f, level in LEVELS.items() for s in SLICES for seed in range(3)]
    t = pd.DataFrame(rows)
    # A failed run: its scores are NaN; wall time and memory were still recorded but must not count.
    failed = t["run_id"] == FAILED_RUN
    t.loc[failed, [c for c in t if c.endswith(("_before", "_after"))]] = np.nan
    t.loc[failed, ["status", "peak_rss_mib", "wall_seconds"]] = ["failed", 99999.0, 5555.5]
    t.loc[failed, "error"] = "RuntimeError: CUDA out of memory\nTraceback (most recent call last): ..."
    return t


def _method_rows(md: str) -> dict[str, dict[str, str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| rank |"))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip().strip("|").split(" | "))))
        rows[cells["method"]] = cells
    return rows


def test_ranks_follow_mean_ari(table):
    rows = _method_rows(summary_markdown(table))
    expected = table[table["status"] == "ok"].groupby("fusion")["ari_after"].mean().rank(ascending=False).astype(int)
    assert list(rows) == list(expected.sort_values().index)
    assert {m: int(r["rank"]) for m, r in rows.items()} == expected.to_dict()


def test_ties_share_the_min_rank():
    t = pd.DataFrame([_row(f, "s", seed, ari) for f, ari in (("a", 0.5), ("b", 0.5), ("c", 0.7)) for seed in range(2)])
    assert {m: r["rank"] for m, r in _method_rows(summary_markdown(t)).items()} == {"c": "1", "a": "2", "b": "2"}


def test_mean_sd_cells_equal_pandas(table):
    rows = _method_rows(summary_markdown(table))
    ok = table[table["status"] == "ok"]
    for fusion, slice_name, score in (("adaln_attention", "151673", "ari"), ("mean", "151674", "nmi"), ("concat", "151674", "ari")):
        values = ok.loc[(ok["fusion"] == fusion) & (ok["slice"] == slice_name), f"{score}_after"]
        cell = rows[fusion][f"{score.upper()} {slice_name}"]
        assert cell == f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
    concat = ok[ok["fusion"] == "concat"]
    assert rows["concat"]["mean ARI"] == f"{concat['ari_after'].mean():.3f}"
    assert rows["concat"]["median ARI"] == f"{concat['ari_after'].median():.3f}"
    assert rows["concat"]["ARI before refinement"] == f"{concat['ari_before'].mean():.3f}"
    assert rows["concat"]["wall s"] == f"{concat['wall_seconds'].mean():.1f}"
    assert rows["concat"]["peak MiB"] == f"{concat['peak_rss_mib'].max():.0f}"


def test_failed_run_is_listed_and_left_out_of_the_statistics(table):
    md = summary_markdown(table, title="DLPFC", command="mihd evaluate experiment=dlpfc")
    assert md.startswith("# DLPFC\n")
    assert "```\nmihd evaluate experiment=dlpfc\n```" in md
    assert "runs planned: 18 (ok: 17, failed: 1)" in md
    assert "- slices: 151673, 151674" in md and "- seeds: 0, 1, 2" in md
    failed_section = md.split("## Failed runs", 1)[1]
    assert f"| {FAILED_RUN} | RuntimeError: CUDA out of memory |" in failed_section
    assert "Traceback" not in md
    rows = _method_rows(md)
    assert rows["concat"]["n"] == "5" and rows["mean"]["n"] == "6"
    assert "99999" not in md and "5555" not in md


def test_single_seed_shows_the_mean_alone_and_missing_cells_a_dash():
    t = pd.DataFrame([_row("a", "s1", 0, 0.5), _row("b", "s1", 0, 0.4), _row("b", "s2", 0, 0.3)])
    rows = _method_rows(summary_markdown(t))
    assert rows["a"]["ARI s1"] == "0.500"
    assert rows["a"]["ARI s2"] == "–"
    assert "## Failed runs" not in summary_markdown(t)


def test_method_names_include_encoder_and_cluster_when_they_vary(table):
    other = table[table["fusion"] == "concat"].assign(encoder="stats", run_id=lambda t: t["run_id"] + "-stats")
    rows = _method_rows(summary_markdown(pd.concat([table, other], ignore_index=True)))
    assert {"concat / pca / gmm", "concat / stats / gmm", "adaln_attention / pca / gmm"} <= set(rows)
    assert set(_method_rows(summary_markdown(table))) == set(LEVELS)


def test_only_non_default_variants_are_named_and_a_method_column_wins(table):
    raw = table[table["fusion"] == "mean"].assign(variant="raw", run_id=lambda t: t["run_id"] + "-raw")
    mixed = pd.concat([table.assign(variant=np.where(table.index % 2, "default", None)), raw], ignore_index=True)
    assert set(_method_rows(summary_markdown(mixed))) == set(LEVELS) | {"mean [raw]"}
    named = mixed.assign(method=np.where(mixed["fusion"] == "concat", "GraphST", mixed["fusion"]))
    assert set(_method_rows(summary_markdown(named))) == {"GraphST", "adaln_attention", "mean"}


def test_missing_column_is_named(table):
    with pytest.raises(KeyError, match="ari_after"):
        summary_markdown(table.drop(columns="ari_after"))


def test_match_labels_undoes_a_permutation():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 5, 200)
    perm = np.array([3, 0, 4, 1, 2])
    np.testing.assert_array_equal(match_labels(perm[reference], reference).astype(int), reference)
    # Names need not match in kind; missing labels stay missing.
    labels = np.array([f"d{p}" for p in perm[reference]], dtype=object)
    labels[:3] = None
    out = match_labels(labels, reference)
    assert all(v is None for v in out[:3])
    np.testing.assert_array_equal(out[3:].astype(int), reference[3:])


def test_match_labels_keeps_extra_labels_apart():
    reference = np.array(["a", "a", "b", "b", "b", "b"])
    labels = np.array(["b", "b", "a", "a", "c", "c"])  # one label more than the reference
    out = match_labels(labels, reference)
    assert list(out[:4]) == ["a", "a", "b", "b"]
    assert out[4] == out[5] and out[4] not in {"a", "b"}


def test_plots_and_report_without_run_folders(table, tmp_path, caplog):
    assert plot_ari(table, tmp_path / "ari.png").read_bytes().startswith(b"\x89PNG")
    with caplog.at_level(logging.WARNING, logger="mihd.evaluate._report"):
        assert plot_domain_grid(table, "151673", tmp_path / "d.png") is None
    assert "no domain maps" in caplog.text and not (tmp_path / "d.png").exists()
    paths = write_report(table, tmp_path / "report", command="mihd evaluate")
    assert set(paths) == {"summary", "ari_plot"}
    assert paths["summary"].read_text() == summary_markdown(table, command="mihd evaluate")
    assert paths["ari_plot"].name == "ari_by_method.png" and paths["ari_plot"].read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory):
    """Three finished runs of one slice: two permutations of the truth, one with spots shuffled and dropped."""
    from mihd.datasets import synthetic_slice

    root = tmp_path_factory.mktemp("runs")
    adata = synthetic_slice(300, n_genes=20, n_domains=4, image=False, seed=0)
    truth = adata.obs["ground_truth"].cat.codes.to_numpy()
    adata.obs["ground_truth"] = adata.obs["ground_truth"].astype(object)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("ground_truth")] = "NA"
    dropped = adata.obs_names[10:20]
    rows = []
    for fusion, ari, perm in (("concat", 0.6, [2, 0, 3, 1]), ("gnn", 0.5, [1, 3, 0, 2]), ("mean", 0.4, [0, 1, 2, 3])):
        run = adata.copy()
        run.obs[f"mihd_{fusion}_refined"] = pd.Categorical(np.array(perm)[truth].astype(str))
        if fusion == "mean":
            run = run[np.random.default_rng(0).permutation(run.n_obs)]
            run = run[~run.obs_names.isin(dropped)].copy()
        (root / fusion).mkdir()
        run.write_h5ad(root / fusion / "adata.h5ad")
        rows += [_row(fusion, "s1", 0, ari, run_dir=root / fusion), _row(fusion, "s1", 1, ari, run_dir=root / "missing")]
    return pd.DataFrame(rows), adata.obs_names, dropped


def test_domain_panels_align_spots_and_match_colours(run_folders):
    table, obs_names, dropped = run_folders
    adata, keys, titles = _domain_panels(table, "s1")  # default seed: 0, the smallest
    assert keys == ["panel_0", "panel_1", "panel_2", "ground_truth"]
    assert titles[:3] == ["concat: ARI 0.600", "gnn: ARI 0.500", "mean: ARI 0.400"]
    assert list(adata.obs_names) == list(obs_names)
    first = adata.obs["panel_0"]
    np.testing.assert_array_equal(adata.obs["panel_1"], first)  # permuted labels map back onto the first panel
    assert list(first.cat.categories) == ["0", "1", "2", "3"]  # the first run's order fixes the colours
    kept = ~adata.obs_names.isin(dropped)
    np.testing.assert_array_equal(adata.obs["panel_2"][kept], first[kept])
    assert adata.obs["panel_2"][~kept].isna().all()
    assert adata.obs["ground_truth"].isna().sum() == 5 and "NA" not in adata.obs["ground_truth"].cat.categories


def test_domain_grid_and_full_report(run_folders, tmp_path):
    table = run_folders[0]
    assert plot_domain_grid(table, "s1", tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
    paths = write_report(table, tmp_path)
    assert paths["domains"] == tmp_path / "domains_s1.png" and paths["domains"].read_bytes()[:4] == b"\x89PNG"
