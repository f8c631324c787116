"""Spot features as Lightning batches: full batch for spot-level slices, mini-batches for HD."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


class _IndexBatches(torch.utils.data.Dataset):
    """Yields index batches of one seeded permutation per epoch (one item = one batch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0
        self._perm = torch.arange(n)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 0 and self.batch_size < self.n:  # a new epoch: draw its permutation once
            self.epoch += 1
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=gen)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]


class SpotDataModule(pl.LightningDataModule):
    """Holds the per-modality features (and coordinates) of one slice as tensors.

    Parameters
    ----------
    features
        Modality name -> (N, F) float array: the model's inputs.
    targets
        Modality name -> (N, F) reconstruction targets (defaults to ``features``).
    coords
        (N, 2) normalised coordinates, or None.
    neighbors
        (N, k) indices of each spot's k nearest other spots, for graph fusions; or None.
    aux
        Extra per-spot arrays (first axis N) returned by a strategy's ``precompute``.
    batch_size
        Spots per step; ``None`` or >= N trains on the full slice each step.
    """

    def __init__(
        self,
        features: dict[str, np.ndarray],
        *,
        targets: dict[str, np.ndarray] | None = None,
        coords: np.ndarray | None = None,
        neighbors: np.ndarray | None = None,
        aux: dict[str, np.ndarray] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.features = {m: torch.as_tensor(x, dtype=torch.float32) for m, x in features.items()}
        targets = targets or features
        self.targets = {m: torch.as_tensor(x, dtype=torch.float32) for m, x in targets.items()}
        self.coords = None if coords is None else torch.as_tensor(coords, dtype=torch.float32)
        # (N, k) spatial neighbours (self excluded): each batch carries its spots' neighbourhoods,
        # so graph fusions train on mini-batches with O(B k F) memory and no N x N structure.
        self.neighbors = None if neighbors is None else torch.as_tensor(np.asarray(neighbors), dtype=torch.long)
        # Per-spot arrays a strategy derived from the features (e.g. pseudo-labels), batched alongside.
        self.aux = {k: torch.as_tensor(np.asarray(v)) for k, v in (aux or {}).items()}
        if self.neighbors is not None and self.coords is None:
            raise ValueError("spatial neighbours were given without coordinates.")
        self.n = len(next(iter(self.features.values())))
        self.batch_size = self.n if batch_size is None else min(int(batch_size), self.n)
        self.seed = seed

    def gather(self, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        batch = {m: x[idx] for m, x in self.features.items()}
        batch.update({f"target_{m}": x[idx] for m, x in self.targets.items()})
        if self.coords is not None:
            batch["coords"] = self.coords[idx]
        if self.neighbors is not None:
            nbr = self.neighbors[idx]
            hood = {m: x[nbr] for m, x in self.features.items()}
            hood["offsets"] = self.coords[nbr] - batch["coords"].unsqueeze(1)
            batch["neighborhood"] = hood
        if self.aux:
            batch["aux"] = {k: v[idx] for k, v in self.aux.items()}
        return batch

    def train_dataloader(self) -> DataLoader:
        ds = _IndexBatches(self.n, self.batch_size, self.seed)
        return DataLoader(ds, batch_size=None, shuffle=False, collate_fn=self.gather, num_workers=0)

    def predict_batches(self, batch_size: int = 65536):
        """Ordered batches covering every spot once, for embedding inference."""
        for start in range(0, self.n, batch_size):
            yield self.gather(slice(start, start + batch_size))
