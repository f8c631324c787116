"""Read and write 10x Visium (Space Ranger) output folders.

The layout read, relative to the folder given::

    filtered_feature_bc_matrix.h5        counts, CellRanger v3 HDF5 (legacy v2 also read)
    spatial/tissue_positions.csv         Space Ranger >= 2.0, with a header row
      or spatial/tissue_positions_list.csv   Space Ranger 1.x, no header
    spatial/scalefactors_json.json
    spatial/tissue_hires_image.png       optional
    spatial/tissue_lowres_image.png      optional

The result follows scanpy / squidpy conventions, so their plotting and graph
functions work on it unchanged.
"""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._annotation import add_annotation
from ._validate import check_spatial, resolve_path

__all__ = ["read_visium", "write_visium_folder"]

logger = logging.getLogger(__name__)

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
POSITION_FILES = {"v2": "tissue_positions.csv", "v1": "tissue_positions_list.csv"}
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
IMAGE_SCALEF = {"hires": "tissue_hires_scalef", "lowres": "tissue_lowres_scalef"}
SCALEFACTORS_FILE = "scalefactors_json.json"

_EXPECTED_LAYOUT = (
    "Expected a Space Ranger output folder holding filtered_feature_bc_matrix.h5 and "
    "spatial/{tissue_positions.csv | tissue_positions_list.csv, scalefactors_json.json, "
    "tissue_lowres_image.png and/or tissue_hires_image.png}."
)


# --------------------------------------------------------------------------- reading


def read_visium(
    path: str | PathLike,
    *,
    count_file: str = "filtered_feature_bc_matrix.h5",
    library_id: str | None = None,
    fullres_image: str | PathLike | None = None,
    annotation: str | PathLike | None = None,
    annotation_key: str = "ground_truth",
    load_images: bool = True,
) -> AnnData:
    """Read a 10x Visium Space Ranger output folder.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder (or any folder with the same layout).
    count_file
        Counts file inside ``path``, 10x HDF5 (CellRanger v3 layout; legacy v2 also read).
        Only "Gene Expression" features are kept.
    library_id
        Key under ``uns["spatial"]``; defaults to the folder's name.
    fullres_image
        Path to the full-resolution H&E (TIFF/PNG). Checked to exist and recorded as
        ``uns["spatial"][library_id]["metadata"]["fullres_path"]``; not loaded.
        Relative paths are tried against ``path`` first, then the working directory.
    annotation
        Optional label table (header row; barcode column, label column) joined into
        ``obs[annotation_key]``; relative paths are tried against ``path`` first. Not loaded
        unless given, even when a ``truth.tsv`` sits in the folder.
    annotation_key
        ``obs`` column for the annotation.
    load_images
        Load ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` when present.

    Returns
    -------
    AnnData of the in-tissue spots of the count matrix, in matrix order:

    - ``X``: raw counts, float32 CSR; ``var_names`` gene names made unique,
      ``var["gene_ids"]``, ``var["feature_types"]``, ``var["genome"]``.
    - ``obs["in_tissue"]``, ``obs["array_row"]``, ``obs["array_col"]`` (int);
      ``obs[annotation_key]`` (categorical, NaN = unannotated) when ``annotation`` is given.
    - ``obsm["spatial"]``: float64 ``(n_spots, 2)``, columns ``(pxl_col_in_fullres,
      pxl_row_in_fullres)``, i.e. ``(x, y)`` in full-resolution pixels, as scanpy/squidpy expect.
      Pixel position in an image = ``obsm["spatial"] * scalefactors["tissue_<res>_scalef"]``.
    - ``uns["spatial"][library_id]``: ``"images"`` (``"hires"``/``"lowres"`` present on disk,
      float32 RGB ``(H, W, 3)`` in [0, 1]), ``"scalefactors"`` (the JSON's entries) and
      ``"metadata"`` (chemistry / software version from the HDF5 when present, ``fullres_path``).

    Raises
    ------
    FileNotFoundError
        A required file is missing (the message names it and the expected layout).
    ValueError
        Barcodes of the matrix absent from the positions file, missing coordinates,
        or missing scale factors.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Visium folder {folder} does not exist or is not a folder. {_EXPECTED_LAYOUT}")
    counts_path = folder / count_file
    if not counts_path.is_file():
        raise FileNotFoundError(f"Count matrix {counts_path} not found. {_EXPECTED_LAYOUT}")
    library_id = folder.resolve().name if library_id is None else str(library_id)

    adata, h5_meta = _read_10x_h5(counts_path)
    positions, positions_path = _read_positions(folder / "spatial")
    adata = _join_positions(adata, positions, positions_path)

    spatial_dir = folder / "spatial"
    image_paths = {res: spatial_dir / name for res, name in IMAGE_FILES.items() if (spatial_dir / name).is_file()}
    required = ["spot_diameter_fullres"] + [IMAGE_SCALEF[res] for res in image_paths]
    scalefactors = _read_scalefactors(spatial_dir / SCALEFACTORS_FILE, required=required)

    return finish_slice(
        adata, library_id=library_id, image_paths=image_paths if load_images else {}, scalefactors=scalefactors,
        metadata=dict(h5_meta), base=folder, fullres_image=fullres_image, annotation=annotation,
        annotation_key=annotation_key, spatial_dir=spatial_dir if load_images else None,
    )


def finish_slice(
    adata: AnnData,
    *,
    library_id: str,
    image_paths: dict,
    scalefactors: dict,
    metadata: dict,
    base,
    fullres_image=None,
    annotation=None,
    annotation_key: str = "ground_truth",
    spatial_dir: Path | None = None,
) -> AnnData:
    """The tail every 10x folder reader shares: load the images, fill ``uns["spatial"]``, join the annotation.

    ``base`` (a folder or folders) resolves relative ``fullres_image`` / ``annotation`` paths;
    ``spatial_dir`` set and no image found logs that the slice has no image modality.
    """
    images: dict[str, np.ndarray] = {}
    if spatial_dir is not None and not image_paths:
        logger.warning("No tissue image in %s (looked for %s); the slice has no image modality.",
                       spatial_dir, ", ".join(IMAGE_FILES.values()))
    for res, img_path in image_paths.items():
        images[res] = load_rgb_image(img_path)
        _warn_if_outside(adata.obsm["spatial"] * scalefactors[IMAGE_SCALEF[res]], images[res].shape, img_path)
    if fullres_image is not None:
        metadata["fullres_path"] = str(resolve_path(fullres_image, base=base, what="full-resolution image"))
    adata.uns["spatial"] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    if annotation is not None:
        add_annotation(adata, resolve_path(annotation, base=base, what="annotation table"), key=annotation_key)
    return adata


def _decode(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    return arr.astype(str).astype(object)


def _read_10x_h5(path: Path, *, gex_only: bool = True) -> tuple[AnnData, dict[str, str]]:
    """Counts from a 10x HDF5 file, v3 (``matrix/features``) or legacy v2 (one group per genome).

    With ``gex_only`` only "Gene Expression" features are kept; otherwise every feature is
    returned and ``var["feature_types"]`` tells them apart (Xenium control probes, antibodies).
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"Count matrix {path} is not a readable HDF5 file ({err}).") from err
    with f:
        meta = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()
                if k in ("chemistry_description", "software_version")}
        if "matrix" in f:
            grp = f["matrix"]
            feats = grp["features"]
            var = pd.DataFrame({
                "gene_ids": _decode(feats["id"][:]),
                "feature_types": _decode(feats["feature_type"][:]) if "feature_type" in feats else "Gene Expression",
                "genome": _decode(feats["genome"][:]) if "genome" in feats else "",
            })
            names = _decode(feats["name"][:])
        else:
            groups = [k for k in f if isinstance(f[k], h5py.Group)]
            if len(groups) != 1 or "genes" not in f[groups[0]]:
                raise ValueError(
                    f"Count matrix {path} is not in a 10x HDF5 layout: expected a 'matrix' group (CellRanger v3) "
                    f"or a single genome group (v2); found {list(f)}."
                )
            grp = f[groups[0]]
            var = pd.DataFrame(
                {"gene_ids": _decode(grp["genes"][:]), "feature_types": "Gene Expression", "genome": groups[0]}
            )
            names = _decode(grp["gene_names"][:])
        n_genes, n_cells = (int(x) for x in grp["shape"][:])
        barcodes = _decode(grp["barcodes"][:])
        # Stored as genes x cells CSC, which is cells x genes CSR.
        X = sparse.csr_matrix(
            (grp["data"][:].astype(np.float32), grp["indices"][:], grp["indptr"][:]), shape=(n_cells, n_genes)
        )
    if not X.has_sorted_indices:
        X.sort_indices()
    if gex_only:
        gex = gene_expression_mask(var["feature_types"], path)
        if not gex.all():
            logger.info("%s: keeping %d Gene Expression of %d features.", path, int(gex.sum()), len(gex))
            X, var, names = X[:, gex], var[gex], names[gex]
    var.index = pd.Index(names)
    adata = AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)
    adata.var_names_make_unique()
    return adata, meta


def gene_expression_mask(feature_types: pd.Series, path: Path) -> np.ndarray:
    """Boolean mask of the "Gene Expression" features; raises when there are none."""
    gex = (feature_types == "Gene Expression").to_numpy()
    if not gex.any():
        types = sorted(set(feature_types))
        raise ValueError(f"Count matrix {path} has no 'Gene Expression' features (types: {types}).")
    return gex


def _looks_like_header(first_line: str) -> bool:
    fields = first_line.strip().split(",")
    if len(fields) < 2:
        return False
    try:
        int(float(fields[1]))
    except ValueError:
        return True
    return False


def _read_positions(spatial_dir: Path) -> tuple[pd.DataFrame, Path]:
    """The positions table indexed by barcode, with :data:`POSITION_COLUMNS` (barcode as index)."""
    candidates = [spatial_dir / POSITION_FILES["v2"], spatial_dir / POSITION_FILES["v1"]]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise FileNotFoundError(
            f"No spot positions file in {spatial_dir}: looked for {candidates[0].name} (Space Ranger >= 2.0) and "
            f"{candidates[1].name} (Space Ranger 1.x). {_EXPECTED_LAYOUT}"
        )
    pos_path = found[0]
    with open(pos_path) as fh:
        first = fh.readline()
    has_header = _looks_like_header(first)
    # All as text first: barcodes stay verbatim; numbers are parsed (and checked) below.
    table = pd.read_csv(pos_path, header=0 if has_header else None, dtype=str, keep_default_na=False)
    if table.shape[1] < len(POSITION_COLUMNS):
        raise ValueError(
            f"Positions file {pos_path} has {table.shape[1]} columns; expected {len(POSITION_COLUMNS)}: "
            f"{', '.join(POSITION_COLUMNS)}."
        )
    if has_header and set(POSITION_COLUMNS) <= set(table.columns):
        table = table[POSITION_COLUMNS]
    else:
        if has_header:
            logger.warning(
                "Positions file %s has header %s, not the Space Ranger names; reading its first six columns as %s.",
                pos_path,
                list(table.columns),
                POSITION_COLUMNS,
            )
        table = table.iloc[:, : len(POSITION_COLUMNS)]
        table.columns = POSITION_COLUMNS
    table["barcode"] = table["barcode"].astype(str).str.strip()
    dup = table["barcode"].duplicated()
    if dup.any():
        raise ValueError(
            f"Positions file {pos_path} lists {int(dup.sum())} barcode(s) more than once, "
            f"e.g. {list(table['barcode'][dup][:3])}."
        )
    table = table.set_index("barcode")
    for col in POSITION_COLUMNS[1:]:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table, pos_path


def _join_positions(adata: AnnData, positions: pd.DataFrame, pos_path: Path) -> AnnData:
    in_pos = adata.obs_names.isin(positions.index)
    if not in_pos.any():
        raise ValueError(
            f"No barcode of the count matrix appears in positions file {pos_path} (matrix: "
            f"{list(adata.obs_names[:3])}; positions: {list(positions.index[:3])}). Are the counts and the "
            "spatial/ folder from the same Space Ranger run?"
        )
    if not in_pos.all():
        missing = adata.obs_names[~in_pos]
        raise ValueError(
            f"{len(missing)} of {adata.n_obs} barcodes of the count matrix are missing from positions file "
            f"{pos_path}, e.g. {list(missing[:3])}. Are the counts and the spatial/ folder from the same run?"
        )
    pos = positions.loc[adata.obs_names]
    for col in ("in_tissue", "array_row", "array_col"):
        if pos[col].isna().any():
            raise ValueError(
                f"Positions file {pos_path}: column {col!r} is missing or non-numeric for "
                f"{int(pos[col].isna().sum())} spot(s) of the matrix."
            )
    keep = (pos["in_tissue"] == 1).to_numpy()
    if not keep.any():
        raise ValueError(
            f"Positions file {pos_path} marks none of the count matrix's {adata.n_obs} spots as in tissue (in_tissue=1)."
        )
    if not keep.all():
        logger.info("%s: dropping %d matrix spot(s) not in tissue.", pos_path, int((~keep).sum()))
        adata = adata[keep].copy()
        pos = pos[keep]
    coords = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.obsm["spatial"] = check_spatial(coords, source=f"positions file {pos_path}")
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].to_numpy().astype(np.int64)
    return adata


def _read_scalefactors(path: Path, *, required: list[str], layout: str = _EXPECTED_LAYOUT) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(f"Scale factors file {path} not found. {layout}")
    try:
        with open(path) as fh:
            scalefactors = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"Scale factors file {path} is not valid JSON ({err}).") from err
    missing = [k for k in required if k not in scalefactors]
    if missing:
        raise ValueError(
            f"Scale factors file {path} lacks {missing} (needed for the images present); it has {sorted(scalefactors)}."
        )
    return {k: float(v) for k, v in scalefactors.items() if isinstance(v, (int, float))}


def load_rgb_image(path: Path) -> np.ndarray:
    """An image file as float32 RGB ``(H, W, 3)`` in [0, 1]; alpha dropped, grey replicated."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
            return np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _warn_if_outside(pixels: np.ndarray, shape: tuple[int, ...], img_path: Path) -> None:
    h, w = shape[:2]
    outside = (pixels[:, 0] < 0) | (pixels[:, 0] >= w) | (pixels[:, 1] < 0) | (pixels[:, 1] >= h)
    if outside.mean() > 0.01:
        logger.warning(
            "%d of %d spots fall outside %s (%d x %d px) after scaling; check its scale factor.",
            int(outside.sum()),
            len(outside),
            img_path,
            w,
            h,
        )


# --------------------------------------------------------------------------- writing


def write_visium_folder(
    adata: AnnData,
    path: str | PathLike,
    *,
    positions_format: Literal["v1", "v2"] = "v1",
    library_id: str | None = None,
    count_file: str = "filtered_feature_bc_matrix.h5",
    annotation_key: str | None = "ground_truth",
) -> Path:
    """Write ``adata`` as a Space Ranger-style folder that :func:`read_visium` reads back.

    Parameters
    ----------
    adata
        Raw integer counts in ``X``; ``obsm["spatial"]`` as ``(x, y)`` full-resolution pixels;
        ``uns["spatial"][library_id]`` with ``"scalefactors"`` (at least ``spot_diameter_fullres``)
        and optionally ``"images"`` (``"hires"``/``"lowres"``, float in [0, 1] or uint8).
        ``obs["in_tissue"]``, ``obs["array_row"]``, ``obs["array_col"]`` are used when present
        (in_tissue defaults to 1; array indices are derived from the pixels otherwise).
    path
        Folder to create (parents too); files in it are overwritten.
    positions_format
        ``"v1"``: ``spatial/tissue_positions_list.csv`` without header (Space Ranger 1.x);
        ``"v2"``: ``spatial/tissue_positions.csv`` with header (Space Ranger >= 2.0).
    library_id
        Which entry of ``uns["spatial"]``; may be omitted when there is exactly one.
    count_file
        Name of the 10x HDF5 counts file (CellRanger v3 layout).
    annotation_key
        When this ``obs`` column exists, also write ``truth.tsv`` (header ``barcode<TAB>key``,
        ``NA`` for missing labels); ``None`` to skip.

    Returns
    -------
    The folder written.
    """
    if positions_format not in POSITION_FILES:
        raise ValueError(f"positions_format={positions_format!r}; use 'v1' (no header) or 'v2' (header).")
    spatial_uns = adata.uns.get("spatial", {})
    if library_id is None:
        if len(spatial_uns) != 1:
            raise ValueError(
                f"adata.uns['spatial'] has {len(spatial_uns)} libraries {list(spatial_uns)}; pass library_id=."
            )
        library_id = next(iter(spatial_uns))
    if library_id not in spatial_uns or "scalefactors" not in spatial_uns[library_id]:
        raise KeyError(
            f"write_visium_folder needs adata.uns['spatial'][{library_id!r}]['scalefactors'] "
            "(at least spot_diameter_fullres); synthetic_slice() and read_visium() provide it."
        )
    lib = spatial_uns[library_id]
    scalefactors = {k: float(v) for k, v in lib["scalefactors"].items()}
    if "spot_diameter_fullres" not in scalefactors:
        raise KeyError(f"adata.uns['spatial'][{library_id!r}]['scalefactors'] lacks spot_diameter_fullres.")
    if "spatial" not in adata.obsm:
        raise KeyError(f"write_visium_folder needs adata.obsm['spatial']; obsm has {list(adata.obsm)}.")

    folder = Path(path)
    spatial_dir = folder / "spatial"
    spatial_dir.mkdir(parents=True, exist_ok=True)

    write_10x_h5(adata, folder / count_file, library_id=library_id, writer="write_visium_folder")

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    obs = adata.obs
    if "array_row" in obs and "array_col" in obs:
        array_row, array_col = obs["array_row"].to_numpy(), obs["array_col"].to_numpy()
    else:
        array_row, array_col = _array_indices_from_pixels(xy, scalefactors["spot_diameter_fullres"])
    pixels = xy.round().astype(np.int64) if np.array_equal(xy, xy.round()) else xy
    table = pd.DataFrame({
        "barcode": adata.obs_names,
        "in_tissue": obs["in_tissue"].to_numpy().astype(np.int64) if "in_tissue" in obs else 1,
        "array_row": np.asarray(array_row, dtype=np.int64),
        "array_col": np.asarray(array_col, dtype=np.int64),
        "pxl_row_in_fullres": pixels[:, 1],
        "pxl_col_in_fullres": pixels[:, 0],
    })
    table.to_csv(spatial_dir / POSITION_FILES[positions_format], index=False, header=positions_format == "v2")

    with open(spatial_dir / SCALEFACTORS_FILE, "w") as fh:
        json.dump(scalefactors, fh)

    write_images(lib.get("images", {}), spatial_dir)

    if annotation_key is not None and annotation_key in obs:
        labels = obs[annotation_key].astype(object).where(obs[annotation_key].notna(), "NA")
        pd.DataFrame({"barcode": adata.obs_names, annotation_key: labels.to_numpy()}).to_csv(
            folder / "truth.tsv", sep="\t", index=False
        )
    return folder


def _array_indices_from_pixels(xy: np.ndarray, spot_diameter: float) -> tuple[np.ndarray, np.ndarray]:
    # Visium: 55 µm spots on a 100 µm hexagonal pitch; rows sqrt(3)/2 pitch apart,
    # array_col counts half-pitch steps along a row.
    pitch = spot_diameter * 100.0 / 55.0
    rel = xy - xy.min(axis=0)
    array_row = np.rint(rel[:, 1] / (pitch * np.sqrt(3) / 2)).astype(np.int64)
    array_col = np.rint(rel[:, 0] / (pitch / 2)).astype(np.int64)
    return array_row, array_col


def write_images(images: dict, spatial_dir: Path) -> None:
    """Write ``"hires"`` / ``"lowres"`` images (float in [0, 1] or uint8) as the Space Ranger PNGs."""
    from PIL import Image

    for res, img in images.items():
        if res not in IMAGE_FILES:
            continue
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
        Image.fromarray(img[..., :3] if img.ndim == 3 else img).save(spatial_dir / IMAGE_FILES[res])


def write_10x_h5(adata: AnnData, path: Path, *, library_id: str, writer: str) -> None:
    """Write ``adata.X`` as a CellRanger v3 HDF5 count matrix.

    ``var["feature_types"]`` is written when present (Xenium control probes), else every
    feature is "Gene Expression". ``writer`` names the public function in error messages.
    """
    X = sparse.csr_matrix(adata.X)
    if X.nnz and (X.data.min() < 0 or not np.array_equal(X.data, np.round(X.data))):
        raise ValueError(f"{writer} writes raw counts: adata.X must hold non-negative integers.")
    var = adata.var
    gene_ids = var["gene_ids"].astype(str).to_numpy() if "gene_ids" in var else adata.var_names.to_numpy(dtype=str)
    genome = var["genome"].astype(str).to_numpy() if "genome" in var else np.full(adata.n_vars, "unknown")
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["software_version"] = f"mihd.data.{writer}"
        f.attrs["library_ids"] = np.array([library_id], dtype="S")
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(adata.obs_names, dtype="S"))
        g.create_dataset("data", data=X.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=X.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=X.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([adata.n_vars, adata.n_obs], dtype=np.int32))
        feats = g.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        types = (
            var["feature_types"].astype(str).to_numpy() if "feature_types" in var else np.full(adata.n_vars, "Gene Expression")
        )
        feats.create_dataset("feature_type", data=np.array(types, dtype="S"))
        feats.create_dataset("genome", data=np.array(genome, dtype="S"))
        feats.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        feats.create_dataset("name", data=np.array(adata.var_names, dtype="S"))
