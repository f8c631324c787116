"""Visium HD and Xenium readers, on small fixtures written in the 10x layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mihd.data import (
    inspect_slice,
    read_slice,
    read_visium_hd,
    read_xenium,
    synthetic_slice,
    write_visium_hd_folder,
    write_xenium_folder,
)
from mihd.data._xenium import load_morphology_image

MPP = 0.25  # µm per full-resolution pixel in the HD fixture: an 8 µm bin is 32 px
BIN8 = "binned_outputs/square_008um"


@pytest.fixture(scope="module")
def slice_():
    return synthetic_slice(300, n_genes=30, n_domains=3, image_size=96, seed=5, library_id="toy")


def _expected_bins(slice_, bin_size, mpp=MPP):
    """Bin row/col of every spot and the row-major order the writer lists them in."""
    side = bin_size / mpp
    xy = slice_.obsm["spatial"]
    col, row = np.floor(xy[:, 0] / side).astype(int), np.floor(xy[:, 1] / side).astype(int)
    return row, col, np.lexsort((col, row)), side


@pytest.fixture(scope="module")
def hd_outs(tmp_path_factory, slice_):
    """outs/ with 8 µm bins for every spot and 16 µm bins for the first 120 spots only."""
    outs = tmp_path_factory.mktemp("hd") / "sampleA" / "outs"
    write_visium_hd_folder(slice_, outs, bin_size=8, microns_per_pixel=MPP)
    write_visium_hd_folder(slice_[:120].copy(), outs, bin_size=16, microns_per_pixel=MPP)
    return outs


@pytest.fixture
def hd_copy(tmp_path, hd_outs):
    return Path(shutil.copytree(hd_outs, tmp_path / "outs"))


@pytest.fixture(scope="module")
def xenium_dir(tmp_path_factory, slice_):
    return write_xenium_folder(slice_, tmp_path_factory.mktemp("xen") / "region1", morphology=True)


@pytest.fixture
def xenium_copy(tmp_path, xenium_dir):
    return Path(shutil.copytree(xenium_dir, tmp_path / "region1"))


# --------------------------------------------------------------------------- Visium HD


def test_hd_layout_is_space_ranger(hd_outs):
    spatial = hd_outs / BIN8 / "spatial"
    assert (hd_outs / BIN8 / "filtered_feature_bc_matrix.h5").is_file()
    assert {p.name for p in spatial.iterdir()} >= {"tissue_positions.parquet", "scalefactors_json.json", "tissue_lowres_image.png"}
    table = pd.read_parquet(spatial / "tissue_positions.parquet")
    assert list(table.columns) == ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    assert len(table) > 300 and (table["in_tissue"] == 0).any()  # the whole grid, off-tissue bins too
    sf = json.loads((spatial / "scalefactors_json.json").read_text())
    assert {"spot_diameter_fullres", "bin_size_um", "microns_per_pixel", "tissue_lowres_scalef",
            "fiducial_diameter_fullres", "regist_target_img_scalef"} <= set(sf)
    assert sf["bin_size_um"] / sf["spot_diameter_fullres"] == pytest.approx(sf["microns_per_pixel"])


def test_hd_roundtrip_counts_and_coordinates(hd_outs, slice_):
    adata = read_visium_hd(hd_outs)  # bin_size defaults to 8
    row, col, order, side = _expected_bins(slice_, 8)
    assert adata.n_obs == slice_.n_obs  # one spot per 8 µm bin
    assert list(adata.obs_names) == [f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(row[order], col[order])]
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != slice_.X[order]).nnz == 0
    assert list(adata.var_names) == list(slice_.var_names)

    xy = adata.obsm["spatial"]
    assert xy.dtype == np.float64
    np.testing.assert_array_equal(xy, np.c_[(col[order] + 0.5) * side, (row[order] + 0.5) * side])  # (x, y) bin centres
    assert np.abs(xy - slice_.obsm["spatial"][order]).max() <= side / 2
    np.testing.assert_allclose(adata.obsm["spatial_um"], xy * MPP)
    np.testing.assert_array_equal(adata.obs["array_row"], row[order])
    np.testing.assert_array_equal(adata.obs["array_col"], col[order])

    lib = adata.uns["spatial"]["sampleA"]  # library_id: the folder holding outs/
    assert lib["scalefactors"]["bin_size_um"] == 8 and lib["scalefactors"]["microns_per_pixel"] == MPP
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(side)
    assert lib["metadata"]["bin_size_um"] == 8
    assert set(lib["images"]) == {"lowres"} and lib["images"]["lowres"].shape[2] == 3


def test_hd_bin_size_picks_the_folder(hd_outs, slice_):
    a16 = read_visium_hd(hd_outs, bin_size=16)
    assert a16.n_obs == 120 and a16.obs_names[0].startswith("s_016um_")
    sf = a16.uns["spatial"]["sampleA"]["scalefactors"]
    assert sf["bin_size_um"] == 16 and sf["spot_diameter_fullres"] == pytest.approx(16 / MPP)
    assert a16.uns["spatial"]["sampleA"]["metadata"]["bin_size_um"] == 16
    assert a16.X.sum() == slice_[:120].X.sum()
    assert read_visium_hd(hd_outs, bin_size=8).n_obs == 300
    # the run folder holding outs/, and a square_<NNN>um folder given directly
    assert read_visium_hd(hd_outs.parent, bin_size=16).n_obs == 120
    assert read_visium_hd(hd_outs / "binned_outputs" / "square_016um").n_obs == 120
    with pytest.raises(ValueError, match="holds 16 µm bins but bin_size=8"):
        read_visium_hd(hd_outs / "binned_outputs" / "square_016um", bin_size=8)


def test_hd_missing_bin_size_lists_the_present_ones(hd_outs):
    with pytest.raises(ValueError, match=r"square_002um.*8 \(square_008um\), 16 \(square_016um\)"):
        read_visium_hd(hd_outs, bin_size=2)


def test_hd_bins_sum_the_spots_they_hold(tmp_path, slice_):
    adata = read_visium_hd(write_visium_hd_folder(slice_, tmp_path / "outs", bin_size=200, microns_per_pixel=1.0), bin_size=200)
    assert 1 < adata.n_obs < slice_.n_obs
    np.testing.assert_array_equal(np.asarray(adata.X.sum(0)).ravel(), np.asarray(slice_.X.sum(0)).ravel())


@pytest.mark.parametrize(
    "relpath", [f"{BIN8}/filtered_feature_bc_matrix.h5", f"{BIN8}/spatial/tissue_positions.parquet", f"{BIN8}/spatial/scalefactors_json.json"]
)
def test_hd_missing_file_is_named(hd_copy, relpath):
    (hd_copy / relpath).unlink()
    with pytest.raises(FileNotFoundError, match=Path(relpath).name):
        read_visium_hd(hd_copy)


def test_hd_not_an_hd_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="binned_outputs"):
        read_visium_hd(tmp_path)


def test_hd_off_tissue_bins_dropped_and_unknown_barcodes_named(tmp_path, hd_copy, slice_):
    s = slice_.copy()
    s.obs["in_tissue"] = np.where(np.arange(s.n_obs) < 10, 0, 1)
    assert read_visium_hd(write_visium_hd_folder(s, tmp_path / "t", microns_per_pixel=MPP)).n_obs == s.n_obs - 10

    pos_path = hd_copy / BIN8 / "spatial" / "tissue_positions.parquet"
    table = pd.read_parquet(pos_path)
    gone = table[table["in_tissue"] == 1]["barcode"].iloc[:4]
    table[~table["barcode"].isin(gone)].to_parquet(pos_path, index=False)
    with pytest.raises(ValueError, match=r"4 of 300 barcodes .* missing from bin positions file") as err:
        read_visium_hd(hd_copy)
    assert gone.iloc[0] in str(err.value)


def test_hd_images_fall_back_to_outs_spatial(hd_copy):
    (hd_copy / "spatial").mkdir()
    shutil.move(hd_copy / BIN8 / "spatial" / "tissue_lowres_image.png", hd_copy / "spatial" / "tissue_lowres_image.png")
    assert set(read_visium_hd(hd_copy, library_id="L").uns["spatial"]["L"]["images"]) == {"lowres"}
    assert read_visium_hd(hd_copy, library_id="L", load_images=False).uns["spatial"]["L"]["images"] == {}


def test_hd_annotation(hd_outs, slice_):
    adata = read_visium_hd(hd_outs, annotation="truth.tsv", annotation_key="domain")  # found in the bin folder
    _, _, order, _ = _expected_bins(slice_, 8)
    assert (adata.obs["domain"].astype(str).to_numpy() == slice_.obs["ground_truth"].astype(str).to_numpy()[order]).all()


# --------------------------------------------------------------------------- Xenium


def _h5_feature_sums(path):
    """Per-cell sums of each feature type, straight from the HDF5 (cells x features CSR)."""
    with h5py.File(path, "r") as f:
        g = f["matrix"]
        n_feat, n_cells = g["shape"][:]
        X = sparse.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_cells, n_feat))
        types = g["features"]["feature_type"][:].astype(str)
    return {t: np.asarray(X[:, types == t].sum(1)).ravel() for t in set(types)}


def test_xenium_layout(xenium_dir):
    names = {p.name for p in xenium_dir.iterdir()}
    assert {"cell_feature_matrix.h5", "cells.parquet", "experiment.xenium", "morphology_focus"} <= names
    cells = pd.read_parquet(xenium_dir / "cells.parquet")
    assert list(cells.columns[:3]) == ["cell_id", "x_centroid", "y_centroid"]
    assert {"transcript_counts", "cell_area", "nucleus_area", "control_probe_counts"} <= set(cells.columns)
    assert json.loads((xenium_dir / "experiment.xenium").read_text())["pixel_size"] == 0.2125
    sums = _h5_feature_sums(xenium_dir / "cell_feature_matrix.h5")
    assert {"Negative Control Probe", "Negative Control Codeword", "Unassigned Codeword"} < set(sums)


def test_xenium_roundtrip(xenium_dir, slice_):
    adata = read_xenium(xenium_dir)
    assert list(adata.obs_names) == list(slice_.obs_names)
    assert list(adata.var_names) == list(slice_.var_names)  # genes only
    assert (adata.var["feature_types"] == "Gene Expression").all()
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != slice_.X).nnz == 0

    cells = pd.read_parquet(xenium_dir / "cells.parquet")
    np.testing.assert_array_equal(adata.obsm["spatial_um"], cells[["x_centroid", "y_centroid"]].to_numpy())
    np.testing.assert_allclose(adata.obsm["spatial_um"], slice_.obsm["spatial"] * 0.2125, rtol=1e-12)
    assert adata.obsm["spatial"].dtype == np.float64
    np.testing.assert_allclose(adata.obsm["spatial"], slice_.obsm["spatial"], rtol=1e-12)  # morphology pixels

    sums = _h5_feature_sums(xenium_dir / "cell_feature_matrix.h5")
    np.testing.assert_array_equal(adata.obs["control_probe_counts"], sums["Negative Control Probe"])
    np.testing.assert_array_equal(adata.obs["control_codeword_counts"], sums["Negative Control Codeword"])
    np.testing.assert_array_equal(adata.obs["unassigned_codeword_counts"], sums["Unassigned Codeword"])
    assert adata.obs["control_probe_counts"].sum() > 0
    np.testing.assert_array_equal(adata.obs["transcript_counts"], np.asarray(slice_.X.sum(1)).ravel())
    assert {"cell_area", "nucleus_area"} <= set(adata.obs)

    lib = adata.uns["spatial"]["region1"]
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(10 / 0.2125)
    assert lib["scalefactors"]["microns_per_pixel"] == 0.2125 and lib["metadata"]["pixel_size"] == 0.2125
    assert lib["images"] == {} and "tissue_hires_scalef" not in lib["scalefactors"]  # the image is not loaded
    assert lib["metadata"]["morphology_path"] == str((xenium_dir / "morphology_focus" / "morphology_focus_0000.ome.tif").resolve())


def test_xenium_pixel_size_from_experiment_file(tmp_path, slice_):
    folder = write_xenium_folder(slice_, tmp_path / "x", pixel_size=0.5)
    adata = read_xenium(folder)
    np.testing.assert_allclose(adata.obsm["spatial"], adata.obsm["spatial_um"] / 0.5)
    (folder / "experiment.xenium").unlink()  # absent: the Xenium default
    np.testing.assert_allclose(read_xenium(folder).obsm["spatial"], adata.obsm["spatial_um"] / 0.2125)


def test_xenium_cells_matched_by_id_bytes_ids_and_csv_fallback(xenium_copy, slice_):
    cells = pd.read_parquet(xenium_copy / "cells.parquet").sample(frac=1.0, random_state=0)
    cells["cell_id"] = cells["cell_id"].str.encode("utf-8")  # some XOA versions store the ids as binary
    cells.to_parquet(xenium_copy / "cells.parquet", index=False)
    adata = read_xenium(xenium_copy)
    assert list(adata.obs_names) == list(slice_.obs_names)  # matrix order, whatever the table order
    np.testing.assert_allclose(adata.obsm["spatial"], slice_.obsm["spatial"], rtol=1e-12)

    cells["cell_id"] = cells["cell_id"].str.decode("utf-8")
    cells.to_csv(xenium_copy / "cells.csv.gz", index=False, compression="gzip")
    (xenium_copy / "cells.parquet").unlink()
    adata = read_xenium(xenium_copy)
    np.testing.assert_allclose(adata.obsm["spatial"], slice_.obsm["spatial"], rtol=1e-12)


def test_xenium_cells_missing_from_table(xenium_copy, slice_):
    cells = pd.read_parquet(xenium_copy / "cells.parquet")
    cells.iloc[3:].to_parquet(xenium_copy / "cells.parquet", index=False)
    with pytest.raises(ValueError, match=r"3 of 300 cells .* missing from cells table .*cells.parquet") as err:
        read_xenium(xenium_copy)
    assert slice_.obs_names[0] in str(err.value)


@pytest.mark.parametrize("names", [["cell_feature_matrix.h5"], ["cells.parquet"]])
def test_xenium_missing_file_is_named(xenium_copy, names):
    for name in names:
        (xenium_copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=names[0]):
        read_xenium(xenium_copy)


def test_xenium_morphology(xenium_copy):
    adata = read_xenium(xenium_copy, load_morphology=True)
    lib = adata.uns["spatial"]["region1"]
    img, scale = lib["images"]["hires"], lib["scalefactors"]["tissue_hires_scalef"]
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    # every cell centroid lands on its bright nucleus in the image
    px = np.rint(adata.obsm["spatial"] * scale).astype(int)
    assert (img[px[:, 1], px[:, 0], 0] > 0.5).mean() > 0.95

    small, s = load_morphology_image(Path(lib["metadata"]["morphology_path"]), max_side=1000)  # a pyramid level
    assert max(small.shape[:2]) <= 1000 and s == pytest.approx(0.25, rel=0.01)

    # XOA 1.x: one morphology_focus.ome.tif beside the matrix
    shutil.move(xenium_copy / "morphology_focus" / "morphology_focus_0000.ome.tif", xenium_copy / "morphology_focus.ome.tif")
    shutil.rmtree(xenium_copy / "morphology_focus")
    meta = read_xenium(xenium_copy).uns["spatial"]["region1"]["metadata"]
    assert meta["morphology_path"].endswith("region1/morphology_focus.ome.tif")


def test_xenium_annotation(xenium_dir, slice_):
    adata = read_xenium(xenium_dir, annotation="truth.tsv")
    assert (adata.obs["ground_truth"].astype(str) == slice_.obs["ground_truth"].astype(str)).all()


# --------------------------------------------------------------------------- read_slice / inspect_slice


def test_read_slice_dispatches(hd_outs, xenium_dir):
    assert read_slice(hd_outs).obs_names[0].startswith("s_008um_")
    assert read_slice(hd_outs.parent, bin_size=16).n_obs == 120
    assert read_slice(hd_outs / "binned_outputs" / "square_016um").n_obs == 120
    xen = read_slice(xenium_dir, annotation="truth.tsv")
    assert "spatial_um" in xen.obsm and "ground_truth" in xen.obs
    with pytest.raises(TypeError, match=r"read_xenium.*\['bin_size'\]"):
        read_slice(xenium_dir, bin_size=8)


def test_inspect_slice_hd(hd_copy):
    info = inspect_slice(hd_copy)
    assert info["kind"] == "visium_hd" and info["has_coords"] and info["has_image"] and info["problems"] == []
    assert inspect_slice(hd_copy, bin_size=16, annotation="absent.tsv")["problems"][0].startswith("annotation")
    assert inspect_slice(hd_copy, annotation="truth.tsv")["problems"] == []
    problems = inspect_slice(hd_copy, bin_size=2)["problems"]
    assert len(problems) == 1 and "square_002um" in problems[0] and "16 (square_016um)" in problems[0]
    (hd_copy / BIN8 / "spatial" / "tissue_positions.parquet").unlink()
    info = inspect_slice(hd_copy)
    assert not info["has_coords"] and any("tissue_positions.parquet" in p for p in info["problems"])


def test_inspect_slice_xenium(xenium_copy):
    info = inspect_slice(xenium_copy)
    assert info["kind"] == "xenium" and info["has_coords"] and info["has_image"] and info["problems"] == []
    (xenium_copy / "cells.parquet").unlink()
    shutil.rmtree(xenium_copy / "morphology_focus")
    info = inspect_slice(xenium_copy)
    assert info["kind"] == "xenium" and not info["has_coords"] and not info["has_image"]
    assert any("cells.parquet" in p for p in info["problems"])


@pytest.mark.parametrize("layout", ["visium_hd_16", "xenium"])
def test_hd_layouts_train_end_to_end(layout, hd_outs, xenium_dir, tmp_path):
    """`mihd train data=visium_hd|xenium` reads the folder, trains, clusters, refines and scores."""
    import json

    from mihd.cli import main

    data = (["data=visium_hd", f"data.path={hd_outs}", "data.bin_size=16"] if layout.startswith("visium_hd")
            else ["data=xenium", f"data.path={xenium_dir}"])
    run_dir = tmp_path / "run"
    code = main(["train", "fusion=gnn", *data, "data.n_domains=3", "trainer=fast", f"run_dir={run_dir}",
                 "encoder.gene_options.n_top_genes=50", "encoder.gene_options.n_comps=10"])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_spots"] > 50 and metrics["scores"]["after_refinement"]["chaos"] > 0
    # Xenium has no H&E: genes only unless the DAPI image is loaded. Visium HD's image is weighed
    # (mihd.joint) and enters the model when its weight is above 0.
    assert (metrics["image"] is not None) == (layout != "xenium")
    if metrics["image"] is not None:
        assert ("image" in metrics["modalities"]) == (metrics["image"]["weight"] > 0)
