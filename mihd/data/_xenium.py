"""Read and write 10x Xenium (Xenium Onboard Analysis) output bundles.

The layout read, relative to the bundle folder::

    cell_feature_matrix.h5          counts per cell, 10x HDF5; genes plus control features
                                    (features/feature_type tells them apart)
    cells.parquet                   cell_id, x_centroid, y_centroid (µm), transcript_counts, cell_area, ...
      or cells.csv.gz               the same table (older bundles)
    experiment.xenium               JSON; "pixel_size" = µm per morphology-image pixel (0.2125)
    morphology_focus/*.ome.tif      optional morphology image (XOA >= 2.0; channel 0 is DAPI)
      or morphology_focus.ome.tif / morphology_mip.ome.tif   (XOA 1.x)

Cells become observations. ``obsm["spatial"]`` is in morphology-image pixels (centroid in µm
divided by ``pixel_size``), so the pixel conventions of the Visium readers hold.
"""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._annotation import add_annotation
from ._validate import check_spatial, resolve_path
from ._visium import _read_10x_h5, gene_expression_mask, write_10x_h5
from ._visium_hd import _as_str, _parquet_columns

__all__ = ["read_xenium", "write_xenium_folder"]

logger = logging.getLogger(__name__)

COUNT_FILE = "cell_feature_matrix.h5"
CELLS_FILES = ("cells.parquet", "cells.csv.gz")
EXPERIMENT_FILE = "experiment.xenium"
DEFAULT_PIXEL_SIZE = 0.2125  # µm per pixel of the Xenium morphology image
CELL_DIAMETER_UM = 10.0  # a typical cell, used as the "spot" size for image patches
MORPHOLOGY_MAX_SIDE = 4000  # load_morphology: the largest pyramid level no wider than this
CELL_COLUMNS = ["cell_id", "x_centroid", "y_centroid"]

#: obs column for the per-cell total of each control feature type (named as in cells.parquet).
CONTROL_COLUMNS = {
    "Negative Control Probe": "control_probe_counts",
    "Negative Control Codeword": "control_codeword_counts",
    "Unassigned Codeword": "unassigned_codeword_counts",
    "Blank Codeword": "unassigned_codeword_counts",  # XOA 1.x name of unassigned codewords
    "Genomic Control": "genomic_control_counts",
    "Deprecated Codeword": "deprecated_codeword_counts",
}

_EXPECTED_LAYOUT = (
    "Expected a Xenium output bundle holding cell_feature_matrix.h5, cells.parquet (or cells.csv.gz) "
    "and experiment.xenium (pixel_size), optionally morphology_focus/ or morphology_focus.ome.tif."
)


def is_xenium_folder(folder: Path) -> bool:
    """True when ``folder`` holds any of the files that mark a Xenium bundle."""
    return folder.is_dir() and any((folder / n).is_file() for n in (COUNT_FILE, EXPERIMENT_FILE) + CELLS_FILES)


def morphology_path(folder: Path) -> Path | None:
    """The morphology image of a bundle: ``morphology_focus/`` (channel 0, DAPI), else
    ``morphology_focus.ome.tif``, else ``morphology_mip.ome.tif``; None when there is none."""
    focus_dir = folder / "morphology_focus"
    if focus_dir.is_dir():
        files = sorted(focus_dir.glob("*.ome.tif"))
        if files:
            first = focus_dir / "morphology_focus_0000.ome.tif"
            return first if first in files else files[0]
    for name in ("morphology_focus.ome.tif", "morphology_mip.ome.tif"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_pixel_size(folder: Path) -> tuple[float, dict]:
    """``(pixel_size in µm, experiment.xenium as a dict)``; 0.2125 and ``{}`` when the file is absent."""
    path = folder / EXPERIMENT_FILE
    if not path.is_file():
        logger.info("%s not found; using the Xenium pixel size %g µm.", path, DEFAULT_PIXEL_SIZE)
        return DEFAULT_PIXEL_SIZE, {}
    try:
        with open(path) as fh:
            spec = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should hold the run's specs with 'pixel_size'.") from err
    size = spec.get("pixel_size", DEFAULT_PIXEL_SIZE)
    try:
        size = float(size)
    except (TypeError, ValueError):
        size = -1.0
    if not size > 0:
        raise ValueError(f"{path}: pixel_size={spec.get('pixel_size')!r} is not a positive number of µm per pixel.")
    return size, spec


# --------------------------------------------------------------------------- reading


def read_xenium(
    path: str | PathLike,
    *,
    load_morphology: bool = False,
    library_id: str | None = None,
    annotation: str | PathLike | None = None,
    annotation_key: str = "ground_truth",
) -> AnnData:
    """Read a 10x Xenium output bundle: one observation per segmented cell.

    Parameters
    ----------
    path
        The Xenium output folder (``cell_feature_matrix.h5``, ``cells.parquet``, ``experiment.xenium``).
    load_morphology
        Load the morphology image (channel 0, DAPI) at the largest pyramid level at most
        4000 px wide into ``images["hires"]`` (grey replicated to RGB, scaled to [0, 1] by its
        99.9th percentile) with ``tissue_hires_scalef``. Its path is recorded either way.
    library_id
        Key under ``uns["spatial"]``; defaults to the folder's name.
    annotation
        Optional label table (header row; cell id column, label column) joined into
        ``obs[annotation_key]``; relative paths are tried against ``path`` first.
    annotation_key
        ``obs`` column for the annotation.

    Returns
    -------
    AnnData of the cells of the count matrix, in matrix order:

    - ``X``: raw counts of the "Gene Expression" features only, float32 CSR; ``var["gene_ids"]``,
      ``var["feature_types"]``, ``var["genome"]``.
    - ``obs``: the columns of ``cells.parquet`` (``transcript_counts``, ``cell_area``,
      ``nucleus_area``, ...) except the id and centroids; per-cell totals of the control features
      from the matrix: ``control_probe_counts`` (Negative Control Probe), ``control_codeword_counts``
      (Negative Control Codeword), always, and ``unassigned_codeword_counts``,
      ``genomic_control_counts``, ``deprecated_codeword_counts`` when those types are present;
      ``obs[annotation_key]`` when ``annotation`` is given.
    - ``obsm["spatial"]``: float64 ``(x, y)`` cell centroids in morphology-image pixels
      (µm / ``pixel_size``); ``obsm["spatial_um"]``: the centroids in µm.
    - ``uns["spatial"][library_id]``: ``"images"`` (``{"hires": ...}`` with ``load_morphology``, else
      empty), ``"scalefactors"`` (``spot_diameter_fullres`` = a 10 µm cell in pixels,
      ``microns_per_pixel``; ``tissue_hires_scalef`` with ``load_morphology``) and ``"metadata"``
      (``pixel_size``, run / panel / software fields of ``experiment.xenium``, ``morphology_path`` =
      the morphology image when present).

    Raises
    ------
    FileNotFoundError
        A required file is missing (the message names it and the expected layout).
    ValueError
        Cells of the matrix absent from the cells table, missing centroids, a bad ``experiment.xenium``.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Xenium folder {folder} does not exist or is not a folder. {_EXPECTED_LAYOUT}")
    counts_path = folder / COUNT_FILE
    if not counts_path.is_file():
        raise FileNotFoundError(f"Count matrix {counts_path} not found. {_EXPECTED_LAYOUT}")
    cells_path = next((folder / n for n in CELLS_FILES if (folder / n).is_file()), None)
    if cells_path is None:
        raise FileNotFoundError(f"No cells table in {folder}: looked for {' and '.join(CELLS_FILES)}. {_EXPECTED_LAYOUT}")
    library_id = folder.resolve().name if library_id is None else str(library_id)
    pixel_size, spec = read_pixel_size(folder)

    adata, h5_meta = _read_10x_h5(counts_path, gex_only=False)
    controls = _control_totals(adata)
    gex = gene_expression_mask(adata.var["feature_types"], counts_path)
    if not gex.all():
        adata = adata[:, gex].copy()

    cells = _read_cells(cells_path)
    idx = pd.Index(cells["cell_id"]).get_indexer(adata.obs_names)
    missing = idx < 0
    if missing.any():
        hint = (
            "Are the count matrix and the cells table from the same Xenium run?"
            if not missing.all()
            else f"(matrix: {list(adata.obs_names[:3])}; table: {list(cells['cell_id'][:3])}) Are they from the same run?"
        )
        raise ValueError(
            f"{int(missing.sum())} of {adata.n_obs} cells of {counts_path.name} are missing from cells table "
            f"{cells_path}, e.g. {list(adata.obs_names[missing][:3])}. {hint}"
        )
    if len(cells) > adata.n_obs:
        logger.info("%s: %d cell(s) not in the count matrix ignored.", cells_path, len(cells) - adata.n_obs)
    cells = cells.iloc[idx].reset_index(drop=True)
    um = check_spatial(cells[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64), source=f"cells table {cells_path}")
    adata.obsm["spatial"] = um / pixel_size
    adata.obsm["spatial_um"] = um
    for col in cells.columns:
        if col not in CELL_COLUMNS:
            adata.obs[col] = cells[col].to_numpy()
    for col, values in controls.items():
        adata.obs[col] = values

    scalefactors = {"spot_diameter_fullres": CELL_DIAMETER_UM / pixel_size, "microns_per_pixel": pixel_size}
    metadata: dict = dict(h5_meta)
    metadata["pixel_size"] = pixel_size
    for key in ("run_name", "region_name", "panel_name", "analysis_sw_version", "instrument_sw_version"):
        if key in spec:
            metadata[key] = str(spec[key])
    images: dict[str, np.ndarray] = {}
    morph = morphology_path(folder)
    if morph is not None:
        # Not "fullres_path": that key means an RGB H&E for the patch encoders; a Xenium morphology
        # image is a grey (DAPI) uint16 pyramid, used through load_morphology=True (a bounded level).
        metadata["morphology_path"] = str(morph.resolve())
        if load_morphology:
            images["hires"], scalefactors["tissue_hires_scalef"] = load_morphology_image(morph)
    elif load_morphology:
        raise FileNotFoundError(
            f"load_morphology=True but {folder} has no morphology image (looked for morphology_focus/*.ome.tif, "
            "morphology_focus.ome.tif and morphology_mip.ome.tif)."
        )
    adata.uns["spatial"] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}

    if annotation is not None:
        add_annotation(adata, resolve_path(annotation, base=folder, what="annotation table"), key=annotation_key)
    return adata


def _control_totals(adata: AnnData) -> dict[str, np.ndarray]:
    """Per-cell sums of every non-gene feature type, keyed by the obs column they go to."""
    types = adata.var["feature_types"].astype(str).to_numpy()
    totals = {"control_probe_counts": np.zeros(adata.n_obs, np.int64), "control_codeword_counts": np.zeros(adata.n_obs, np.int64)}
    X = sparse.csc_matrix(adata.X)
    for ftype in sorted(set(types) - {"Gene Expression"}):
        col = CONTROL_COLUMNS.get(ftype, ftype.strip().lower().replace(" ", "_") + "_counts")
        sums = np.asarray(X[:, types == ftype].sum(axis=1)).ravel().round().astype(np.int64)
        totals[col] = totals.get(col, np.zeros(adata.n_obs, np.int64)) + sums
    return totals


def _read_cells(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        columns = _parquet_columns(path)
        missing = [c for c in CELL_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"Cells table {path} lacks column(s) {missing}; it has {columns}.")
        cells = pd.read_parquet(path)
    else:
        try:
            cells = pd.read_csv(path)
        except (OSError, EOFError, pd.errors.ParserError) as err:
            raise ValueError(f"Cells table {path} is not a readable gzip-compressed CSV ({err}).") from err
        missing = [c for c in CELL_COLUMNS if c not in cells.columns]
        if missing:
            raise ValueError(f"Cells table {path} lacks column(s) {missing}; it has {list(cells.columns)}.")
    cells["cell_id"] = _as_str(cells["cell_id"])  # XOA writes bytes in some versions, integers in the oldest
    dup = cells["cell_id"].duplicated()
    if dup.any():
        raise ValueError(f"Cells table {path} lists {int(dup.sum())} cell_id(s) more than once, e.g. {list(cells['cell_id'][dup][:3])}.")
    return cells


def load_morphology_image(path: Path, *, max_side: int = MORPHOLOGY_MAX_SIDE) -> tuple[np.ndarray, float]:
    """A Xenium morphology OME-TIFF, downsampled: ``(float32 RGB (H, W, 3) in [0, 1], scale)``.

    The largest pyramid level no wider than ``max_side`` is read (without pyramid levels the
    full image is read and subsampled); channel 0 (DAPI) is kept and grey is replicated to RGB.
    ``scale`` is image pixels per full-resolution pixel, i.e. ``tissue_hires_scalef``.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        full_w = series.shape[axes.index("X")]
        levels = list(series.levels)
        fits = [lv for lv in levels if max(lv.shape[lv.axes.index("Y")], lv.shape[lv.axes.index("X")]) <= max_side]
        level = fits[0] if fits else levels[-1]
        arr = level.asarray()
        level_axes = level.axes
    for ax in [a for a in level_axes if a not in "YX"][::-1]:
        i = level_axes.index(ax)
        arr = arr.max(axis=i) if ax == "Z" else np.take(arr, 0, axis=i)
        level_axes = level_axes.replace(ax, "")
    if level_axes == "XY":
        arr = arr.T
    step = int(np.ceil(max(arr.shape) / max_side))
    if step > 1:
        logger.info("%s has no pyramid level under %d px; subsampling every %d-th pixel.", path, max_side, step)
        arr = arr[::step, ::step]
    arr = arr.astype(np.float32)
    top = float(np.percentile(arr, 99.9)) if arr.size else 0.0
    grey = np.clip(arr / top, 0.0, 1.0) if top > 0 else np.zeros_like(arr)
    return np.repeat(grey[..., None], 3, axis=2), arr.shape[1] / float(full_w)


# --------------------------------------------------------------------------- writing

#: Control features written by :func:`write_xenium_folder`: (name, feature_type).
FIXTURE_CONTROLS = [
    ("NegControlProbe_00042", "Negative Control Probe"),
    ("NegControlProbe_00041", "Negative Control Probe"),
    ("NegControlProbe_00024", "Negative Control Probe"),
    ("NegControlCodeword_0500", "Negative Control Codeword"),
    ("NegControlCodeword_0501", "Negative Control Codeword"),
    ("UnassignedCodeword_0001", "Unassigned Codeword"),
    ("UnassignedCodeword_0007", "Unassigned Codeword"),
]


def write_xenium_folder(
    adata: AnnData,
    path: str | PathLike,
    *,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
    cells_format: str = "parquet",
    morphology: bool = False,
    seed: int = 0,
    annotation_key: str | None = "ground_truth",
) -> Path:
    """Write ``adata`` as a Xenium output bundle that :func:`read_xenium` reads back.

    Parameters
    ----------
    adata
        Raw integer counts in ``X`` (the genes); ``obsm["spatial"]`` as ``(x, y)`` pixels, taken as
        morphology-image pixels. ``obs_names`` become the cell ids.
    path
        Folder to create (parents too); files in it are overwritten.
    pixel_size
        µm per pixel, written to ``experiment.xenium``; centroids are ``obsm["spatial"] * pixel_size``.
    cells_format
        ``"parquet"`` (``cells.parquet``) or ``"csv.gz"`` (``cells.csv.gz``, older bundles).
    morphology
        Also write ``morphology_focus/morphology_focus_0000.ome.tif``: a uint16 DAPI-like image
        with a bright disc per cell and two pyramid levels.
    seed
        Seed for the control-feature counts, cell areas and the image.
    annotation_key
        When this ``obs`` column exists, also write ``truth.tsv`` (cell_id, label); ``None`` to skip.

    Returns
    -------
    The folder written. ``cell_feature_matrix.h5`` holds the genes followed by
    :data:`FIXTURE_CONTROLS` (Poisson counts, with their ``feature_type``); ``cells.parquet`` holds
    ``cell_id``, ``x_centroid``, ``y_centroid`` (µm), ``transcript_counts``, the control totals,
    ``total_counts``, ``cell_area``, ``nucleus_area``, ``nucleus_count``, ``segmentation_method``.
    """
    if cells_format not in ("parquet", "csv.gz"):
        raise ValueError(f"cells_format={cells_format!r}; use 'parquet' (cells.parquet) or 'csv.gz' (cells.csv.gz).")
    if "spatial" not in adata.obsm:
        raise KeyError(f"write_xenium_folder needs adata.obsm['spatial']; obsm has {list(adata.obsm)}.")
    rng = np.random.default_rng(seed)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    n = adata.n_obs

    genes = sparse.csr_matrix(adata.X)
    ctrl = sparse.csr_matrix(rng.poisson(0.3, size=(n, len(FIXTURE_CONTROLS))).astype(np.float32))
    var = pd.DataFrame(
        {
            "gene_ids": list(adata.var["gene_ids"].astype(str) if "gene_ids" in adata.var else adata.var_names)
            + [name for name, _ in FIXTURE_CONTROLS],
            "feature_types": ["Gene Expression"] * adata.n_vars + [t for _, t in FIXTURE_CONTROLS],
            "genome": "Unknown",
        },
        index=pd.Index(list(adata.var_names) + [name for name, _ in FIXTURE_CONTROLS]),
    )
    full = AnnData(X=sparse.hstack([genes, ctrl]).tocsr(), obs=pd.DataFrame(index=adata.obs_names.copy()), var=var)
    write_10x_h5(full, folder / COUNT_FILE, library_id=folder.name, writer="write_xenium_folder")

    um = np.asarray(adata.obsm["spatial"], dtype=np.float64) * pixel_size
    types = var["feature_types"].to_numpy()[adata.n_vars:]
    ctrl_dense = ctrl.toarray().astype(np.int64)

    def ctrl_sum(t: str) -> np.ndarray:
        return ctrl_dense[:, types == t].sum(axis=1)

    transcript = np.asarray(genes.sum(axis=1)).ravel().round().astype(np.int64)
    cell_area = rng.uniform(40.0, 120.0, n)
    cells = pd.DataFrame({
        "cell_id": adata.obs_names.astype(str),
        "x_centroid": um[:, 0],
        "y_centroid": um[:, 1],
        "transcript_counts": transcript,
        "control_probe_counts": ctrl_sum("Negative Control Probe"),
        "genomic_control_counts": np.zeros(n, np.int64),
        "control_codeword_counts": ctrl_sum("Negative Control Codeword"),
        "unassigned_codeword_counts": ctrl_sum("Unassigned Codeword"),
        "deprecated_codeword_counts": np.zeros(n, np.int64),
        "total_counts": transcript + ctrl_dense.sum(axis=1),
        "cell_area": cell_area,
        "nucleus_area": cell_area * rng.uniform(0.3, 0.6, n),
        "nucleus_count": np.ones(n, np.int64),
        "segmentation_method": "Segmented by nucleus expansion of 5.0µm",
    })
    if cells_format == "parquet":
        cells.to_parquet(folder / "cells.parquet", index=False)
        (folder / "cells.csv.gz").unlink(missing_ok=True)
    else:
        cells.to_csv(folder / "cells.csv.gz", index=False, compression="gzip")
        (folder / "cells.parquet").unlink(missing_ok=True)

    spec = {
        "major_version": 5,
        "minor_version": 0,
        "run_name": "mihd fixture",
        "region_name": folder.name,
        "panel_name": "mihd synthetic panel",
        "pixel_size": float(pixel_size),
        "analysis_sw_version": "xenium-2.0.0.10",
        "num_cells": int(n),
    }
    with open(folder / EXPERIMENT_FILE, "w") as fh:
        json.dump(spec, fh, indent=4)

    if morphology:
        _write_morphology(folder / "morphology_focus" / "morphology_focus_0000.ome.tif", adata.obsm["spatial"], pixel_size, rng)

    if annotation_key is not None and annotation_key in adata.obs:
        labels = adata.obs[annotation_key].astype(object).where(adata.obs[annotation_key].notna(), "NA")
        pd.DataFrame({"cell_id": adata.obs_names, annotation_key: labels.to_numpy()}).to_csv(
            folder / "truth.tsv", sep="\t", index=False
        )
    return folder


def _write_morphology(path: Path, xy: np.ndarray, pixel_size: float, rng: np.random.Generator) -> None:
    """A small pyramidal uint16 OME-TIFF: dim background, a bright 5 µm-radius disc per cell."""
    import tifffile

    xy = np.asarray(xy, dtype=np.float64)
    h, w = int(np.ceil(xy[:, 1].max())) + 64, int(np.ceil(xy[:, 0].max())) + 64
    img = rng.integers(50, 150, size=(h, w)).astype(np.uint16)
    r = max(1, int(round(5.0 / pixel_size)))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dy**2 + dx**2 <= r * r
    for cx, cy in np.rint(xy).astype(np.int64):
        y0, x0 = cy - r, cx - r
        ys, xs = slice(max(y0, 0), min(cy + r + 1, h)), slice(max(x0, 0), min(cx + r + 1, w))
        sub = disc[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        img[ys, xs][sub] = 3000
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, ome=True) as tif:
        meta = {"axes": "YX", "PhysicalSizeX": pixel_size, "PhysicalSizeY": pixel_size, "Channel": {"Name": ["DAPI"]}}
        tif.write(img, subifds=2, metadata=meta, tile=(64, 64))
        tif.write(img[::2, ::2], subfiletype=1, tile=(64, 64))
        tif.write(img[::4, ::4], subfiletype=1, tile=(64, 64))
