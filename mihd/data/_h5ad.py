"""Read ``.h5ad`` files and dispatch a path to the right reader."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import anndata
from anndata import AnnData

from ._validate import check_spatial
from ._visium import read_visium

__all__ = ["read_h5ad", "read_slice"]

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
