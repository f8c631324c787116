"""Checks shared by the readers: spot coordinates, input paths, and whether a slice can be used."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["check_spatial", "resolve_path", "check_slice"]

logger = logging.getLogger(__name__)


def check_spatial(coords, *, source: str) -> np.ndarray:
    """Return spot coordinates as a float64 ``(N, 2)`` array, or raise.

    Parameters
    ----------
    coords
        Array-like of shape ``(N, 2)`` (a DataFrame is accepted).
    source
        Where the coordinates came from (a file and key), used in error messages.

    Raises
    ------
    ValueError
        When the shape is not ``(N, 2)`` or any value is NaN / infinite.
    """
    arr = np.asarray(coords, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"Spot coordinates in {source} have shape {arr.shape}; expected (n_spots, 2) "
            "holding (x, y) = (pixel column, pixel row) in full-resolution pixels."
        )
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {arr.shape[0]} spots in {source} have missing or non-finite "
            "coordinates; drop those spots or fill in their positions before loading."
        )
    return arr


def resolve_path(path: str | PathLike, *, base: Path | Sequence[Path], what: str) -> Path:
    """Resolve a user-given file path, trying ``base`` first for relative paths.

    Parameters
    ----------
    path
        Absolute path, or a path relative to ``base`` or to the working directory.
    base
        Folder (or folders, in order) against which relative paths are tried first
        (e.g. the Visium folder).
    what
        What the file is, for the error message (``"annotation table"``).

    Raises
    ------
    FileNotFoundError
        Naming every location tried.
    """
    p = Path(path).expanduser()
    bases = [base] if isinstance(base, (str, PathLike)) else list(base)
    tried = [p] if p.is_absolute() else [Path(b) / p for b in bases] + [Path.cwd() / p]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    where = " or ".join(str(t) for t in tried)
    raise FileNotFoundError(f"The {what} {str(path)!r} was not found (looked for {where}).")


def check_slice(adata, *, source: str) -> None:
    """Refuse a slice mihd cannot learn from; make duplicated barcodes unique (in place, with a warning).

    Parameters
    ----------
    adata
        The slice as read (raw counts in ``X``).
    source
        Where it came from (a path or ``data.path=...``), for the messages.

    Raises
    ------
    ValueError
        No spots, no genes, or every count zero.
    """
    if adata.n_obs == 0:
        raise ValueError(f"{source} holds no spots (0 observations); check the file, or the in_tissue column of its positions.")
    if adata.n_vars == 0:
        raise ValueError(f"{source} holds no genes (0 variables); check that X holds the count matrix.")
    total = adata.X.sum()
    if not np.isfinite(total) or float(total) == 0:
        raise ValueError(f"{source}: every count in X is zero{'' if np.isfinite(total) else ' or not finite'}; "
                         "mihd needs raw counts in X (if they are in a layer, e.g. layers['counts'], copy them to X).")
    names = adata.obs_names
    if not names.is_unique:
        dup = names[names.duplicated()].unique()
        logger.warning(
            "%s: %d barcodes occur more than once (e.g. %s); made unique: the first keeps its name, the "
            "others get -1, -2, ... (an annotation table or precomputed embedding keyed by barcode matches the first).",
            source, len(dup), ", ".join(map(str, dup[:5])),
        )
        adata.obs_names_make_unique()
