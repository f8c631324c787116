"""Readers: Visium folders (both position formats), h5ad, dispatch, annotation, bundled and real slices."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_data_dir
from scipy import sparse

from mihd.data import (
    add_annotation,
    dlpfc_151673,
    example_path,
    read_h5ad,
    read_slice,
    read_visium,
    synthetic_slice,
    write_visium_folder,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = shared_data_dir()


@pytest.fixture(scope="module")
def slice_():
    return synthetic_slice(150, n_genes=30, n_domains=3, image_size=96, seed=3, library_id="toy")


@pytest.fixture
def folder(tmp_path, slice_):
    return write_visium_folder(slice_, tmp_path / "toy", positions_format="v1")


def _positions_path(folder: Path) -> Path:
    return next(p for p in (folder / "spatial").glob("tissue_positions*.csv"))


# --------------------------------------------------------------------------- read_visium


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_roundtrip_both_position_formats(tmp_path, slice_, fmt):
    out = write_visium_folder(slice_, tmp_path / "lib", positions_format=fmt)
    expected = {"v1": "tissue_positions_list.csv", "v2": "tissue_positions.csv"}[fmt]
    assert [p.name for p in (out / "spatial").glob("tissue_positions*.csv")] == [expected]

    adata = read_visium(out)
    assert adata.shape == slice_.shape
    assert list(adata.obs_names) == list(slice_.obs_names)
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != slice_.X).nnz == 0
    assert adata.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(adata.obsm["spatial"], slice_.obsm["spatial"])
    for col in ("in_tissue", "array_row", "array_col"):
        np.testing.assert_array_equal(adata.obs[col], slice_.obs[col])
    assert "gene_ids" in adata.var
    lib = adata.uns["spatial"]["lib"]  # library_id defaults to the folder name
    assert lib["scalefactors"] == pytest.approx(slice_.uns["spatial"]["toy"]["scalefactors"])
    img = lib["images"]["lowres"]
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    np.testing.assert_allclose(img, slice_.uns["spatial"]["toy"]["images"]["lowres"], atol=1 / 255)


def test_v2_header_found_by_name_in_any_order(tmp_path, slice_):
    out = write_visium_folder(slice_, tmp_path / "lib", positions_format="v2")
    pos_file = out / "spatial" / "tissue_positions.csv"
    table = pd.read_csv(pos_file)
    table[table.columns[::-1]].to_csv(pos_file, index=False)
    adata = read_visium(out)
    np.testing.assert_array_equal(adata.obsm["spatial"], slice_.obsm["spatial"])


def test_obsm_spatial_is_x_then_y(folder):
    adata = read_visium(folder)
    table = pd.read_csv(_positions_path(folder), header=None, index_col=0).loc[adata.obs_names]
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 0], table[5])  # pxl_col_in_fullres
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 1], table[4])  # pxl_row_in_fullres


def test_lowres_only(folder):
    adata = read_visium(folder, library_id="L")
    assert set(adata.uns["spatial"]["L"]["images"]) == {"lowres"}
    assert read_visium(folder, load_images=False).uns["spatial"]["toy"]["images"] == {}


def test_hires_and_lowres(tmp_path, slice_):
    s = slice_.copy()
    lib = s.uns["spatial"]["toy"]
    lib["images"]["hires"] = np.repeat(np.repeat(lib["images"]["lowres"], 2, axis=0), 2, axis=1)
    lib["scalefactors"]["tissue_hires_scalef"] = 2 * lib["scalefactors"]["tissue_lowres_scalef"]
    adata = read_visium(write_visium_folder(s, tmp_path / "hl"))
    images = adata.uns["spatial"]["hl"]["images"]
    assert set(images) == {"hires", "lowres"}
    assert images["hires"].shape[:2] == tuple(2 * n for n in images["lowres"].shape[:2])


def test_fullres_path_recorded(folder):
    (folder / "image.tif").write_bytes(b"not read")
    adata = read_visium(folder, fullres_image="image.tif")  # relative to the folder
    assert adata.uns["spatial"]["toy"]["metadata"]["fullres_path"] == str((folder / "image.tif").resolve())
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_visium(folder, fullres_image="missing.tif")


@pytest.mark.parametrize(
    "relpath", ["filtered_feature_bc_matrix.h5", "spatial/tissue_positions_list.csv", "spatial/scalefactors_json.json"]
)
def test_missing_required_file_is_named(folder, relpath):
    (folder / relpath).unlink()
    with pytest.raises(FileNotFoundError, match=Path(relpath).name.split(".")[0]):
        read_visium(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_visium(tmp_path / "nowhere")


def test_missing_scalefactor_key_is_named(folder):
    sf_path = folder / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    del sf["tissue_lowres_scalef"]
    sf_path.write_text(json.dumps(sf))
    with pytest.raises(ValueError, match="tissue_lowres_scalef") as err:
        read_visium(folder)
    assert "scalefactors_json.json" in str(err.value)


def test_barcodes_missing_from_positions(folder):
    pos = _positions_path(folder)
    table = pd.read_csv(pos, header=None)
    table.iloc[5:].to_csv(pos, header=False, index=False)
    with pytest.raises(ValueError, match=r"5 of 150 barcodes .* missing from positions file") as err:
        read_visium(folder)
    assert str(table.iloc[0, 0]) in str(err.value) and pos.name in str(err.value)


def test_no_barcode_overlap(folder):
    pos = _positions_path(folder)
    table = pd.read_csv(pos, header=None)
    table[0] = "X" + table[0]
    table.to_csv(pos, header=False, index=False)
    with pytest.raises(ValueError, match="No barcode of the count matrix"):
        read_visium(folder)


def test_nan_coordinates(folder):
    pos = _positions_path(folder)
    table = pd.read_csv(pos, header=None)
    table.loc[[3, 7], 5] = np.nan
    table.to_csv(pos, header=False, index=False)
    with pytest.raises(ValueError, match=r"2 of 150 spots .*tissue_positions_list.csv"):
        read_visium(folder)


def test_out_of_tissue_spots_dropped(tmp_path, slice_):
    s = slice_.copy()
    s.obs["in_tissue"] = np.where(np.arange(s.n_obs) < 10, 0, 1)
    adata = read_visium(write_visium_folder(s, tmp_path / "t"))
    assert adata.n_obs == s.n_obs - 10
    assert list(adata.obs_names) == list(s.obs_names[10:])


# --------------------------------------------------------------------------- annotation


def test_annotation_via_read_visium(folder, slice_):
    assert "ground_truth" not in read_visium(folder).obs  # truth.tsv is never loaded implicitly
    adata = read_visium(folder, annotation="truth.tsv", annotation_key="domain")
    assert isinstance(adata.obs["domain"].dtype, pd.CategoricalDtype)
    assert (adata.obs["domain"].astype(str) == slice_.obs["ground_truth"].astype(str)).all()


def test_annotation_na_and_partial_overlap(tmp_path, slice_, caplog):
    adata = slice_.copy()
    labels = ["A"] * 50 + ["NA"] * 5 + [""] * 5
    table = pd.DataFrame({"barcode": list(adata.obs_names[:60]) + ["GHOST-1", "GHOST-2"], "layer": labels + ["A", "B"]})
    path = tmp_path / "labels.tsv"
    table.to_csv(path, sep="\t", index=False)
    with caplog.at_level(logging.WARNING, logger="mihd.data._annotation"):
        add_annotation(adata, path, key="layer")
    col = adata.obs["layer"]
    assert list(col.cat.categories) == ["A"]
    assert col.notna().sum() == 50 and col.isna().sum() == adata.n_obs - 50
    assert "2 barcode(s) not in the data" in caplog.text
    assert f"no row for {adata.n_obs - 60}" in caplog.text


def test_annotation_named_columns_csv(tmp_path, slice_):
    adata = slice_.copy()
    table = pd.DataFrame({"x": 1, "lab": "L1", "bc": adata.obs_names})
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    add_annotation(adata, path, barcode_col="bc", label_col="lab")
    assert (adata.obs["ground_truth"] == "L1").all()
    with pytest.raises(KeyError, match="'nope' is not a column"):
        add_annotation(adata, path, label_col="nope")


def test_annotation_no_overlap(tmp_path, slice_):
    path = tmp_path / "other.tsv"
    pd.DataFrame({"barcode": ["A-1", "B-1"], "layer": ["x", "y"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="other.tsv"):
        add_annotation(slice_.copy(), path)


# --------------------------------------------------------------------------- h5ad and dispatch


def test_read_h5ad_with_and_without_spatial(tmp_path, slice_):
    path = tmp_path / "s.h5ad"
    slice_.write_h5ad(path)
    adata = read_h5ad(path, require_spatial=True)
    np.testing.assert_array_equal(adata.obsm["spatial"], slice_.obsm["spatial"])

    moved = slice_.copy()
    moved.obsm["xy"] = moved.obsm.pop("spatial")
    moved.write_h5ad(path)
    adata = read_h5ad(path, spatial_key="xy")
    np.testing.assert_array_equal(adata.obsm["spatial"], slice_.obsm["spatial"])
    assert "spatial" not in read_h5ad(path).obsm
    with pytest.raises(KeyError, match=r"no obsm\['spatial'\].*\['xy'\]"):
        read_h5ad(path, require_spatial=True)


def test_read_h5ad_rejects_bad_coordinates(tmp_path, slice_):
    bad = slice_.copy()
    bad.obsm["spatial"] = bad.obsm["spatial"].copy()
    bad.obsm["spatial"][0, 1] = np.nan
    path = tmp_path / "bad.h5ad"
    bad.write_h5ad(path)
    with pytest.raises(ValueError, match="1 of 150 spots"):
        read_h5ad(path)


def test_read_slice_dispatch(tmp_path, folder, slice_):
    assert read_slice(folder).n_obs == slice_.n_obs
    path = tmp_path / "s.h5ad"
    slice_.write_h5ad(path)
    assert read_slice(path).n_obs == slice_.n_obs
    with pytest.raises(ValueError, match="Visium.*folder or an .h5ad file"):
        read_slice(folder / "filtered_feature_bc_matrix.h5")
    with pytest.raises(FileNotFoundError, match="absent"):
        read_slice(tmp_path / "absent.h5ad")


# --------------------------------------------------------------------------- real data


def _assert_spots_on_image(adata, library_id):
    lib = adata.uns["spatial"][library_id]
    img = lib["images"]["lowres"]
    px = adata.obsm["spatial"] * lib["scalefactors"]["tissue_lowres_scalef"]
    assert (px >= 0).all()
    assert (px[:, 0] < img.shape[1]).all() and (px[:, 1] < img.shape[0]).all()


def test_bundled_example():
    assert (example_path() / "filtered_feature_bc_matrix.h5").is_file()
    adata = dlpfc_151673()
    assert adata.shape == (3639, 5000)
    gt = adata.obs["ground_truth"]
    assert list(gt.cat.categories) == [f"Layer_{i}" for i in range(1, 7)] + ["WM"]
    assert gt.isna().sum() == 28
    lib = adata.uns["spatial"]["151673"]
    assert set(lib["images"]) == {"lowres"} and lib["images"]["lowres"].shape == (600, 600, 3)
    _assert_spots_on_image(adata, "151673")


def test_real_slice_151674():
    folder = DATA_DIR / "dlpfc" / "151674"
    if not (folder / "filtered_feature_bc_matrix.h5").is_file():
        pytest.skip(f"real DLPFC data not found at {folder} (set MIHD_DATA_DIR to the shared data folder)")
    adata = read_visium(folder, annotation="truth.tsv")
    assert adata.shape == (3673, 5000)
    assert adata.obs["ground_truth"].nunique() == 7
    _assert_spots_on_image(adata, "151674")
