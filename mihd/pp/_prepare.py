"""One preparation step shared by every run of a slice: gene and image features, cached.

``prepare_inputs`` turns an AnnData (raw counts, coordinates, images) into per-modality
feature matrices. The result is cached on disk under a key made of a fingerprint of
the data and every encoder parameter, so runs that differ only in fusion, seed or
clustering reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._device import keep_torch_threads
from .._io import atomic_write
from ..encoders import extract_patches, get_gene_encoder, get_image_encoder, patch_geometry, read_fullres

log = logging.getLogger(__name__)

__all__ = ["PreparedInputs", "prepare_inputs", "data_fingerprint", "slide_images"]

CACHE_VERSION = 3  # 2: patch sampling by pixel gather (full-res TIFF support); 3: area (anti-aliased) sampling


@dataclass
class PreparedInputs:
    """Per-modality features of one slice, aligned to ``obs_names``."""

    features: dict[str, np.ndarray]
    coords: np.ndarray | None
    obs_names: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    @property
    def n_obs(self) -> int:
        return len(self.obs_names)


def _spatial_entry(adata) -> tuple[str | None, dict]:
    spatial = adata.uns.get("spatial", {}) if hasattr(adata, "uns") else {}
    if not isinstance(spatial, dict) or not spatial:
        return None, {}
    lib = next(iter(spatial))
    return lib, spatial[lib]


def _available_images(entry: dict) -> dict:
    """In-memory images plus the full-resolution image path when the reader recorded one."""
    images = dict(entry.get("images", {}) or {})
    path = (entry.get("metadata") or {}).get("fullres_path")
    if path:
        images["fullres"] = path
    return images


def slide_images(adata) -> dict:
    """The images patches can come from (``fullres`` path, ``hires``, ``lowres``); empty if none."""
    _, entry = _spatial_entry(adata)
    return _available_images(entry)


def data_fingerprint(adata) -> str:
    """Cheap, content-based hash of counts, spot names, coordinates and images."""
    h = hashlib.sha1()
    h.update(str(adata.shape).encode())
    h.update("\x1f".join(map(str, adata.obs_names)).encode())
    h.update("\x1f".join(map(str, adata.var_names)).encode())
    x = adata.X
    # Hash the count buffers themselves (not a summary), chunk by chunk, without copies.
    buffers = (x.data, x.indices, x.indptr) if hasattr(x, "indptr") else (np.asarray(x),)
    for buf in buffers:
        flat = np.ascontiguousarray(buf).reshape(-1)
        step = max(1, (64 << 20) // max(flat.itemsize, 1))
        for start in range(0, flat.size, step):
            h.update(flat[start : start + step].tobytes())
    if "spatial" in adata.obsm:
        h.update(np.ascontiguousarray(adata.obsm["spatial"], dtype=np.float64).tobytes())
    _, entry = _spatial_entry(adata)
    for key, img in sorted(entry.get("images", {}).items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(img).tobytes())
    fullres = (entry.get("metadata") or {}).get("fullres_path")
    if fullres and os.path.exists(fullres):  # the big image is identified by path, size and mtime, not read
        st = os.stat(fullres)
        h.update(f"{os.path.abspath(fullres)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(entry.get("scalefactors", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _atomic_savez(path: Path, **arrays) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, _w)


def _encode_image(
    adata, encoder, *, context: float, patch_px: int, batch_size: int, fit_max_patches: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit (if the encoder learns from the slide) and encode spot patches, streamed in batches."""
    lib, entry = _spatial_entry(adata)
    if lib is None or not _available_images(entry):
        raise KeyError(
            "encoder.image is set but the data has no image under uns['spatial'][<library_id>]['images']; "
            "read a Space Ranger folder with its spatial/ images, or use encoder.image=none."
        )
    images = _available_images(entry)
    geom = patch_geometry(entry.get("scalefactors", {}), images, context=context)
    if geom.image_key == "fullres":
        image = read_fullres(images["fullres"])[:, :, :3]  # memory-mapped when possible; read lazily
    else:
        image = np.asarray(images[geom.image_key], dtype=np.float32)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        image = image[:, :, :3]
        if image.max() > 1.5:  # uint8-range images stored as float
            image = image / 255.0
    centers = np.asarray(adata.obsm["spatial"], dtype=np.float64) * geom.scale

    def patches_of(idx):
        return extract_patches(image, centers[idx], geom.side_img_px, out_px=patch_px)

    info = {"library_id": lib, "image_key": geom.image_key, "scale": geom.scale, "patch_side_img_px": geom.side_img_px}
    if getattr(encoder, "requires_fit", False):
        # Self-supervised encoders learn from the slide's own patches: a seeded sample
        # bounds the memory and time of fitting on HD slices.
        rng = np.random.default_rng(seed)
        n_fit = min(adata.n_obs, fit_max_patches)
        sample = np.sort(rng.choice(adata.n_obs, size=n_fit, replace=False))
        encoder.fit(patches_of(sample)[0])
        info["fit_patches"] = int(n_fit)
    feats, outside = [], []
    # Stream patches in batches: memory stays O(batch) whatever the number of spots.
    for start in range(0, adata.n_obs, batch_size):
        patches, out = patches_of(slice(start, start + batch_size))
        feats.append(encoder.encode(patches))
        outside.append(out)
    return np.concatenate(feats), np.concatenate(outside), info


def prepare_inputs(
    adata,
    *,
    gene: str = "pca",
    gene_options: dict | None = None,
    image: str | None = "stats",
    image_options: dict | None = None,
    patch_context: float = 2.0,
    patch_px: int = 16,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 4096,
) -> PreparedInputs:
    """Compute (or load from cache) the per-modality features of a slice.

    Parameters
    ----------
    adata
        Raw counts in ``X``; ``obsm["spatial"]`` as ``(x, y)`` full-res pixels when
        coordinates exist; images under ``uns["spatial"][library_id]``.
    gene, gene_options
        Registered gene encoder and its options (see `mihd.encoders.list_gene_encoders`).
    image, image_options
        Registered image encoder and options, or ``None`` / ``"none"`` for genes only.
    patch_context
        Patch side as a multiple of the spot diameter (``spot_diameter_fullres``).
    patch_px
        Side of the resampled patch grid handed to the image encoder.
    cache_dir
        Where prepared inputs are cached; ``None`` disables caching.
    batch_size
        Spots per patch batch.

    Returns
    -------
    PreparedInputs
        ``features["gene"]`` and, with an image encoder, ``features["image"]``;
        ``coords`` (``None`` without ``obsm["spatial"]``); ``meta`` with every
        parameter, the cache key and the number of patches padded at the image edge.
    """
    image = None if image in (None, "none", "None", "") else image
    gene_enc = get_gene_encoder(gene)(**(gene_options or {}))
    image_enc = get_image_encoder(image)(**(image_options or {})) if image else None
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64) if "spatial" in adata.obsm else None
    patch_free = image_enc is not None and not getattr(image_enc, "uses_patches", True)
    if image_enc is not None and coords is None and not patch_free:
        raise KeyError(
            f"encoder.image={image} needs spot coordinates in obsm['spatial'] to place patches; "
            f"obsm has {list(adata.obsm.keys())}. Use encoder.image=none."
        )
    params = {
        "version": CACHE_VERSION,
        "gene": gene,
        "gene_params": gene_enc.params,
        "image": image,
        "image_params": image_enc.params if image_enc else None,
        "patch_context": patch_context if image_enc else None,
        "patch_px": patch_px if image_enc else None,
    }
    key = hashlib.sha1(
        (data_fingerprint(adata) + json.dumps(params, sort_keys=True, default=str)).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"prepared-{key}.npz" if cache_dir else None
    meta = {"cache_key": key, "params": params}
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = {m: z[f"feat_{m}"] for m in json.loads(str(z["modalities"]))}
                meta.update(json.loads(str(z["meta"])))
            log.info("prepared inputs loaded from cache %s", path)
            meta["cache_hit"] = True
            return PreparedInputs(feats, coords, np.asarray(adata.obs_names), meta)
        except (OSError, KeyError, ValueError) as err:  # a corrupt cache is recomputed, not fatal
            log.warning("ignoring unreadable cache file %s (%s); recomputing", path, err)

    if image_enc is not None and not patch_free:  # fail on a bad image setup before the gene PCA, not after
        _, entry = _spatial_entry(adata)
        patch_geometry(entry.get("scalefactors", {}), _available_images(entry), context=patch_context)
    with keep_torch_threads():  # scanpy's numba kernels would leave torch on every core
        feats = {"gene": gene_enc.encode(adata)}
        if patch_free:
            feats["image"] = image_enc.encode_obs(adata.obs_names)
        elif image_enc is not None:
            feats["image"], outside, info = _encode_image(adata, image_enc, context=patch_context, patch_px=patch_px, batch_size=batch_size)
            meta.update(info)
            meta["n_patches_padded"] = int(outside.sum())
    for m, x in feats.items():
        if not np.isfinite(x).all():
            raise ValueError(f"the {m} encoder produced non-finite features; check the input counts/image.")
    meta["cache_hit"] = False
    if path is not None:
        _atomic_savez(
            path,
            modalities=np.asarray(json.dumps(sorted(feats))),
            meta=np.asarray(json.dumps({k: v for k, v in meta.items() if k not in ("cache_hit",)}, default=str)),
            **{f"feat_{m}": x for m, x in feats.items()},
        )
    return PreparedInputs(feats, coords, np.asarray(adata.obs_names), meta)
