"""Issue 17 acceptance: bad inputs, each refused with one line that names the key / file / option and
what would work, before any data is read where the input allows it, leaving no file behind.

Every case runs with the working folder set to an empty ``tmp_path`` (so default output folders
would show up there) and checks that ``tmp_path`` is unchanged afterwards.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mihd.data
import mihd.evaluate._evaluate as evaluate_mod
import mihd.train._runner as runner
from mihd._config import ConfigError, compose
from mihd.cli import main
from mihd.evaluate import evaluate, split_overrides
from mihd.train import train

SMALL = ["trainer=fast", "encoder.gene_options.n_top_genes=50", "encoder.gene_options.n_comps=10"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_slice):
    """Small inputs, outside the tests' own tmp_path: good and broken .h5ad files, a file, a finished run."""
    root = tmp_path_factory.mktemp("inputs")
    out = {}

    def h5ad(name, adata):
        path = root / f"{name}.h5ad"
        adata.write_h5ad(path)
        out[name] = path

    h5ad("good", tiny_slice)
    h5ad("empty", tiny_slice[:0].copy())
    zero = tiny_slice.copy()
    zero.X = sp.csr_matrix(zero.shape, dtype=np.float32)
    h5ad("zero", zero)
    no_labels = tiny_slice.copy()
    no_labels.obs["ground_truth"] = pd.Categorical([np.nan] * no_labels.n_obs, categories=["Layer_1"])
    h5ad("all_na", no_labels)
    coordless = tiny_slice.copy()
    del coordless.obsm["spatial"]
    h5ad("coordless", coordless)
    out["corrupt"] = root / "corrupt.h5ad"
    out["corrupt"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really an h5ad" * 20)
    out["plain_file"] = root / "a_file.txt"
    out["plain_file"].write_text("not a folder\n")
    out["csv"] = root / "counts.csv"
    out["csv"].write_text("gene,a\n")
    finished = root / "finished_run"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    out["finished"] = finished
    return out


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder, checked to be empty again after the case."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert _tree(tmp_path) == set(), f"files left behind: {sorted(_tree(tmp_path))}"


def _no_reading(monkeypatch):
    """Fail the test if any slice is read, inspected or prepared."""
    def fail(*_a, **_k):
        pytest.fail("data was read before the bad input was refused")

    monkeypatch.setattr(runner, "load_slice", fail)
    monkeypatch.setattr(mihd.data, "inspect_slice", fail)  # the plan's look at file headers
    monkeypatch.setattr(evaluate_mod, "_prepare_once", fail)


def _no_preparing(monkeypatch):
    """Reading is allowed (the input is only known then), preparing features or training is not."""
    def fail(*_a, **_k):
        pytest.fail("features were prepared before the bad input was refused")

    monkeypatch.setattr(runner, "prepare_slice_inputs", fail)
    monkeypatch.setattr(evaluate_mod, "_prepare_once", fail)


def _one_line_error(capsys, cmd: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"mihd {cmd}: error:")]
    assert len(lines) == 1, err
    after = err.split(lines[0], 1)[1].lstrip("\n").splitlines()
    assert not after or after[0].startswith("(set MIHD_DEBUG=1"), f"the message runs over one line:\n{err}"
    return lines[0]


def _read_only(monkeypatch, target: Path):
    """Make ``target`` look like it is on a read-only file system (no such mount exists in CI)."""
    real_access, real_statvfs = os.access, os.statvfs

    class _RO:
        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            return os.ST_RDONLY | self._st.f_flag if name == "f_flag" else getattr(self._st, name)

    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == target and mode & os.W_OK else real_access(p, mode, **k))
    monkeypatch.setattr(os, "statvfs", lambda p: _RO(real_statvfs(p)) if Path(p) == target else real_statvfs(p))


# --------------------------------------------------------------------------- mihd train: refused before any data is read

TRAIN_BEFORE_READ = [
    # unknown keys, with or without +, at any depth: a did-you-mean from the composed config's keys
    ("typo", ["trainer.max_epoch=5"], ["trainer.max_epoch", "did you mean `trainer.max_epochs`"]),
    ("typo_plus", ["+trainer.max_epoch=5"], ["trainer.max_epoch", "did you mean `trainer.max_epochs`"]),
    ("typo_plusplus", ["++trainer.max_epoch=5"], ["did you mean `trainer.max_epochs`"]),
    ("no_group_prefix", ["max_epochs=5"], ["did you mean `trainer.max_epochs`"]),
    ("typo_lr", ["trainer.lr_rate=0.1"], ["trainer.lr_rate", "trainer.lr"]),
    ("british_spelling", ["+spatial.n_neighbours=6"], ["spatial.n_neighbours", "did you mean `spatial.n_neighbors`"]),
    ("typo_group_key", ["cluster.optoins.n_init=3"], ["cluster.optoins", "cluster.options"]),
    ("typo_refine", ["refine.n_neighbor=6"], ["did you mean `refine.n_neighbors`"]),
    ("typo_data", ["data.n_domain=7"], ["did you mean `data.n_domains`"]),
    ("typo_annotation", ["+data.annotation_keys=x"], ["did you mean `data.annotation_key`"]),
    ("plural_seed", ["seeds=1"], ["seeds", "did you mean `seed`"]),
    ("deep_unknown", ["foo.bar.baz=1"], ["foo.bar.baz", "top-level keys"]),
    ("delete_unknown", ["~trainer.lr_x"], ["trainer.lr_x", "trainer.lr"]),
    ("no_value", ["trainer.max_epochs"], ["trainer.max_epochs=<value>"]),
    # unknown group options: mihd's own line with the options, no Hydra wall
    ("cluster_option", ["cluster=spectral"], ["spectral", "gmm, kmeans, leiden, mclust"]),
    ("encoder_option", ["encoder=resnet"], ["resnet", "default", "ssl_cnn"]),
    ("fusion_option", ["fusion=typo"], ["'typo'", "gated", "concat"]),
    ("trainer_option", ["trainer=fastest"], ["fastest", "did you mean trainer=fast"]),
    ("data_option", ["data=visum"], ["visum", "did you mean data=visium"]),
    ("group_of_evaluate", ["launcher=slurm"], ["launcher=", "data=, encoder=, fusion=, cluster=, trainer="]),
    # values
    ("seed_text", ["seed=abc"], ["seed='abc'", "whole number"]),
    ("seed_negative", ["seed=-1"], ["seed=-1", ">= 0"]),
    ("one_domain", ["data.n_domains=1"], ["data.n_domains=1", ">= 2"]),
    ("zero_epochs", ["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"]),
    ("progress_bar_value", ["trainer.progress_bar=sometimes"], ["trainer.progress_bar='sometimes'", "auto"]),
    ("cluster_start", ["cluster.start=random"], ["cluster.start='random'", "inputs", "free"]),
    ("neighbours_text", ["spatial.n_neighbors=many"], ["spatial.n_neighbors='many'", "auto"]),
    ("unannotated_string", ["data.unannotated=undetermined"], ["data.unannotated", "data.unannotated=[undetermined]"]),
    ("fusion_option_key", ["+fusion.options.hiden=3"], ["fusion.options", "hiden"]),
    ("gene_option_key", ["encoder.gene_options.n_top_gene=100"], ["n_top_gene", "n_top_genes"]),
    ("modality", ["trainer.modality_weights.imgae=1"], ["imgae", "gene and image"]),
    # required paths
    ("precomputed_without_path", ["encoder=precomputed"], ["encoder.image_options.path is required", "emb.npy"]),
    ("visium_without_path", ["data=visium", "data.n_domains=3"], ["data.path is required", "data.path="]),
]


@pytest.mark.parametrize("args, named", [c[1:] for c in TRAIN_BEFORE_READ], ids=[c[0] for c in TRAIN_BEFORE_READ])
def test_train_refuses_before_reading(args, named, workdir, monkeypatch, capsys):
    _no_reading(monkeypatch)
    assert main(["train", *args]) == 1
    line = _one_line_error(capsys, "train")
    for text in named:
        assert text in line, line
    assert "Config search path" not in line and "Traceback" not in line


def test_train_refuses_output_folders_before_reading(files, workdir, monkeypatch, capsys):
    _no_reading(monkeypatch)
    cases = [
        (f"run_dir={files['plain_file']}", ["run_dir=", "is a file, not a folder"]),
        (f"run_dir={files['plain_file']}/run", ["run_dir=", "is a file"]),
        (f"run_dir={files['finished']}", ["already holds a finished run", "overwrite=true"]),
    ]
    for override, named in cases:
        assert main(["train", "trainer=fast", override]) == 1
        line = _one_line_error(capsys, "train")
        assert all(t in line for t in named), line


@pytest.mark.parametrize("why", ["read-only", "not writable"])
def test_train_refuses_an_unwritable_run_dir_before_reading(why, workdir, tmp_path_factory, monkeypatch, capsys):
    _no_reading(monkeypatch)
    parent = tmp_path_factory.mktemp("unwritable")
    if why == "read-only":
        _read_only(monkeypatch, parent)
    else:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == parent else real(p, mode, **k))
    assert main(["train", "trainer=fast", f"run_dir={parent}/run"]) == 1
    line = _one_line_error(capsys, "train")
    assert f"run_dir='{parent}/run'" in line and ("read-only file system" if why == "read-only" else "not writable") in line
    assert "Errno" not in line
    assert list(parent.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (a folder nobody can write into, root included)")
def test_train_refuses_a_run_dir_even_root_cannot_make_before_reading(workdir, monkeypatch, capsys):
    """os.access says yes to root on every path; the check makes (and removes) a real scratch folder."""
    _no_reading(monkeypatch)
    assert main(["train", "trainer=fast", "run_dir=/proc/mihd-run"]) == 1
    line = _one_line_error(capsys, "train")
    assert "run_dir='/proc/mihd-run' cannot be written" in line and "'/proc' is not writable" in line


# --------------------------------------------------------------------------- mihd train: refused after reading, before training


def _h5ad_args(path, *extra):
    return ["data=h5ad", f"data.path={path}", "data.n_domains=3", "fusion=genes_only", *SMALL, *extra]


DATA_CASES = [
    ("corrupt_h5ad", "corrupt", [], ["corrupt.h5ad", "is not a readable .h5ad file"]),
    ("no_spots", "empty", [], ["holds no spots"]),
    ("all_zero_counts", "zero", [], ["every count in X is zero", "raw counts"]),
    ("annotation_key_typo", "good", ["data.annotation_key=layer_typo"],
     ["data.annotation_key='layer_typo'", "ground_truth", "obs columns"]),
    ("all_na_annotation", "all_na", [], ["obs['ground_truth'] has no label", "data.annotation_key=null"]),
    ("all_unannotated_labels", "good", ["data.unannotated=[domain_0,domain_1,domain_2]"], ["has no label", "data.unannotated"]),
    ("coords_fusion_without_coords", "coordless", ["fusion=gnn"], ["fusion 'gnn' needs spatial coordinates", "concat"]),
    ("more_domains_than_spots", "good", ["data.n_domains=500"], ["data.n_domains=500", "number of spots (300)"]),
    ("missing_annotation_table", "good", ["data.annotation=no_such_table.tsv"], ["no_such_table.tsv", "does not exist"]),
]


@pytest.mark.parametrize("which, extra, named", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_train_refuses_bad_data_before_training(which, extra, named, files, workdir, monkeypatch, capsys):
    _no_preparing(monkeypatch)
    run_dir = workdir / "run"
    assert main(["train", *_h5ad_args(files[which], f"run_dir={run_dir}", *extra)]) == 1
    line = _one_line_error(capsys, "train")
    for text in named:
        assert text in line, line


@pytest.mark.parametrize(
    "path, named",
    [("missing.h5ad", ["missing.h5ad", "does not exist", ".h5ad file"]), ("csv", ["counts.csv", "Cannot read", "expected"])],
    ids=["missing_path", "unreadable_kind"],
)
def test_train_names_a_path_it_cannot_read(path, named, files, workdir, monkeypatch, capsys):
    _no_preparing(monkeypatch)
    target = files.get(path, workdir / path)
    assert main(["train", *_h5ad_args(target, f"run_dir={workdir / 'run'}")]) == 1
    line = _one_line_error(capsys, "train")
    assert all(t in line for t in named), line


def test_a_missing_dataset_slice_mentions_mihd_data_dir(workdir, monkeypatch, capsys):
    monkeypatch.setenv("MIHD_DATA_DIR", str(workdir / "nowhere"))
    _no_preparing(monkeypatch)
    assert main(["train", "data=dlpfc", "data.slice=999999", "trainer=fast", f"run_dir={workdir / 'run'}"]) == 1
    line = _one_line_error(capsys, "train")
    assert "999999" in line and "does not exist" in line and "MIHD_DATA_DIR" in line


# --------------------------------------------------------------------------- mihd evaluate

EVALUATE_BEFORE_READ = [
    ("typo", ["trainer.max_epoch=5"], ["trainer.max_epoch", "did you mean `trainer.max_epochs`"]),
    ("typo_plus", ["+trainer.max_epoch=5"], ["did you mean `trainer.max_epochs`"]),
    ("evaluate_key_typo", ["out_dri=x"], ["out_dri", "did you mean `out_dir`"]),
    ("launcher_key_typo", ["launcher.workerz=2"], ["launcher.workerz", "did you mean `launcher.workers`"]),
    ("launcher_option", ["launcher=slurmm"], ["slurmm", "slurm"]),
    ("experiment_option", ["experiment=dev"], ["'dev'", "dev_set"]),
    ("cluster_option_for_every_run", ["cluster=spectral"], ["spectral", "gmm"]),
    ("fusion_name", ["fusions=[conact]"], ["conact", "did you mean concat"]),
    ("encoder_name", ["encoders=[resnet]"], ["resnet", "default"]),
    ("seed_text", ["seeds=[a]"], ["seeds: 'a'", "whole number"]),
    ("train_seed_text", ["seed=abc", "fusions=[concat,gnn]"], ["seed='abc'", "whole number"]),
    ("run_dir_per_run", ["run_dir=/tmp/x"], ["run_dir", "set out_dir instead"]),
    ("malformed_variant", ["variants=[{nam:x}]"], ["variants:", "name: <label>"]),
]


@pytest.mark.parametrize("args, named", [c[1:] for c in EVALUATE_BEFORE_READ], ids=[c[0] for c in EVALUATE_BEFORE_READ])
def test_evaluate_refuses_before_reading(args, named, workdir, monkeypatch, capsys):
    _no_reading(monkeypatch)
    assert main(["evaluate", f"out_dir={workdir / 'ev'}", "seeds=[0]", *args]) == 1
    line = _one_line_error(capsys, "evaluate")
    for text in named:
        assert text in line, line


def test_evaluate_refuses_output_folders_before_reading(files, workdir, tmp_path_factory, monkeypatch, capsys):
    _no_reading(monkeypatch)
    assert main(["evaluate", f"out_dir={files['plain_file']}", "fusions=[concat]", "seeds=[0]"]) == 1
    assert "out_dir=" in (line := _one_line_error(capsys, "evaluate")) and "is a file" in line
    parent = tmp_path_factory.mktemp("ro")
    _read_only(monkeypatch, parent)
    assert main(["evaluate", f"out_dir={parent}/ev", "fusions=[concat]", "seeds=[0]"]) == 1
    line = _one_line_error(capsys, "evaluate")
    assert f"out_dir='{parent}/ev'" in line and "read-only file system" in line and "Errno" not in line


def test_two_h5ad_slices_without_names_are_a_plan_error(files, workdir, monkeypatch, capsys):
    _no_preparing(monkeypatch)
    slices = f"slices=[{{data:h5ad,path:'{files['good']}',n_domains:3}},{{data:h5ad,path:'{files['coordless']}',n_domains:3}}]"
    assert main(["evaluate", slices, "fusions=[concat]", "seeds=[0]", f"out_dir={workdir / 'ev'}"]) == 1
    line = _one_line_error(capsys, "evaluate")
    assert "both named 'h5ad'" in line and "name:" in line


# --------------------------------------------------------------------------- Python API


def test_api_compose_refuses_unknown_keys_and_options(workdir, monkeypatch):
    _no_reading(monkeypatch)
    with pytest.raises(ConfigError, match=r"did you mean `trainer.max_epochs`"):
        compose("train", ["+trainer.max_epoch=5"])
    with pytest.raises(ConfigError, match=r"unknown cluster option 'spectral'.*gmm"):
        compose("train", ["cluster=spectral"])
    with pytest.raises(ConfigError, match=r"unknown launcher option 'nope'.*local"):
        compose("evaluate", ["launcher=nope"])


def test_api_train_refuses_a_hand_built_config_with_an_unknown_key(workdir, monkeypatch):
    from omegaconf import OmegaConf

    _no_reading(monkeypatch)
    cfg = OmegaConf.to_container(compose("train", ["trainer=fast"], stamp_run_dir=False), resolve=True)
    cfg["trainer"]["max_epoch"] = 5
    with pytest.raises(ConfigError, match=r"'trainer.max_epoch'.*did you mean `trainer.max_epochs`") as info:
        train(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("make, named", [
    (lambda a: a[:0].copy(), "holds no spots"),
    (lambda a: ad.AnnData(sp.csr_matrix(a.shape, dtype=np.float32), obs=a.obs, obsm=dict(a.obsm)), "every count in X is zero"),
], ids=["no_spots", "all_zero_counts"])
def test_api_train_refuses_unusable_anndata(make, named, tiny_slice, workdir, monkeypatch):
    _no_preparing(monkeypatch)
    cfg = compose("train", ["data=synthetic", "data.n_domains=3", "fusion=genes_only", *SMALL, f"run_dir={workdir / 'r'}"])
    with pytest.raises(ValueError, match=named) as info:
        train(cfg, adata=make(tiny_slice))
    assert "\n" not in str(info.value)


def test_api_evaluate_requires_out_dir(workdir, monkeypatch):
    _no_reading(monkeypatch)
    eval_args, train_args = split_overrides(["fusions=[concat]", "seeds=[0]", "trainer=fast"])
    cfg = compose("evaluate", eval_args)
    assert cfg.out_dir is None
    with pytest.raises(ValueError, match=r"evaluate\(\) needs out_dir: evaluate\(cfg, out_dir="):
        evaluate(cfg, train_args, progress=False)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        evaluate(cfg, train_args, out_dir=__file__, progress=False)


# --------------------------------------------------------------------------- what works instead


def test_legitimate_optional_keys_still_compose(workdir):
    cfg = compose("train", ["+spatial.context_neighbors=18", "encoder.feature_scaling=zscore", "+fusion.options.hidden=16",
                            "data=visium", "data.path=x", "data.n_domains=3", "data.fullres_image=he.tif",
                            "+trainer.max_epochs=5", "cluster=kmeans", "+cluster.start=free"])
    assert cfg.spatial.context_neighbors == 18 and cfg.encoder.feature_scaling == "zscore"
    assert cfg.fusion.options.hidden == 16 and cfg.trainer.max_epochs == 5 and cfg.cluster.start == "free"


def test_duplicate_barcodes_are_made_unique_with_a_warning_naming_them(tiny_slice, caplog):
    from mihd.data._validate import check_slice

    adata = tiny_slice.copy()
    names = adata.obs_names.to_numpy().copy()
    names[1], names[2] = names[0], names[0]
    adata.obs_names = names
    with caplog.at_level(logging.WARNING):
        check_slice(adata, source="toy.h5ad")
    assert adata.obs_names.is_unique
    assert "toy.h5ad" in caplog.text and str(names[0]) in caplog.text and "made unique" in caplog.text


def test_fusion_names_read_without_torch_match_the_registry():
    from mihd._config import scan_fusion_names
    from mihd.fusion import list_fusions

    assert scan_fusion_names() == list_fusions()


def test_data_root_is_the_same_from_any_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MIHD_DATA_DIR", raising=False)
    here = compose("train", ["data=dlpfc"]).data.root
    monkeypatch.chdir(tmp_path)
    there = compose("train", ["data=dlpfc"]).data.root
    assert here == there and Path(here).is_absolute()
    monkeypatch.setenv("MIHD_DATA_DIR", str(tmp_path))
    assert compose("train", ["data=starmap_mpfc"]).data.root == str(tmp_path.resolve() / "starmap_mpfc")


def test_a_config_error_comes_back_without_torch_scanpy_or_lightning(tmp_path):
    code = ("import sys; from mihd.cli import main; rc = main(['train', '+trainer.max_epoch=5']); "
            "heavy = [m for m in ('torch', 'scanpy', 'pytorch_lightning', 'anndata') if m in sys.modules]; "
            "print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == "1 []", out.stdout + out.stderr
    assert "did you mean `trainer.max_epochs`" in out.stderr


def test_progress_bar_auto_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert runner.show_progress("auto") is False and runner.show_progress(True) is True
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert runner.show_progress("auto") is True and runner.show_progress(False) is False


def test_api_train_logs_each_step_and_keeps_lightning_quiet(tiny_slice, capfd, caplog):
    cfg = compose("train", ["data=synthetic", "data.n_domains=3", "fusion=concat", "encoder.image=none", *SMALL,
                            "trainer.max_epochs=1"])
    with caplog.at_level(logging.INFO, logger="mihd"):
        train(cfg, adata=tiny_slice.copy(), write=False)
    out = capfd.readouterr()
    assert "GPU available" not in out.out + out.err + caplog.text and "Tip:" not in out.out + out.err + caplog.text
    for step in ("preparing features", "training concat for 1 epochs", "trained in", "clustered in"):
        assert step in caplog.text, caplog.text
    assert "features computed in" in caplog.text or "features loaded from the cache in" in caplog.text
