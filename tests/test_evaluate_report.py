"""Evaluation report: Markdown summary, ARI box plot, spatial domain grid."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from mihd.pl import spatial_domains
from mihd.pl._spatial import _palette, domain_legends, match_labels

from mihd.evaluate._report import (
    _domain_panels,
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
    assert match_labels(perm[reference], reference) == {p: i for i, p in enumerate(perm)}
    # Names need not match in kind; missing labels are ignored.
    labels = np.array([f"d{p}" for p in perm[reference]], dtype=object)
    labels[:3] = None
    assert match_labels(labels, reference) == {f"d{p}": i for i, p in enumerate(perm)}


def test_match_labels_leaves_extra_labels_unmatched():
    reference = np.array(["a", "a", "b", "b", "b", "b"])
    labels = np.array(["b", "b", "a", "a", "c", "c"])  # one label more than the reference
    assert match_labels(labels, reference) == {"b": "a", "a": "b"}


def _toy_slice():
    """Truth: three vertical bands A, B, C. Prediction: the same bands under permuted ids (A->2, B->0,
    C->1), except a block of band C called 3, a domain the truth does not have; 4 spots unannotated."""
    xy = np.array([(x, y) for y in range(10) for x in range(12)], dtype=float)
    truth = np.array(["A", "B", "C"], dtype=object)[(xy[:, 0] // 4).astype(int)]
    pred = np.array(["2", "0", "1"])[(xy[:, 0] // 4).astype(int)]
    pred[(xy[:, 0] >= 10) & (xy[:, 1] >= 6)] = "3"
    truth[:4] = "NA"
    obs = pd.DataFrame({"pred": pd.Categorical(pred), "truth": truth}, index=[f"s{i}" for i in range(len(xy))])
    return AnnData(obs=obs, obsm={"spatial": xy})


def test_predicted_domains_take_the_colour_of_the_truth_label_they_overlap_most():
    adata = _toy_slice()
    colours = _palette(4)
    legends = domain_legends(adata, ["pred", "truth"], match_to="truth")
    assert {c: rgba for c, (rgba, _) in legends["truth"].items()} == dict(zip("ABC", colours[:3]))
    pred = legends["pred"]
    assert [pred[c][0] for c in ("2", "0", "1")] == colours[:3]
    assert pred["3"][0] == colours[3] and colours[3] not in colours[:3]  # the extra domain: a colour of its own
    assert [text for _, text in pred.values()] == ["2 → A", "0 → B", "1 → C", "3 (no match)"]

    # The figure draws exactly those colours, spot by spot; unannotated spots grey; legends beside the tissue.
    fig = spatial_domains(adata, ["pred", "truth"], titles=["prediction: ARI 0.9", "truth"], match_to="truth",
                          suptitle="toy, seed 0")
    drawn = [ax.collections[0].get_facecolors() for ax in fig.axes[:2]]
    for i, (p, t) in enumerate(zip(adata.obs["pred"], adata.obs["truth"])):
        np.testing.assert_allclose(drawn[0][i], pred[p][0])
        np.testing.assert_allclose(drawn[1][i], legends["truth"][t][0] if t != "NA" else (0.8, 0.8, 0.8, 1.0))
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= box.x1  # outside the tissue, to the right
    assert fig.axes[0].get_title() == "prediction: ARI 0.9" and fig._suptitle.get_text() == "toy, seed 0"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["2 → A", "0 → B", "1 → C", "3 (no match)"]


def test_a_domain_that_overlaps_no_truth_label_stays_unmatched():
    adata = _toy_slice()
    adata.obs["truth"] = np.where(adata.obs["pred"] == "3", "NA", adata.obs["truth"])  # block 3 unannotated
    legends = domain_legends(adata, ["pred"], match_to="truth")
    assert legends["pred"]["3"] == (_palette(4)[3], "3 (no match)")


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


def test_domain_panels_align_spots_and_match_colours_to_the_truth(run_folders):
    table, obs_names, dropped = run_folders
    adata, keys, titles, seed, match_to = _domain_panels(table, "s1")  # default seed: 0, the smallest
    assert seed == 0 and match_to == "ground_truth"
    assert keys == ["panel_0", "panel_1", "panel_2", "ground_truth"]
    assert titles[:3] == ["concat: ARI 0.600, NMI 0.700", "gnn: ARI 0.500, NMI 0.600", "mean: ARI 0.400, NMI 0.500"]
    assert list(adata.obs_names) == list(obs_names)
    kept = ~adata.obs_names.isin(dropped)
    assert adata.obs["panel_2"][~kept].isna().all() and adata.obs["panel_2"][kept].notna().all()
    assert adata.obs["ground_truth"].isna().sum() == 5 and "NA" not in adata.obs["ground_truth"].cat.categories
    # Every panel's labels are its own (permuted) ids, each drawn in the colour of the truth label it covers.
    legends = domain_legends(adata, keys, match_to=match_to)
    truth = adata.obs["ground_truth"]
    for key in keys[:3]:
        assert set(adata.obs[key].dropna()) == {"0", "1", "2", "3"}
        spots = truth.notna() & adata.obs[key].notna()
        for label, t in zip(adata.obs[key][spots], truth[spots]):
            assert legends[key][label][0] == legends["ground_truth"][t][0]


def test_domain_grid_and_full_report(run_folders, tmp_path, monkeypatch):
    import mihd.evaluate._report as report

    table = run_folders[0]
    drawn = {}
    save = report._save_png
    monkeypatch.setattr(report, "_save_png", lambda fig, path: (drawn.update(
        suptitle=fig._suptitle.get_text(), titles=[ax.get_title() for ax in fig.axes]), save(fig, path))[1])
    assert plot_domain_grid(table, "s1", tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
    assert drawn["suptitle"] == "slice s1, seed 0: refined domains of each method, colours matched to the ground truth"
    assert drawn["titles"][:4] == ["concat: ARI 0.600, NMI 0.700", "gnn: ARI 0.500, NMI 0.600",
                                   "mean: ARI 0.400, NMI 0.500", "ground truth"]
    monkeypatch.undo()
    assert plot_domain_grid(table, "s1", tmp_path / "none.png", seed=1) is None  # seed 1's folders are missing
    paths = write_report(table, tmp_path)
    assert paths["domains"] == tmp_path / "domains_s1.png" and paths["domains"].read_bytes()[:4] == b"\x89PNG"


def test_the_run_folder_domain_map_matches_colours_to_the_truth_and_titles_its_scores(tiny_slice):
    from mihd._config import compose
    from mihd.train import train
    from mihd.train._outputs import domain_figure

    cfg = compose("train", ["fusion=concat", "trainer=fast", "data.n_domains=4"], stamp_run_dir=False)
    result = train(cfg, adata=tiny_slice.copy(), write=False)
    fig = domain_figure(result, cfg, truth_key="ground_truth")
    before, after = (result.metrics["scores"][s] for s in ("before_refinement", "after_refinement"))
    assert [ax.get_title() for ax in fig.axes] == [
        f"domains: ARI {before['ari']:.3f}, NMI {before['nmi']:.3f}",
        f"refined domains: ARI {after['ari']:.3f}, NMI {after['nmi']:.3f}", "ground truth"]
    assert "seed 0" in fig._suptitle.get_text() and "K = 4" in fig._suptitle.get_text()
    keys = [result.label_key, result.refined_key, "ground_truth"]
    legends = domain_legends(result.adata, keys, match_to="ground_truth")
    truth_colours = {rgba for rgba, _ in legends["ground_truth"].values()}
    for key, ax in zip(keys[:2], fig.axes):
        matched = match_labels(result.adata.obs[key], result.adata.obs["ground_truth"])
        assert len(matched) == 3  # 3 truth domains, 4 predicted: one extra domain
        for label, (rgba, text) in legends[key].items():
            if label in matched:
                assert rgba == legends["ground_truth"][matched[label]][0] and text == f"{label} → {matched[label]}"
            else:
                assert rgba not in truth_colours and text == f"{label} (no match)"
        spot_colours = ax.collections[0].get_facecolors()
        for i, label in enumerate(result.adata.obs[key]):
            np.testing.assert_allclose(spot_colours[i], legends[key][label][0])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_the_image_section_shows_weight_share_and_gain_per_method_and_slice():
    rows = []
    for seed in range(3):
        for variant, ari in (("default", 0.9), ("no_image", 0.7)):
            rows.append(_row("gated", "synth", seed, ari + 0.01 * seed, variant=variant,
                             image_weight=1.0 if variant == "default" else np.nan, image_agreement=0.7 if variant == "default" else np.nan,
                             image_share=0.4 if variant == "default" else np.nan, depth_share=0.3, depth_share_pcs=0.1))
        rows.append(_row("genes_only", "synth", seed, 0.6, variant="default", image_weight=np.nan, image_agreement=np.nan,
                         image_share=np.nan, depth_share=0.3, depth_share_pcs=0.1))
    md = summary_markdown(pd.DataFrame(rows))
    section = md.split("## The image", 1)[1]
    line = next(r for r in section.splitlines() if r.startswith("| gated |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["gated", "synth", "1.00"] and "0.40" in cells and "+0.200" in cells  # gain = 0.91 - 0.71
    assert "| genes_only |" not in section  # a method that never sees the image has no row
    assert "## Datasets" in md and "0.30" in md.split("## Datasets", 1)[1]


def test_no_image_section_without_image_columns(table):
    md = summary_markdown(table)
    assert "## The image" not in md and "## Datasets" not in md
