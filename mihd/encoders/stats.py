"""``stats``: colour, H&E stain and texture statistics of a spot patch (offline default).

Stains come from Ruifrok & Johnston colour deconvolution (Anal Quant Cytol Histol
2001): optical density ``-log(I)`` projected on the inverse of the haematoxylin /
eosin / residual stain matrix. Texture is summarised by gradient energy, Laplacian
energy and the grey-level histogram entropy, which separate dense cell layers from
fibre-rich white matter even at lowres scale.
"""

from __future__ import annotations

import numpy as np

from ._registry import register_image_encoder

# Ruifrok & Johnston H&E-DAB stain vectors (rows: H, E, residual), as in skimage.color.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def _stains(patches: np.ndarray) -> np.ndarray:
    od = -np.log(np.clip(patches, 1e-6, 1.0))
    return od @ _HED_FROM_RGB


@register_image_encoder("stats")
class StatsEncoder:
    """Colour (RGB mean/sd), stain (H, E, residual mean/sd/quantiles) and texture statistics."""

    def __init__(self, n_hist_bins: int = 8):
        if n_hist_bins < 2:
            raise ValueError(f"encoder.n_hist_bins must be >= 2, got {n_hist_bins}.")
        self.n_hist_bins = n_hist_bins

    requires_fit = False  # nothing to learn

    @property
    def params(self) -> dict:
        return {"n_hist_bins": self.n_hist_bins}

    def encode(self, patches: np.ndarray) -> np.ndarray:
        """``(B, h, w, 3)`` float patches in [0, 1] -> ``(B, F)`` float32 features."""
        b = len(patches)
        flat_rgb = patches.reshape(b, -1, 3)
        hed = _stains(patches).reshape(b, -1, 3)
        grey = patches.mean(-1)
        gy, gx = np.gradient(grey, axis=(1, 2))
        grad = np.sqrt(gx**2 + gy**2).reshape(b, -1)
        lap = (
            -4 * grey[:, 1:-1, 1:-1]
            + grey[:, :-2, 1:-1]
            + grey[:, 2:, 1:-1]
            + grey[:, 1:-1, :-2]
            + grey[:, 1:-1, 2:]
        ).reshape(b, -1)
        # Grey-level histogram entropy, vectorised over the batch.
        bins = np.clip((grey.reshape(b, -1) * self.n_hist_bins).astype(np.int64), 0, self.n_hist_bins - 1)
        counts = np.zeros((b, self.n_hist_bins))
        np.add.at(counts, (np.repeat(np.arange(b), bins.shape[1]), bins.ravel()), 1.0)
        p = counts / counts.sum(1, keepdims=True)
        entropy = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(1)
        feats = [
            flat_rgb.mean(1),
            flat_rgb.std(1),
            hed.mean(1),
            hed.std(1),
            np.quantile(hed[:, :, :2], [0.25, 0.75], axis=1).transpose(1, 0, 2).reshape(b, -1),
            grad.mean(1, keepdims=True),
            np.sqrt((lap**2).mean(1, keepdims=True)),
            entropy[:, None],
            p,
        ]
        return np.concatenate(feats, axis=1).astype(np.float32)
