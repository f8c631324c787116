"""Readers, the bundled example slice and a synthetic slice generator.

Readers for 10x Visium, Visium HD (one bin size) and Xenium (one cell per
observation) outputs and ``.h5ad``; :func:`read_slice` picks one from the path.
:func:`pool_spots` makes legacy-ST-like coarse sections from a Visium slice.
Every reader returns AnnData in scanpy / squidpy conventions: raw counts in ``X``,
``obsm["spatial"]`` as ``(x, y)`` full-resolution pixels, and images with their
scale factors under ``uns["spatial"][library_id]``.
"""

from __future__ import annotations

from ._annotation import add_annotation
from ._example import dlpfc_151673, example_path
from ._h5ad import inspect_slice, read_h5ad, read_slice
from ._pool import pool_spots
from ._synthetic import synthetic_slice
from ._visium import read_visium, write_visium_folder
from ._visium_hd import read_visium_hd, write_visium_hd_folder
from ._xenium import read_xenium, write_xenium_folder

__all__ = [
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "read_h5ad",
    "read_slice",
    "inspect_slice",
    "add_annotation",
    "pool_spots",
    "synthetic_slice",
    "write_visium_folder",
    "write_visium_hd_folder",
    "write_xenium_folder",
    "example_path",
    "dlpfc_151673",
]
