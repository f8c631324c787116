"""The single LightningModule that trains any registered fusion (scvi-tools' training-plan pattern).

Self-supervised objective, the same for every strategy so that comparisons isolate
the fusion itself:

- reconstruct each modality's input features from the fused embedding (one small
  MLP decoder per modality; weights per modality, genes first);
- plus whatever the strategy adds through an optional ``extra_loss(z, batch)`` method.

The module sees tensors only: it knows nothing of AnnData.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from ..fusion import forward_fusion


class FusionTrainingPlan(pl.LightningModule):
    """Train ``fusion`` by reconstructing every modality from its embedding."""

    def __init__(
        self,
        fusion: nn.Module,
        dims: dict[str, int],
        *,
        out_dim: int,
        needs_coords: bool,
        modality_weights: dict[str, float] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        decoder_hidden: int = 64,
    ):
        super().__init__()
        self.fusion = fusion
        self.needs_coords = needs_coords
        self.names = sorted(dims)
        weights = dict(modality_weights or {})
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ValueError(f"trainer.modality_weights names {sorted(unknown)}, but the modalities are {self.names}.")
        self.modality_weights = {m: float(weights.get(m, 1.0)) for m in self.names}
        self.decoders = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(out_dim, decoder_hidden), nn.GELU(), nn.Linear(decoder_hidden, dims[m])) for m in self.names}
        )
        self.lr, self.weight_decay = lr, weight_decay
        self.save_hyperparameters(ignore=["fusion"])

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return forward_fusion(self.fusion, {m: batch[m] for m in self.names}, batch.get("coords"), batch.get("neighborhood"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        z = self.embed(batch)
        losses = {
            f"rec_{m}": nn.functional.mse_loss(self.decoders[m](z), batch[f"target_{m}"]) for m in self.names
        }
        loss = sum(self.modality_weights[m] * losses[f"rec_{m}"] for m in self.names)
        extra = getattr(self.fusion, "extra_loss", None)
        if extra is not None:
            losses["extra"] = extra(z, batch)
            loss = loss + losses["extra"]
        self.log("loss", loss, prog_bar=True, batch_size=len(z))
        for k, v in losses.items():
            self.log(k, v, batch_size=len(z))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
