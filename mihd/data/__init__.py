"""Readers, the bundled example slice and a synthetic slice generator.

Every reader returns AnnData in scanpy / squidpy conventions: raw counts in ``X``,
``obsm["spatial"]`` as ``(x, y)`` full-resolution pixels, and images with their
scale factors under ``uns["spatial"][library_id]``.
"""

from __future__ import annotations

from ._annotation import add_annotation
from ._example import dlpfc_151673, example_path
from ._h5ad import inspect_slice, read_h5ad, read_slice
from ._synthetic import synthetic_slice
from ._visium import read_visium, write_visium_folder

__all__ = [
    "read_visium",
    "read_h5ad",
    "read_slice",
    "inspect_slice",
    "add_annotation",
    "synthetic_slice",
    "write_visium_folder",
    "example_path",
    "dlpfc_151673",
]
