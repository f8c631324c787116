"""Join a per-spot label table (e.g. manual layer annotation) onto an AnnData by barcode."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..metrics import UNANNOTATED_STRINGS

__all__ = ["add_annotation", "read_annotation_table"]

logger = logging.getLogger(__name__)

#: Entries read as "no label" (the spot stays unannotated, NaN in the categorical).
# One list of "no label" strings for reading and scoring.
MISSING_LABELS = UNANNOTATED_STRINGS


def read_annotation_table(
    path: str | PathLike,
    *,
    barcode_col: str | None = None,
    label_col: str | None = None,
) -> pd.Series:
    """Read a barcode → label table into a Series indexed by barcode.

    The table has a header row. ``.tsv``/``.txt``/``.tab`` files are read as
    tab-separated, ``.csv`` as comma-separated, anything else by sniffing.
    ``"NA"``, empty cells and similar placeholders become NaN.

    Parameters
    ----------
    path
        The table file.
    barcode_col, label_col
        Column names; default the first and second column.

    Returns
    -------
    Labels (``object`` dtype, NaN where unannotated) indexed by barcode, named after the label column.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    sep = {".tsv": "\t", ".txt": "\t", ".tab": "\t", ".csv": ","}.get(suffix)
    read_kw = {"sep": sep} if sep is not None else {"sep": None, "engine": "python"}
    table = pd.read_csv(path, dtype=str, keep_default_na=False, **read_kw)
    if table.shape[1] < 2:
        raise ValueError(
            f"Annotation table {path} has {table.shape[1]} column(s) {list(table.columns)}; expected a "
            "header row and at least two columns (barcode, label). Check the separator: .tsv is read "
            "tab-separated and .csv comma-separated."
        )
    barcode_col = table.columns[0] if barcode_col is None else barcode_col
    label_col = table.columns[1] if label_col is None else label_col
    for role, col in (("barcode_col", barcode_col), ("label_col", label_col)):
        if col not in table.columns:
            raise KeyError(f"{role}={col!r} is not a column of {path}; its columns are {list(table.columns)}.")
    barcodes = table[barcode_col].str.strip()
    labels = table[label_col].str.strip()
    labels = labels.where(~labels.isin(MISSING_LABELS), np.nan)

    dup = barcodes.duplicated(keep=False)
    if dup.any():
        conflicting = pd.DataFrame({"b": barcodes[dup], "l": labels[dup].fillna("<NA>")}).groupby("b")["l"].nunique()
        conflicting = conflicting[conflicting > 1]
        if len(conflicting):
            raise ValueError(
                f"Annotation table {path} gives different labels to the same barcode for "
                f"{len(conflicting)} barcode(s), e.g. {list(conflicting.index[:3])}; keep one row per barcode."
            )
        keep = ~barcodes.duplicated()
        barcodes, labels = barcodes[keep], labels[keep]
    return pd.Series(labels.to_numpy(dtype=object), index=pd.Index(barcodes.to_numpy(), name="barcode"), name=label_col)


def add_annotation(
    adata: AnnData,
    path: str | PathLike,
    *,
    key: str = "ground_truth",
    barcode_col: str | None = None,
    label_col: str | None = None,
) -> None:
    """Join a label table onto ``adata.obs[key]`` by barcode (in place).

    Parameters
    ----------
    adata
        Spots with barcodes as ``obs_names``.
    path
        Table with a header row; by default the first column holds barcodes and the
        second labels (see :func:`read_annotation_table` for separators and NA handling).
    key
        Column of ``adata.obs`` to write.
    barcode_col, label_col
        Column names in the table, when not the first two.

    Returns
    -------
    None. Sets ``adata.obs[key]``: categorical labels, NaN for spots that are unannotated
    (``NA``/empty in the table) or absent from the table. Table barcodes that are not in
    ``adata`` are ignored with a logged warning.

    Raises
    ------
    ValueError
        When no barcode of the table matches ``adata.obs_names``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Annotation table {path} does not exist.")
    labels = read_annotation_table(path, barcode_col=barcode_col, label_col=label_col)
    in_data = labels.index.isin(adata.obs_names)
    n_hit = int(in_data.sum())
    if n_hit == 0:
        raise ValueError(
            f"None of the {len(labels)} barcodes in annotation table {path} match the data's barcodes "
            f"(table: {list(labels.index[:3])}; data: {list(adata.obs_names[:3])}). "
            "Is it the table for this slice, and is the barcode column the first one (or set barcode_col)?"
        )
    n_extra = len(labels) - n_hit
    if n_extra:
        logger.warning("Annotation table %s: %d barcode(s) not in the data were ignored.", path, n_extra)
    aligned = labels.reindex(adata.obs_names)
    n_absent = int((~adata.obs_names.isin(labels.index)).sum())
    if n_absent:
        logger.warning(
            "Annotation table %s has no row for %d of %d spot(s); they are left unannotated (NaN).",
            path,
            n_absent,
            adata.n_obs,
        )
    adata.obs[key] = pd.Categorical(aligned.to_numpy(dtype=object))
