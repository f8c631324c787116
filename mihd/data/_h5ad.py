"""Read ``.h5ad`` files and dispatch a path to the right reader."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import anndata
from anndata import AnnData

from ._validate import check_spatial
from ._visium import POSITION_FILES, read_visium

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
    adata = anndata.read_h5ad(path)
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


def read_slice(path: str | PathLike, **kwargs) -> AnnData:
    """Read one slice from a Visium folder or an ``.h5ad`` file.

    Parameters
    ----------
    path
        A Space Ranger output folder (read by :func:`~mihd.data.read_visium`) or an
        ``.h5ad`` file (read by :func:`~mihd.data.read_h5ad`).
    **kwargs
        Passed to the chosen reader.

    Returns
    -------
    The slice as AnnData.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return read_visium(p, **kwargs)
    if p.is_file() and p.suffix.lower() == ".h5ad":
        return read_h5ad(p, **kwargs)
    accepted = "a Space Ranger (Visium) output folder or an .h5ad file"
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; expected {accepted}.")
    hint = ""
    if p.suffix.lower() in (".h5", ".csv", ".json", ".png"):
        folder = p.parent.parent if p.parent.name == "spatial" else p.parent
        hint = f" For a Visium slice pass the folder that holds it ({folder})."
    raise ValueError(f"Cannot read {p}: expected {accepted}.{hint}")


def inspect_slice(path: str | PathLike, *, annotation: str | PathLike | None = None) -> dict:
    """What a slice offers, found from file names and HDF5 metadata only (no counts read).

    Used to check a whole evaluation plan before anything runs.

    Parameters
    ----------
    path
        A Space Ranger output folder or an ``.h5ad`` file, as for :func:`read_slice`.
    annotation
        Optional annotation table; relative paths are taken inside a folder slice.

    Returns
    -------
    dict with ``kind`` (``"visium"`` / ``"h5ad"``), ``has_coords``, ``has_image`` and
    ``problems``: a list of messages naming each missing file or key (empty when the slice
    can be read).
    """
    p = Path(path).expanduser()
    info = {"path": str(p), "kind": None, "has_coords": False, "has_image": False, "problems": []}
    problems = info["problems"]
    if p.is_dir():
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
        problems.append(f"{p} does not exist; expected a Space Ranger (Visium) output folder or an .h5ad file.")
    else:
        problems.append(f"{p} is neither a Space Ranger output folder nor an .h5ad file.")
    if annotation is not None and not problems:
        a = Path(annotation).expanduser()
        a = a if a.is_absolute() or p.is_file() else p / a
        if not a.is_file():
            problems.append(f"annotation {a} does not exist.")
    return info
