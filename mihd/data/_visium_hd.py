"""Read and write 10x Visium HD (Space Ranger >= 3.0) binned outputs.

The layout read, relative to the Space Ranger ``outs/`` folder::

    binned_outputs/square_002um/ square_008um/ square_016um/   one folder per bin size, each with
        filtered_feature_bc_matrix.h5          counts, CellRanger v3 HDF5
        spatial/tissue_positions.parquet       barcode, in_tissue, array_row, array_col,
                                               pxl_row_in_fullres, pxl_col_in_fullres
        spatial/scalefactors_json.json         spot_diameter_fullres (= the bin side), bin_size_um,
                                               microns_per_pixel, tissue_{hires,lowres}_scalef, ...
        spatial/tissue_hires_image.png         optional (else taken from outs/spatial/)
        spatial/tissue_lowres_image.png        optional (else taken from outs/spatial/)

The result has the same conventions as :func:`~mihd.data.read_visium`: each bin is one
observation, ``obsm["spatial"]`` is ``(x, y)`` in full-resolution pixels.
"""

from __future__ import annotations

import json
import logging
import re
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._validate import check_spatial
from ._visium import (
    IMAGE_FILES,
    IMAGE_SCALEF,
    POSITION_COLUMNS,
    SCALEFACTORS_FILE,
    _read_10x_h5,
    _read_scalefactors,
    finish_slice,
    write_10x_h5,
    write_images,
)

__all__ = ["read_visium_hd", "write_visium_hd_folder"]

logger = logging.getLogger(__name__)

BINNED_OUTPUTS = "binned_outputs"
BIN_FOLDER = re.compile(r"^square_(\d{3})um$")
COUNT_FILE = "filtered_feature_bc_matrix.h5"
POSITIONS_FILE = "tissue_positions.parquet"
DEFAULT_BIN_SIZE = 8

_EXPECTED_LAYOUT = (
    "Expected a Space Ranger Visium HD output folder (outs/) holding binned_outputs/square_<NNN>um/ "
    "(e.g. square_008um) with filtered_feature_bc_matrix.h5 and spatial/{tissue_positions.parquet, "
    "scalefactors_json.json, tissue_lowres_image.png and/or tissue_hires_image.png}."
)


def bin_folder_name(bin_size: int) -> str:
    """``square_008um`` for ``bin_size=8``, as Space Ranger names the folders."""
    return f"square_{int(bin_size):03d}um"


def find_binned_outputs(folder: Path) -> Path | None:
    """The ``binned_outputs/`` folder of a Visium HD output: ``folder`` itself, a child, or ``outs/`` child."""
    if folder.name == BINNED_OUTPUTS and folder.is_dir():
        return folder
    for candidate in (folder / BINNED_OUTPUTS, folder / "outs" / BINNED_OUTPUTS):
        if candidate.is_dir():
            return candidate
    return None


def available_bin_sizes(binned: Path) -> list[int]:
    """Bin sizes (µm) with a ``square_<NNN>um`` folder in ``binned``, ascending."""
    sizes = [int(m.group(1)) for p in binned.iterdir() if p.is_dir() and (m := BIN_FOLDER.match(p.name))]
    return sorted(sizes)


def is_visium_hd_folder(folder: Path) -> bool:
    """True for a Visium HD output folder (holds ``binned_outputs/``) or one ``square_<NNN>um`` folder."""
    return folder.is_dir() and (BIN_FOLDER.match(folder.name) is not None or find_binned_outputs(folder) is not None)


def locate_bin_folder(folder: Path, bin_size: int | None) -> tuple[Path, Path | None, int]:
    """``(bin folder, outs folder or None, bin size)`` for a Visium HD path, or raise.

    Raises
    ------
    FileNotFoundError
        No ``binned_outputs/`` (or no bin folder in it).
    ValueError
        ``bin_size`` is not one of the bin sizes present (the message lists them), or it
        disagrees with the ``square_<NNN>um`` folder given.
    """
    m = BIN_FOLDER.match(folder.name)
    if m:
        size = int(m.group(1))
        if bin_size is not None and int(bin_size) != size:
            raise ValueError(
                f"{folder} holds {size} µm bins but bin_size={bin_size} was asked for; pass bin_size={size} "
                f"(data.bin_size={size}), or pass the outs/ folder to choose among the bin sizes."
            )
        outs = folder.parent.parent if folder.parent.name == BINNED_OUTPUTS else None
        return folder, outs, size
    binned = find_binned_outputs(folder)
    if binned is None:
        raise FileNotFoundError(f"{folder} has no {BINNED_OUTPUTS}/ folder (nor outs/{BINNED_OUTPUTS}/). {_EXPECTED_LAYOUT}")
    sizes = available_bin_sizes(binned)
    if not sizes:
        raise FileNotFoundError(f"{binned} holds no square_<NNN>um bin folder. {_EXPECTED_LAYOUT}")
    size = DEFAULT_BIN_SIZE if bin_size is None else _check_bin_size(bin_size)
    if size not in sizes:
        present = ", ".join(f"{s} ({bin_folder_name(s)})" for s in sizes)
        raise ValueError(
            f"bin_size={size}: {binned} has no {bin_folder_name(size)}/ folder; the bin sizes present are "
            f"{present} µm. Pass one of them as bin_size= (data.bin_size=...)."
        )
    return binned / bin_folder_name(size), binned.parent, size


def _check_bin_size(bin_size) -> int:
    try:
        size = int(bin_size)
    except (TypeError, ValueError):
        size = -1
    if size <= 0 or size != bin_size:
        raise ValueError(f"bin_size={bin_size!r} must be a positive whole number of µm (Visium HD: 2, 8 or 16).")
    return size


# --------------------------------------------------------------------------- reading


def read_visium_hd(
    path: str | PathLike,
    *,
    bin_size: int | None = None,
    load_images: bool = True,
    library_id: str | None = None,
    fullres_image: str | PathLike | None = None,
    annotation: str | PathLike | None = None,
    annotation_key: str = "ground_truth",
) -> AnnData:
    """Read one bin size of a 10x Visium HD Space Ranger output.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder (holding ``binned_outputs/``), the run folder holding
        ``outs/``, or one ``binned_outputs/square_<NNN>um/`` folder.
    bin_size
        Bin side in µm: picks ``binned_outputs/square_{bin_size:03d}um/`` (Space Ranger writes
        2, 8 and 16). Default 8, or the bin size of the ``square_<NNN>um`` folder given as ``path``.
    load_images
        Load ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` when present: from the bin
        folder's ``spatial/``, else from ``outs/spatial/``.
    library_id
        Key under ``uns["spatial"]``; defaults to the name of the folder holding ``binned_outputs/``
        (its parent's name when that folder is called ``outs``).
    fullres_image
        Path to the full-resolution microscope image given to Space Ranger. Checked to exist and
        recorded as ``uns["spatial"][library_id]["metadata"]["fullres_path"]``; not loaded.
        Relative paths are tried against the bin folder, the ``outs/`` folder, then the working directory.
    annotation
        Optional label table (header row; barcode column, label column) joined into
        ``obs[annotation_key]``; relative paths are tried against the bin folder, then ``outs/``.
    annotation_key
        ``obs`` column for the annotation.

    Returns
    -------
    AnnData of the in-tissue bins of the count matrix, in matrix order:

    - ``X``: raw counts, float32 CSR; ``var`` as :func:`~mihd.data.read_visium` (Gene Expression only).
    - ``obs["in_tissue"]``, ``obs["array_row"]``, ``obs["array_col"]`` (int; the bin's grid row and
      column); ``obs[annotation_key]`` when ``annotation`` is given.
    - ``obsm["spatial"]``: float64 ``(x, y)`` = ``(pxl_col_in_fullres, pxl_row_in_fullres)``, the bin
      centre in full-resolution pixels; ``obsm["spatial_um"]``: the same times ``microns_per_pixel``.
    - ``uns["spatial"][library_id]``: ``"images"`` (``"hires"``/``"lowres"``, float32 RGB in [0, 1]),
      ``"scalefactors"`` (the JSON's numbers; ``spot_diameter_fullres`` is the bin side in pixels;
      always ``bin_size_um`` and ``microns_per_pixel``) and ``"metadata"`` (``bin_size_um``,
      ``bin_folder``, chemistry / software version, ``fullres_path``).

    Raises
    ------
    FileNotFoundError
        A required file or folder is missing (the message names it and the expected layout).
    ValueError
        ``bin_size`` not present (the message lists the bin sizes that are), barcodes of the matrix
        absent from ``tissue_positions.parquet``, missing coordinates or scale factors.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Visium HD folder {folder} does not exist or is not a folder. {_EXPECTED_LAYOUT}")
    bin_dir, outs, size = locate_bin_folder(folder, bin_size)
    counts_path = bin_dir / COUNT_FILE
    if not counts_path.is_file():
        raise FileNotFoundError(f"Count matrix {counts_path} not found. {_EXPECTED_LAYOUT}")
    spatial_dir = bin_dir / "spatial"
    positions_path = spatial_dir / POSITIONS_FILE
    if not positions_path.is_file():
        raise FileNotFoundError(f"Bin positions file {positions_path} not found. {_EXPECTED_LAYOUT}")
    if library_id is None:
        root = (outs or bin_dir).resolve()
        library_id = root.parent.name if root.name == "outs" else root.name
    bases = [bin_dir] + ([outs] if outs is not None else [])

    adata, h5_meta = _read_10x_h5(counts_path)
    adata = _join_bin_positions(adata, positions_path)

    image_paths = {}
    for res, name in IMAGE_FILES.items():
        for d in [spatial_dir] + ([outs / "spatial"] if outs is not None else []):
            if (d / name).is_file():
                image_paths[res] = d / name
                break
    required = ["spot_diameter_fullres"] + [IMAGE_SCALEF[res] for res in image_paths]
    scalefactors = _read_scalefactors(spatial_dir / SCALEFACTORS_FILE, required=required, layout=_EXPECTED_LAYOUT)
    scalefactors = _complete_hd_scalefactors(scalefactors, size, spatial_dir / SCALEFACTORS_FILE)
    adata.obsm["spatial_um"] = adata.obsm["spatial"] * scalefactors["microns_per_pixel"]

    metadata = {**h5_meta, "bin_size_um": size, "bin_folder": str(bin_dir)}
    return finish_slice(
        adata, library_id=library_id, image_paths=image_paths if load_images else {}, scalefactors=scalefactors,
        metadata=metadata, base=bases, fullres_image=fullres_image, annotation=annotation,
        annotation_key=annotation_key, spatial_dir=spatial_dir if load_images else None,
    )


def _as_str(values) -> np.ndarray:
    """Barcodes / cell ids as Python strings (parquet may hold bytes or integers)."""
    arr = np.asarray(values, dtype=object)
    if len(arr) and isinstance(arr[0], (bytes, bytearray)):
        return np.array([v.decode("utf-8") for v in arr], dtype=object)
    return arr.astype(str).astype(object)


def _parquet_columns(path: Path) -> list[str]:
    """Column names from the parquet footer; nothing else is read."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a damaged file
        raise ValueError(f"{path} is not a readable parquet file ({err}).") from err


def _join_bin_positions(adata: AnnData, pos_path: Path) -> AnnData:
    columns = _parquet_columns(pos_path)
    missing = [c for c in POSITION_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"Bin positions file {pos_path} lacks column(s) {missing}; it has {columns}.")
    # In-tissue rows only: a 2 µm run lists ~11 million bins, most of them off the tissue.
    pos = pd.read_parquet(pos_path, columns=POSITION_COLUMNS, filters=[("in_tissue", "==", 1)])
    barcodes = pd.Index(_as_str(pos["barcode"]))
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()]
        raise ValueError(f"Bin positions file {pos_path} lists {len(dup)} barcode(s) more than once, e.g. {list(dup[:3])}.")
    idx = barcodes.get_indexer(adata.obs_names)
    absent = idx < 0
    if absent.any():
        every = pd.Index(_as_str(pd.read_parquet(pos_path, columns=["barcode"])["barcode"]))
        unknown = ~adata.obs_names[absent].isin(every)
        if unknown.any():
            missing_bc = adata.obs_names[absent][unknown]
            raise ValueError(
                f"{len(missing_bc)} of {adata.n_obs} barcodes of the count matrix are missing from bin positions "
                f"file {pos_path}, e.g. {list(missing_bc[:3])} (file: {list(every[:3])}). Are the counts and the "
                "spatial/ folder from the same Space Ranger run and bin size?"
            )
        if absent.all():
            raise ValueError(
                f"Bin positions file {pos_path} marks none of the count matrix's {adata.n_obs} bins as in tissue (in_tissue=1)."
            )
        logger.info("%s: dropping %d matrix bin(s) not in tissue.", pos_path, int(absent.sum()))
        adata = adata[~absent].copy()
        idx = idx[~absent]
    pos = pos.iloc[idx]
    coords = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.obsm["spatial"] = check_spatial(coords, source=f"bin positions file {pos_path}")
    for col in ("in_tissue", "array_row", "array_col"):
        values = pd.to_numeric(pos[col], errors="coerce")
        if values.isna().any():
            raise ValueError(
                f"Bin positions file {pos_path}: column {col!r} is missing or non-numeric for "
                f"{int(values.isna().sum())} bin(s) of the matrix."
            )
        adata.obs[col] = values.to_numpy().astype(np.int64)
    return adata


def _complete_hd_scalefactors(scalefactors: dict[str, float], size: int, path: Path) -> dict[str, float]:
    """Ensure ``bin_size_um`` and ``microns_per_pixel`` (derived when an older file lacks them)."""
    out = dict(scalefactors)
    if "bin_size_um" in out and not np.isclose(out["bin_size_um"], size):
        raise ValueError(
            f"Scale factors file {path} says bin_size_um={out['bin_size_um']:g} but sits in the "
            f"{bin_folder_name(size)} folder; are the files from the same bin size?"
        )
    out["bin_size_um"] = float(size)
    if "microns_per_pixel" not in out:
        out["microns_per_pixel"] = float(size) / out["spot_diameter_fullres"]
    return out


# --------------------------------------------------------------------------- writing


def write_visium_hd_folder(
    adata: AnnData,
    path: str | PathLike,
    *,
    bin_size: int = DEFAULT_BIN_SIZE,
    microns_per_pixel: float | None = None,
    library_id: str | None = None,
    annotation_key: str | None = "ground_truth",
) -> Path:
    """Write ``adata`` as one bin size of a Space Ranger Visium HD ``outs/`` folder.

    Each observation is assigned to the square bin of side ``bin_size`` µm that holds its
    ``obsm["spatial"]`` position; observations sharing a bin are summed (as Space Ranger sums
    2 µm bins into 8 µm ones). Bins are named ``s_{bin_size:03d}um_{row:05d}_{col:05d}-1`` and
    written in that (row-major) order, at their centres. Call it again with another ``bin_size``
    (and the same ``path``) to add another ``square_<NNN>um`` folder.

    Parameters
    ----------
    adata
        Raw integer counts in ``X``; ``obsm["spatial"]`` as ``(x, y)`` full-resolution pixels;
        ``uns["spatial"][library_id]["scalefactors"]`` and optional ``"images"`` as for
        :func:`~mihd.data.write_visium_folder`. ``obs["in_tissue"]`` is used when present
        (a bin is in tissue when any of its observations is).
    path
        The ``outs/`` folder to create; ``binned_outputs/square_{bin_size:03d}um/`` is written in it.
    bin_size
        Bin side in µm.
    microns_per_pixel
        Full-resolution pixel size; default ``scalefactors["microns_per_pixel"]`` when present,
        else a Visium spot (55 µm) over ``spot_diameter_fullres`` (1.0 for
        :func:`~mihd.data.synthetic_slice`).
    library_id
        Which entry of ``uns["spatial"]``; may be omitted when there is exactly one.
    annotation_key
        When this ``obs`` column exists, also write ``truth.tsv`` in the bin folder (barcode, label
        of the bin's first observation; ``NA`` for missing); ``None`` to skip.

    Returns
    -------
    ``path`` (the ``outs/`` folder), which :func:`read_visium_hd` reads back.
    """
    size = _check_bin_size(bin_size)
    spatial_uns = adata.uns.get("spatial", {})
    if library_id is None:
        if len(spatial_uns) != 1:
            raise ValueError(f"adata.uns['spatial'] has {len(spatial_uns)} libraries {list(spatial_uns)}; pass library_id=.")
        library_id = next(iter(spatial_uns))
    lib = spatial_uns.get(library_id, {})
    src_sf = {k: float(v) for k, v in lib.get("scalefactors", {}).items()}
    if microns_per_pixel is None:
        if "microns_per_pixel" in src_sf:
            microns_per_pixel = src_sf["microns_per_pixel"]
        elif "spot_diameter_fullres" in src_sf:
            microns_per_pixel = 55.0 / src_sf["spot_diameter_fullres"]
        else:
            raise KeyError(
                f"write_visium_hd_folder needs microns_per_pixel= or adata.uns['spatial'][{library_id!r}]"
                "['scalefactors'] with microns_per_pixel or spot_diameter_fullres."
            )
    if "spatial" not in adata.obsm:
        raise KeyError(f"write_visium_hd_folder needs adata.obsm['spatial']; obsm has {list(adata.obsm)}.")

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    side_px = size / float(microns_per_pixel)
    col = np.floor(xy[:, 0] / side_px).astype(np.int64)
    row = np.floor(xy[:, 1] / side_px).astype(np.int64)
    if (col < 0).any() or (row < 0).any():
        raise ValueError("write_visium_hd_folder needs non-negative obsm['spatial'] pixel coordinates.")
    key = row * (int(col.max()) + 1) + col
    bins, first, member = np.unique(key, return_index=True, return_inverse=True)
    n_bins = len(bins)
    b_row, b_col = row[first], col[first]
    # (bins x obs) indicator times counts: the per-bin sums, in row-major bin order.
    agg = sparse.csr_matrix((np.ones(adata.n_obs), (member, np.arange(adata.n_obs))), shape=(n_bins, adata.n_obs))
    X = (agg @ sparse.csr_matrix(adata.X)).tocsr()
    in_tissue_obs = adata.obs["in_tissue"].to_numpy().astype(np.int64) if "in_tissue" in adata.obs else np.ones(adata.n_obs, np.int64)
    in_tissue = np.zeros(n_bins, dtype=np.int64)
    np.maximum.at(in_tissue, member, in_tissue_obs)
    names = np.array([f"s_{size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(b_row, b_col)], dtype=object)
    binned = AnnData(X=X, obs=pd.DataFrame(index=pd.Index(names)), var=adata.var.copy())

    bin_dir = Path(path) / BINNED_OUTPUTS / bin_folder_name(size)
    spatial_dir = bin_dir / "spatial"
    spatial_dir.mkdir(parents=True, exist_ok=True)
    write_10x_h5(binned, bin_dir / COUNT_FILE, library_id=library_id, writer="write_visium_hd_folder")

    # Like Space Ranger, list every bin of the grid's bounding box, off-tissue ones with in_tissue=0
    # (only the occupied bins when that box would be huge).
    r0, r1, c0, c1 = int(b_row.min()), int(b_row.max()), int(b_col.min()), int(b_col.max())
    if (r1 - r0 + 1) * (c1 - c0 + 1) <= 4_000_000:
        g_row, g_col = np.divmod(np.arange((r1 - r0 + 1) * (c1 - c0 + 1)), c1 - c0 + 1)
        g_row, g_col = g_row + r0, g_col + c0
        g_in = np.zeros(len(g_row), dtype=np.int64)
        g_in[(b_row - r0) * (c1 - c0 + 1) + (b_col - c0)] = in_tissue
        g_names = np.array([f"s_{size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(g_row, g_col)], dtype=object)
    else:
        g_row, g_col, g_in, g_names = b_row, b_col, in_tissue, names
    table = pd.DataFrame({
        "barcode": g_names,
        "in_tissue": g_in.astype(np.int32),
        "array_row": g_row.astype(np.int32),
        "array_col": g_col.astype(np.int32),
        "pxl_row_in_fullres": (g_row + 0.5) * side_px,
        "pxl_col_in_fullres": (g_col + 0.5) * side_px,
    })
    table.to_parquet(spatial_dir / POSITIONS_FILE, index=False)

    scalefactors = {
        "spot_diameter_fullres": side_px,
        "bin_size_um": float(size),
        "microns_per_pixel": float(microns_per_pixel),
        "fiducial_diameter_fullres": src_sf.get("fiducial_diameter_fullres", 1.5 * 55.0 / float(microns_per_pixel)),
    }
    for name in ("tissue_hires_scalef", "tissue_lowres_scalef"):
        if name in src_sf:
            scalefactors[name] = src_sf[name]
    scalefactors["regist_target_img_scalef"] = src_sf.get(
        "regist_target_img_scalef", src_sf.get("tissue_hires_scalef", 1.0)
    )
    with open(spatial_dir / SCALEFACTORS_FILE, "w") as fh:
        json.dump(scalefactors, fh, indent=2)
    write_images(lib.get("images", {}), spatial_dir)

    if annotation_key is not None and annotation_key in adata.obs:
        labels = adata.obs[annotation_key].astype(object).to_numpy()[first]
        labels = np.where(pd.isna(labels), "NA", labels)
        pd.DataFrame({"barcode": names, annotation_key: labels}).to_csv(bin_dir / "truth.tsv", sep="\t", index=False)
    return Path(path)
