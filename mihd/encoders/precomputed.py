"""``precomputed``: image embeddings the user already has (UNI, CONCH, ResNet features, ...).

Two layouts are accepted:

- a ``.npy`` array with one row per spot, in the data's ``obs`` order;
- a table keyed by barcode (``.csv``, ``.tsv``, ``.parquet``): the first column (or
  the column named by ``barcode_column``) holds barcodes, every other numeric column
  is a feature.

Shape and barcode coverage are validated before anything is trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._registry import register_image_encoder


@register_image_encoder("precomputed")
class PrecomputedEncoder:
    """Load per-spot image embeddings from a file instead of computing them from patches."""

    requires_fit = False
    uses_patches = False
    needs_user_file = True

    def __init__(self, path: str | None = None, barcode_column: str | None = None, min_coverage: float = 1.0):
        if not path:
            raise ValueError("encoder.image=precomputed needs encoder.image_options.path=<.npy, .csv, .tsv or .parquet file>.")
        self.path = Path(str(path)).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"encoder.image_options.path={str(self.path)!r} does not exist.")
        if self.path.suffix.lower() not in (".npy", ".csv", ".tsv", ".txt", ".parquet"):
            raise ValueError(f"{self.path}: unsupported format {self.path.suffix!r}; use .npy, .csv, .tsv or .parquet.")
        if not 0 < min_coverage <= 1:
            raise ValueError(f"encoder.image_options.min_coverage must be in (0, 1]; got {min_coverage}.")
        self.barcode_column, self.min_coverage = barcode_column, float(min_coverage)

    @property
    def params(self) -> dict:
        stat = self.path.stat()
        # The file's size and mtime are part of the cache key: an edited file is re-read.
        return {"path": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "barcode_column": self.barcode_column, "min_coverage": self.min_coverage}

    def encode_obs(self, obs_names) -> np.ndarray:
        """``(N, F)`` float32 features aligned to ``obs_names``; spots missing from a table get the mean feature."""
        obs_names = np.asarray(obs_names).astype(str)
        n = len(obs_names)
        if self.path.suffix.lower() == ".npy":
            x = np.load(self.path, allow_pickle=False)
            if x.ndim != 2 or x.shape[0] != n:
                raise ValueError(
                    f"{self.path}: expected an array of shape ({n}, n_features) aligned to the {n} spots; got {x.shape}. "
                    "Save one row per spot in obs order, or use a table keyed by barcode."
                )
            x = x.astype(np.float32)
        else:
            x = self._from_table(obs_names)
        if not np.isfinite(x).all():
            raise ValueError(f"{self.path}: the embeddings contain NaN or infinite values.")
        return x

    def _from_table(self, obs_names: np.ndarray) -> np.ndarray:
        import pandas as pd

        suffix = self.path.suffix.lower()
        if suffix == ".parquet":
            table = pd.read_parquet(self.path)
        else:
            table = pd.read_csv(self.path, sep="\t" if suffix in (".tsv", ".txt") else ",")
        col = self.barcode_column or table.columns[0]
        if col not in table.columns:
            raise KeyError(f"{self.path}: no column {col!r}; columns are {list(table.columns)[:10]}.")
        table = table.set_index(table[col].astype(str)).drop(columns=[col])
        table = table.select_dtypes("number")
        if table.shape[1] == 0:
            raise ValueError(f"{self.path}: no numeric feature columns besides the barcode column {col!r}.")
        if table.index.duplicated().any():
            raise ValueError(f"{self.path}: duplicated barcodes, e.g. {table.index[table.index.duplicated()][:3].tolist()}.")
        present = np.isin(obs_names, table.index)
        coverage = present.mean()
        if coverage < self.min_coverage:
            missing = obs_names[~present][:3].tolist()
            raise ValueError(
                f"{self.path}: embeddings cover {present.sum()} of {len(obs_names)} spots ({coverage:.1%}); "
                f"missing e.g. {missing}. Check the barcodes (suffixes like '-1'), or lower "
                "encoder.image_options.min_coverage to fill the rest with the mean embedding."
            )
        x = table.reindex(obs_names).to_numpy(dtype=np.float32)
        if not present.all():
            x[~present] = np.nanmean(x[present], axis=0)
        return x
