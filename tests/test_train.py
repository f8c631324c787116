"""The runner and the CLI end to end on tiny synthetic slices (fast trainer config)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mihd.cli import compose, config_dir, main
from mihd.data import write_visium_folder
from mihd.fusion import list_fusions
from mihd.train import train


@pytest.fixture(scope="module")
def visium_folder(tmp_path_factory, tiny_slice):
    return write_visium_folder(tiny_slice, tmp_path_factory.mktemp("visium") / "toy", positions_format="v2")


def _overrides(folder, run_dir, *extra):
    return [
        "data=visium",
        f"data.path={folder}",
        "data.annotation=truth.tsv",
        "data.n_domains=3",
        "trainer=fast",
        f"run_dir={run_dir}",
        "encoder.gene_options.n_top_genes=50",
        "encoder.gene_options.n_comps=10",
        *extra,
    ]


def test_cli_end_to_end_writes_every_output(visium_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "fusion=adaln_attention", *_overrides(visium_folder, run_dir)]) == 0
    out = capsys.readouterr().out
    assert "after_refinement" in out and "ari" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fusion"] == "adaln_attention" and metrics["seed"] == 0
    for stage in ("before_refinement", "after_refinement"):
        s = metrics["scores"][stage]
        assert set(s) >= {"ari", "nmi", "ami", "homogeneity", "completeness", "chaos", "pas"}
        assert -1 <= s["ari"] <= 1
    assert metrics["training"]["epochs"] == 3 and metrics["config"]["fusion"]["name"] == "adaln_attention"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "domains.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    import anndata as ad

    adata = ad.read_h5ad(run_dir / "adata.h5ad")
    assert adata.obsm["X_mihd_adaln_attention"].shape == (adata.n_obs, metrics["config"]["out_dim"])
    assert adata.obs["mihd_adaln_attention_refined"].nunique() <= 3
    # nothing half-written is left behind
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("fusion", list_fusions())
def test_every_registered_fusion_trains(fusion, visium_folder, tmp_path):
    cfg = compose("train", [f"fusion={fusion}", *_overrides(visium_folder, tmp_path / fusion)])
    result = train(cfg, write=False)
    emb = result.adata.obsm[f"X_mihd_{fusion}"]
    assert emb.shape[0] == result.adata.n_obs and np.isfinite(emb).all()
    assert result.adata.obs[result.label_key].nunique() == 3


def test_same_seed_same_labels_on_cpu(visium_folder, tmp_path):
    cfg = compose("train", ["fusion=attention", "seed=3", *_overrides(visium_folder, tmp_path / "a")])
    a = train(cfg, write=False).adata.obs["mihd_attention"].to_numpy()
    b = train(cfg, write=False).adata.obs["mihd_attention"].to_numpy()
    assert (a == b).all()


def test_coords_fusion_on_coordless_data_stops_before_training(tiny_slice, tmp_path, capsys, monkeypatch):
    adata = tiny_slice.copy()
    del adata.obsm["spatial"]
    del adata.uns["spatial"]
    path = tmp_path / "nocoords.h5ad"
    adata.write_h5ad(path)
    import mihd.train._runner as runner

    monkeypatch.setattr(runner, "_fit", lambda *a, **k: pytest.fail("training started"))
    code = main(["train", "fusion=adaln_attention", "data=h5ad", f"data.path={path}", "data.n_domains=3", "trainer=fast", f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 1
    assert "adaln_attention" in err and "obsm['spatial']" in err and "concat" in err
    assert not (tmp_path / "r").exists()


def test_coordless_data_works_for_fusions_without_coords(tiny_slice, tmp_path):
    adata = tiny_slice.copy()
    del adata.obsm["spatial"]
    del adata.uns["spatial"]
    cfg = compose("train", ["fusion=concat", "data=h5ad", "data.path=unused", "data.n_domains=3", "trainer=fast", f"run_dir={tmp_path}"])
    result = train(cfg, adata=adata, write=False)
    assert "chaos" not in result.metrics["scores"]["after_refinement"]
    assert result.metrics["modalities"] == {"gene": 30}


def test_context_neighbors_stacks_a_wider_gene_mean(tiny_slice, tmp_path):
    base = ["data=h5ad", "data.path=unused", "data.n_domains=3", "trainer=fast", f"run_dir={tmp_path}"]
    plain = train(compose("train", ["fusion=genes_only", *base]), adata=tiny_slice.copy(), write=False)
    wide = train(compose("train", ["fusion=genes_only", "+spatial.context_neighbors=18", *base]), adata=tiny_slice.copy(), write=False)
    assert plain.metrics["modalities"]["gene"] == 30 and wide.metrics["modalities"]["gene"] == 60
    e_plain, e_wide = plain.adata.obsm["X_mihd_genes_only"], wide.adata.obsm["X_mihd_genes_only"]
    np.testing.assert_allclose(e_wide[:, :30], e_plain, rtol=1e-5, atol=1e-6)  # the 6-NN mean is kept as it was
    assert np.abs(e_wide[:, 30:] - e_plain).mean() > 1e-3  # the wider mean is a different, smoother view
    assert e_wide[:, 30:].std(0).mean() < e_plain.std(0).mean()
    trained = train(compose("train", ["fusion=concat", "+spatial.context_neighbors=18", *base]), adata=tiny_slice.copy(), write=False)
    assert trained.metrics["modalities"]["gene"] == 60


def test_unknown_fusion_lists_registered(capsys):
    assert main(["train", "fusion=nope"]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and all(f in err for f in list_fusions())


def test_missing_data_path_is_named(tmp_path, capsys):
    missing = tmp_path / "absent"
    assert main(["train", "data=visium", f"data.path={missing}", "data.n_domains=3", "trainer=fast"]) == 1
    assert str(missing) in capsys.readouterr().err


def test_missing_n_domains_is_named(capsys):
    assert main(["train", "data.n_domains=null", "trainer=fast"]) == 1
    assert "data.n_domains" in capsys.readouterr().err


@pytest.mark.parametrize("group", ["data", "encoder", "fusion", "cluster", "trainer"])
def test_every_config_in_every_group_composes(group):
    for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
        cfg = compose("train", [f"{group}={option}", "data.path=x", "data.n_domains=3"] if group == "data" else [f"{group}={option}"])
        assert cfg[group] is not None


def test_a_fusion_without_yaml_is_selectable(monkeypatch, tmp_path):
    cfg = compose("train", ["fusion=genes_only"])
    assert cfg.fusion.name == "genes_only"
    import mihd._config

    monkeypatch.setattr(mihd._config, "config_dir", lambda: _copy_configs_without(tmp_path, "attention"))
    cfg = mihd._config.compose("train", ["fusion=attention"])
    assert cfg.fusion.name == "attention" and dict(cfg.fusion.options) == {}


def _copy_configs_without(tmp_path, fusion):
    import shutil

    dst = tmp_path / "configs"
    shutil.copytree(config_dir(), dst)
    (dst / "fusion" / f"{fusion}.yaml").unlink()
    return dst


def test_bundled_slice_floor_is_scored_honestly(tmp_path):
    """The non-learned floor on the real bundled slice: smoothed gene PCA + GMM + refinement.

    Spatially averaged PCA reaches ARI ~0.5-0.6 on 151673 (plain PCA ~0.35-0.42); a
    broken reader, join or metric would land far below 0.35.
    """
    cfg = compose("train", ["fusion=genes_only", f"run_dir={tmp_path}"])
    result = train(cfg, write=False)
    after = result.metrics["scores"]["after_refinement"]
    assert result.metrics["n_spots"] == 3639 and after["n_scored"] == 3611
    assert after["ari"] > 0.35


def test_tl_cluster_domains_and_refine_on_anndata(tiny_slice):
    import mihd

    adata = tiny_slice.copy()
    adata.obsm["X_toy"] = np.asarray(adata.obsm["spatial"], dtype=float)
    mihd.tl.cluster_domains(adata, use_rep="X_toy", n_domains=3, key_added="dom")
    assert adata.obs["dom"].nunique() == 3 and adata.uns["dom"]["params"]["method"] == "gmm"
    mihd.refine_labels(adata, "dom", n_neighbors=6, key_added="dom_refined")
    assert "dom_refined" in adata.obs
    with pytest.raises(KeyError, match="X_missing"):
        mihd.tl.cluster_domains(adata, use_rep="X_missing", n_domains=3)


@pytest.mark.parametrize(
    "override, named",
    [
        ("+cluster.options.n_inti=3", "n_inti"),
        ("+fusion.options.hiden=3", "fusion.options"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("data.n_domains=seven", "data.n_domains"),
        ("trainer.modality_weights.imgae=1", "imgae"),
        ("cluster.space=umap", "cluster.space"),
        ("+spatial.context_neighbors=6", "spatial.context_neighbors"),
        ("+spatial.context_neighbors=wide", "spatial.context_neighbors"),
    ],
)
def test_bad_options_stop_before_reading_or_training(override, named, capsys, monkeypatch):
    import mihd.train._runner as runner

    monkeypatch.setattr(runner, "load_slice", lambda *a, **k: pytest.fail("data was read"))
    assert main(["train", "trainer=fast", override]) == 1
    assert named in capsys.readouterr().err


def test_finished_run_dir_is_not_overwritten_by_accident(visium_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "fusion=genes_only", *_overrides(visium_folder, run_dir)]
    assert main(args) == 0
    first = (run_dir / "metrics.json").read_text()
    assert main(args) == 1
    assert "overwrite=true" in capsys.readouterr().err
    assert (run_dir / "metrics.json").read_text() == first
    assert main([*args, "overwrite=true"]) == 0
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("cmd", ["train", "evaluate"])
def test_subcommand_help_lists_groups_and_keys_without_running(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mihd {cmd}")
    for group in ("data=", "encoder=", "fusion=", "cluster=", "trainer="):
        assert group in out
    assert "adaln_attention" in out and "gated" in out and "more:" in out
    if cmd == "evaluate":
        assert "launcher=" in out and "experiment=" in out and "dev_set" in out


def test_top_level_help_is_plain_text(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "::" not in out and "mihd train" in out


def test_outputs_are_readable_by_the_group_under_umask_022(tmp_path):
    import os
    import stat

    from mihd._io import write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "results.csv", "a,b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_labels_listed_as_unannotated_are_not_scored(tiny_slice):
    base = ["data=synthetic", "data.n_domains=3", "encoder.image=none", "trainer=fast", "fusion=genes_only"]
    a = tiny_slice.copy()
    truth = a.obs["ground_truth"].astype(str).to_numpy().astype(object)
    truth[:40] = "undetermined"
    a.obs["ground_truth"] = truth
    b = tiny_slice.copy()
    b.obs["ground_truth"] = np.where(np.arange(b.n_obs) < 40, None, b.obs["ground_truth"].astype(str).to_numpy().astype(object))
    marked = train(compose("train", [*base, "data.unannotated=[undetermined]"]), adata=a, write=False, progress=False)
    missing = train(compose("train", base), adata=b, write=False, progress=False)
    as_class = train(compose("train", base), adata=a.copy(), write=False, progress=False)
    ari = lambda r: r.metrics["scores"]["after_refinement"]["ari"]  # noqa: E731
    assert ari(marked) == pytest.approx(ari(missing)) and ari(marked) != pytest.approx(ari(as_class))
    with pytest.raises(ValueError, match=r"data.unannotated='undetermined': give a list"):
        train(compose("train", [*base, "data.unannotated=undetermined"]), adata=a, write=False)


def test_writing_the_run_does_not_print_a_line_per_string_column(tiny_slice, tmp_path):
    """anndata logs "... storing 'x' as categorical" for every string column it converts on write (at INFO,
    which the CLI shows); the run folder is written without that noise."""
    import logging

    from anndata.logging import anndata_logger

    from mihd.train import train

    adata = tiny_slice.copy()
    adata.var["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype=object)
    seen: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: seen.append(record.getMessage())
    root, level = logging.getLogger(), logging.getLogger().level
    anndata_logger.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        cfg = compose("train", ["fusion=genes_only", "data.n_domains=3", "trainer=fast", f"run_dir={tmp_path / 'r'}"])
        train(cfg, adata=adata, progress=False)
    finally:
        root.setLevel(level)
        anndata_logger.removeHandler(handler)
    assert (tmp_path / "r" / "adata.h5ad").is_file()
    assert not [m for m in seen if "as categorical" in m], seen
