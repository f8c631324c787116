"""Read ``.h5ad`` files and dispatch a path to the right reader."""

from __future__ import annotations

import inspect
import logging
from os import PathLike
from pathlib import Path

import anndata
from anndata import AnnData

from ._validate import check_spatial
from ._visium import IMAGE_FILES, POSITION_FILES, read_visium
from ._visium_hd import (
    COUNT_FILE as HD_COUNT_FILE,
    POSITIONS_FILE as HD_POSITIONS_FILE,
    SCALEFACTORS_FILE,
    is_visium_hd_folder,
    locate_bin_folder,
    read_visium_hd,
)
from ._xenium import CELLS_FILES, COUNT_FILE as XENIUM_COUNT_FILE, is_xenium_folder, morphology_path, read_xenium

__all__ = ["read_h5ad", "read_slice", "inspect_slice"]

logger = logging.getLogger(__name__)


def read_h5ad(path: str | PathLike, *, spatial_key: str = "spatial", require_spatial: bool = False) -> AnnData:
    """Read an ``.h5ad`` file and check its spot coordinates.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    spatial_key
        ``obsm`` key holding ``(x, y)`` coordinates. When it is not ``"spatial"`` it is
        copied to ``obsm["spatial"]``, where the rest of mihd looks.
    require_spatial
        Raise when ``obsm[spatial_key]`` is absent (otherwise the data load without coordinates).

    Returns
    -------
    The AnnData; when coordinates are present, ``obsm["spatial"]`` is a float64 ``(n_obs, 2)`` array.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    KeyError
        ``require_spatial`` and ``obsm[spatial_key]`` is absent (the message lists the obsm keys).
    ValueError
        The coordinates are not ``(n_obs, 2)`` or hold NaN / infinite values.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"h5ad file {path} does not exist.")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # h5py OSError, KeyError or anndata's own for a damaged or foreign file
        detail = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not a readable .h5ad file ({type(err).__name__}: {detail}); check that the "
                         "file is complete (not truncated by a copy) and was written by anndata.") from None
    if spatial_key not in adata.obsm:
        if require_spatial:
            raise KeyError(
                f"{path} has no obsm[{spatial_key!r}]; its obsm keys are {list(adata.obsm)}. "
                "Pass spatial_key= naming the key with the (x, y) spot coordinates."
            )
        return adata
    coords = check_spatial(adata.obsm[spatial_key], source=f"{path} obsm[{spatial_key!r}]")
    if spatial_key != "spatial" and "spatial" in adata.obsm:
        logger.warning("%s: replacing obsm['spatial'] with obsm[%r].", path, spatial_key)
    adata.obsm["spatial"] = coords
    return adata


_ACCEPTED = (
    "a Space Ranger (Visium) output folder, a Visium HD output folder (binned_outputs/), "
    "a Xenium output folder or an .h5ad file"
)


def slice_kind(path: str | PathLike) -> str | None:
    """``"visium_hd"``, ``"xenium"``, ``"visium"`` (any other folder), ``"h5ad"``, or None.

    A folder holding ``binned_outputs/`` (or ``outs/binned_outputs/``), or named
    ``square_<NNN>um``, is Visium HD; one holding ``cell_feature_matrix.h5``, ``cells.parquet``,
    ``cells.csv.gz`` or ``experiment.xenium`` is Xenium. Only file names are looked at.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if is_visium_hd_folder(p):
            return "visium_hd"
        if is_xenium_folder(p):
            return "xenium"
        return "visium"
    if p.is_file() and p.suffix.lower() == ".h5ad":
        return "h5ad"
    return None


_READERS = {"visium": read_visium, "visium_hd": read_visium_hd, "xenium": read_xenium, "h5ad": read_h5ad}


def read_slice(path: str | PathLike, **kwargs) -> AnnData:
    """Read one slice from a Visium, Visium HD or Xenium folder, or an ``.h5ad`` file.

    Parameters
    ----------
    path
        A Visium HD output folder (read by :func:`~mihd.data.read_visium_hd`), a Xenium output
        bundle (:func:`~mihd.data.read_xenium`), any other folder as a Space Ranger output
        (:func:`~mihd.data.read_visium`), or an ``.h5ad`` file (:func:`~mihd.data.read_h5ad`);
        see :func:`slice_kind`.
    **kwargs
        Passed to the chosen reader (e.g. ``bin_size=16`` for Visium HD).

    Returns
    -------
    The slice as AnnData.

    Raises
    ------
    TypeError
        An option the chosen reader does not take (the message names the reader and its options).
    """
    p = Path(path).expanduser()
    kind = slice_kind(p)
    if kind is not None:
        reader = _READERS[kind]
        accepted_opts = [n for n, prm in inspect.signature(reader).parameters.items() if prm.kind is prm.KEYWORD_ONLY]
        unknown = sorted(set(kwargs) - set(accepted_opts))
        if unknown:
            raise TypeError(
                f"{p} is read as {kind} by {reader.__name__}, which takes no option(s) {unknown}; "
                f"its options are {accepted_opts}."
            )
        return reader(p, **kwargs)
    accepted = _ACCEPTED
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; expected {accepted}.")
    hint = ""
    if p.suffix.lower() in (".h5", ".csv", ".json", ".png"):
        folder = p.parent.parent if p.parent.name == "spatial" else p.parent
        hint = f" For a Visium, Visium HD or Xenium slice pass the folder that holds it ({folder})."
    raise ValueError(f"Cannot read {p}: expected {accepted}.{hint}")


def inspect_slice(
    path: str | PathLike, *, annotation: str | PathLike | None = None, bin_size: int | None = None
) -> dict:
    """What a slice offers, found from file names, HDF5 and parquet metadata only (no counts read).

    Used to check a whole evaluation plan before anything runs.

    Parameters
    ----------
    path
        A Visium, Visium HD or Xenium folder or an ``.h5ad`` file, as for :func:`read_slice`.
    annotation
        Optional annotation table; relative paths are taken inside a folder slice (for Visium HD,
        the bin folder or ``outs/``).
    bin_size
        Visium HD only: the bin size to check (default 8, or the ``square_<NNN>um`` folder given).

    Returns
    -------
    dict with ``kind`` (``"visium"`` / ``"visium_hd"`` / ``"xenium"`` / ``"h5ad"``), ``has_coords``,
    ``has_image`` and ``problems``: a list of messages naming each missing file or key (empty
    when the slice can be read).
    """
    p = Path(path).expanduser()
    info = {"path": str(p), "kind": None, "has_coords": False, "has_image": False, "problems": []}
    problems = info["problems"]
    kind = slice_kind(p)
    annotation_bases = [p]
    if kind == "visium_hd":
        info["kind"] = "visium_hd"
        annotation_bases = _inspect_visium_hd(p, bin_size, info)
    elif kind == "xenium":
        info["kind"] = "xenium"
        _inspect_xenium(p, info)
    elif p.is_dir():
        info["kind"] = "visium"
        spatial = p / "spatial"
        if not (p / "filtered_feature_bc_matrix.h5").is_file():
            problems.append(f"{p} has no filtered_feature_bc_matrix.h5 (the counts of a Space Ranger output folder).")
        info["has_coords"] = any((spatial / name).is_file() for name in POSITION_FILES.values())
        if not info["has_coords"]:
            problems.append(f"{spatial} has none of {sorted(POSITION_FILES.values())} (spot positions).")
        info["has_image"] = any((spatial / f"tissue_{r}_image.png").is_file() for r in ("lowres", "hires"))
    elif p.is_file() and p.suffix.lower() == ".h5ad":
        import h5py

        info["kind"] = "h5ad"
        try:
            with h5py.File(p, "r") as f:
                info["has_coords"] = "obsm" in f and "spatial" in f["obsm"]
                info["has_image"] = info["has_coords"] and "uns" in f and "spatial" in f["uns"]
        except OSError as err:
            problems.append(f"{p} is not a readable .h5ad file ({err}).")
    elif not p.exists():
        problems.append(f"{p} does not exist; expected {_ACCEPTED}.")
    else:
        problems.append(f"{p} is not {_ACCEPTED}.")
    if annotation is not None and not problems:
        a = Path(annotation).expanduser()
        candidates = [a] if a.is_absolute() or p.is_file() else [b / a for b in annotation_bases]
        if not any(c.is_file() for c in candidates):
            problems.append(f"annotation {' or '.join(map(str, candidates))} does not exist.")
    return info


def _parquet_has(path: Path, columns: list[str], problems: list[str], what: str) -> bool:
    """Whether ``path`` exists and its footer lists ``columns``; each failure appended to ``problems``."""
    if not path.is_file():
        problems.append(f"{path} is missing ({what}).")
        return False
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception as err:  # ArrowInvalid / OSError for a damaged file
        problems.append(f"{path} is not a readable parquet file ({err}).")
        return False
    lacking = [c for c in columns if c not in names]
    if lacking:
        problems.append(f"{path} lacks column(s) {lacking} ({what}).")
        return False
    return True


def _inspect_visium_hd(p: Path, bin_size: int | None, info: dict) -> list[Path]:
    problems = info["problems"]
    try:
        bin_dir, outs, _ = locate_bin_folder(p, bin_size)
    except (FileNotFoundError, ValueError) as err:
        problems.append(str(err))
        return [p]
    if not (bin_dir / HD_COUNT_FILE).is_file():
        problems.append(f"{bin_dir} has no {HD_COUNT_FILE} (the bin counts).")
    spatial = bin_dir / "spatial"
    info["has_coords"] = _parquet_has(
        spatial / HD_POSITIONS_FILE, ["barcode", "in_tissue", "pxl_row_in_fullres", "pxl_col_in_fullres"], problems, "bin positions"
    )
    if not (spatial / SCALEFACTORS_FILE).is_file():
        problems.append(f"{spatial / SCALEFACTORS_FILE} is missing (bin size and image scale factors).")
    image_dirs = [spatial] + ([outs / "spatial"] if outs is not None else [])
    info["has_image"] = any((d / name).is_file() for d in image_dirs for name in IMAGE_FILES.values())
    return [bin_dir] + ([outs] if outs is not None else [])


def _inspect_xenium(p: Path, info: dict) -> None:
    problems = info["problems"]
    if not (p / XENIUM_COUNT_FILE).is_file():
        problems.append(f"{p} has no {XENIUM_COUNT_FILE} (the cell counts of a Xenium bundle).")
    if (p / CELLS_FILES[0]).is_file():
        info["has_coords"] = _parquet_has(p / CELLS_FILES[0], ["cell_id", "x_centroid", "y_centroid"], problems, "cell centroids")
    elif (p / CELLS_FILES[1]).is_file():
        info["has_coords"] = True
    else:
        problems.append(f"{p} has neither {CELLS_FILES[0]} nor {CELLS_FILES[1]} (cell centroids).")
    info["has_image"] = morphology_path(p) is not None
