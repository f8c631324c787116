"""Spot-centred patch extraction at a physical size, from whichever image exists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PatchGeometry", "patch_geometry", "extract_patches"]


@dataclass(frozen=True)
class PatchGeometry:
    """Where patches come from: the chosen image and how full-res pixels map onto it."""

    image_key: str  # "hires" or "lowres"
    scale: float  # image pixels per full-resolution pixel
    side_img_px: float  # patch side in image pixels (spot diameter x context)


def patch_geometry(scalefactors: dict, images: dict, *, context: float = 2.0, prefer=("hires", "lowres")) -> PatchGeometry:
    """Pick the highest-resolution image available and size the patch physically.

    The patch side is ``spot_diameter_fullres * context`` full-resolution pixels (a
    Visium spot is 55 µm), converted to the chosen image's pixels with its scale factor.

    Raises
    ------
    KeyError
        If no image or no matching scale factor is present; the message lists what is.
    """
    if "spot_diameter_fullres" not in scalefactors:
        raise KeyError(
            "scalefactors has no 'spot_diameter_fullres' (keys: "
            f"{sorted(scalefactors)}); it comes from spatial/scalefactors_json.json. Without it, use encoder.image=none."
        )
    for key in prefer:
        sf_key = f"tissue_{key}_scalef"
        if key in images and sf_key in scalefactors:
            scale = float(scalefactors[sf_key])
            return PatchGeometry(key, scale, float(scalefactors["spot_diameter_fullres"]) * context * scale)
    raise KeyError(
        f"no usable image: images present {sorted(images)}, scalefactors {sorted(scalefactors)}; "
        "need 'hires' or 'lowres' with its tissue_<res>_scalef. Use encoder.image=none for genes only."
    )


def extract_patches(
    image: np.ndarray, centers_xy: np.ndarray, side_px: float, *, out_px: int = 16, fill: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinearly sample square patches centred on spots.

    Parameters
    ----------
    image
        ``(H, W, C)`` float image in [0, 1].
    centers_xy
        ``(B, 2)`` patch centres in this image's pixels, columns ``(x, y)``.
    side_px
        Patch side in this image's pixels (may be fractional; a lowres Visium spot is ~4 px).
    out_px
        Side of the returned patches: the physical extent is resampled onto an
        ``out_px x out_px`` grid so every image resolution yields the same shape.
    fill
        Value for samples outside the image (1.0 = white, like glass).

    Returns
    -------
    patches
        ``(B, out_px, out_px, C)`` float32.
    outside
        ``(B,)`` bool, True where part of the patch fell outside the image (padded).
    """
    centers_xy = np.asarray(centers_xy, dtype=np.float64)
    h, w = image.shape[:2]
    # Pixel centres sit at integer indices; offsets span the physical side.
    offs = (np.arange(out_px) + 0.5) / out_px * side_px - side_px / 2.0
    cx = centers_xy[:, 0, None] + offs[None, :]  # (B, out)
    cy = centers_xy[:, 1, None] + offs[None, :]
    rows = np.broadcast_to(cy[:, :, None], (len(cx), out_px, out_px))
    cols = np.broadcast_to(cx[:, None, :], (len(cx), out_px, out_px))
    outside = ((cx.min(1) < -0.5) | (cx.max(1) > w - 0.5) | (cy.min(1) < -0.5) | (cy.max(1) > h - 0.5))
    coords = np.stack([rows.ravel(), cols.ravel()])
    chans = [
        ndimage.map_coordinates(image[:, :, c], coords, order=1, mode="constant", cval=fill, prefilter=False)
        for c in range(image.shape[2])
    ]
    patches = np.stack(chans, -1).reshape(len(cx), out_px, out_px, image.shape[2]).astype(np.float32)
    return patches, outside
