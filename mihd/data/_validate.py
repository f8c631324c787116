"""Checks shared by the readers: spot coordinates and input paths."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["check_spatial", "resolve_path"]


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
