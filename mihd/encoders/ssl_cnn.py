"""``ssl_cnn``: a small CNN trained self-supervised on the slide's own spot patches.

No downloaded weights: the network learns from the patches of the slide it encodes,
as STAIG does (Yang et al., "STAIG: spatial transcriptomics analysis via image-aided
graph contrastive learning", Nat. Commun. 2025), which trains a BYOL image encoder
per slide.

Objective: **SimCLR** (Chen et al., "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020) with its NT-Xent loss: two augmented views of each
patch are pulled together and pushed away from the other patches of the batch; the
features are the backbone output, before the projection head. We use SimCLR rather
than BYOL (Grill et al., "Bootstrap your own latent", NeurIPS 2020) because:

- it trains one network by plain gradient descent: no momentum target network to run
  on every view, no predictor, no EMA rate to tune (fitting often runs on a laptop
  CPU; BYOL took 1.1-1.2x longer per fit on the DLPFC 151673 patches);
- it cannot collapse to a constant, since the negatives keep the features spread out
  (BYOL avoids collapse only through predictor, EMA and batch norm acting together,
  and one slide gives only a few hundred steps);
- on 151673 the two gave features of the same quality with this network and these
  augmentations (image-only k-means ARI against the layer annotation, seeds 0 / 1:
  SimCLR 0.169 / 0.146, BYOL 0.171 / 0.145; the ``stats`` encoder 0.166), so the
  simpler, cheaper one is kept.

BYOL's one advantage, no false negatives, is real here (spots of one layer look alike);
the temperature therefore defaults to 0.5, which repels look-alike patches less than the
0.1 used on ImageNet.

Augmentations suit H&E seen at low resolution (a patch is ~2 spot diameters resampled
to 16 x 16 pixels), all batched torch ops: random resized crop (the spot stays inside),
flips and 90° rotations (tissue has no preferred orientation), a small stain jitter
in haematoxylin / eosin optical density (Tellez et al., "Quantifying the effects of
data augmentation and stain color normalization in convolutional neural networks for
computational pathology", Med. Image Anal. 2019; "HED-light"), small brightness /
contrast changes and Gaussian noise. Colour jitter is deliberately weaker than
SimCLR's: at this resolution stain intensity *is* most of the signal that separates
cortical layers from white matter, so it must survive into the features.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._device import resolve_device
from ._registry import register_image_encoder

__all__ = ["SSLCNNEncoder", "PatchCNN", "augment_patches", "nt_xent"]

# Ruifrok & Johnston H&E-DAB stain vectors (rows H, E, residual), unit norm, as in ``stats``.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)

# (cos, sin) of the four right-angle rotations: exact, so a rotated patch samples pixel centres.
_QUARTER_TURNS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])

_ENCODE_CHUNK = 2048  # patches per no-grad forward pass: bounds memory whatever the batch handed in


# --------------------------------------------------------------------------- torch parts (no AnnData, no Lightning)


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class PatchCNN(nn.Module):
    """Four 3x3 conv layers, two of them strided, global mean pool, then a linear map.

    Sized for 16 x 16 patches (16 -> 8 -> 4 pixels); any patch side works since the pool
    is global. The first convolution is already strided: from a lowres image a patch
    holds ~9 source pixels a side, so full-resolution layers would mostly see the
    resampling, at 2x the cost (a 32-channel stride-2 stem still encodes 2 x 2 detail).
    Downsampling uses strided convolutions and a plain mean rather than max / adaptive
    pooling, whose CUDA backward passes are not deterministic.

    Parameters
    ----------
    embed_dim
        Output feature dimension.
    width
        Channels of the first layers; the last two have ``2 * width``.
    """

    def __init__(self, embed_dim: int = 32, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, width, 2),
            _conv_bn(width, width, 1),
            _conv_bn(width, 2 * width, 2),
            _conv_bn(2 * width, 2 * width, 1),
        )
        self.head = nn.Linear(2 * width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` RGB in [0, 1] -> ``(B, embed_dim)``."""
        # Channels-last convolutions ran ~1.3x faster here on CPU (oneDNN) and suit tensor cores.
        x = (x - 0.5).contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x).mean(dim=(2, 3)))


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float, device) -> torch.Tensor:
    # Random numbers always come from the CPU generator, then move: the same seed gives
    # the same augmentations on every device.
    return (low + (high - low) * torch.rand(shape, generator=gen)).to(device)


def augment_patches(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    crop_min_area: float = 0.5,
    stain_jitter: float = 0.05,
    brightness: float = 0.05,
    contrast: float = 0.1,
    noise_std: float = 0.02,
) -> torch.Tensor:
    """One random view of each patch in a batch.

    Parameters
    ----------
    x
        ``(B, 3, h, w)`` RGB patches in [0, 1], on any device.
    generator
        CPU generator all the randomness is drawn from (reproducible views).
    crop_min_area
        Smallest crop, as a fraction of the patch area (aspect ratio in [3/4, 4/3]);
        the crop is resampled back to ``h x w`` and always lies inside the patch.
    stain_jitter
        Haematoxylin / eosin / residual optical densities are scaled by ``U(1 - s, 1 + s)``
        and shifted by ``U(-s, s)``, per patch and stain.
    brightness, contrast
        Additive brightness in ``U(-b, b)``; contrast factor about the patch mean in ``U(1 - c, 1 + c)``.
    noise_std
        Standard deviation of additive Gaussian pixel noise.

    Returns
    -------
    torch.Tensor
        ``(B, 3, h, w)`` augmented patches in [0, 1].
    """
    b, _, h, w = x.shape
    dev, gen = x.device, generator
    # Geometry as one affine resampling: output coords -> flip -> quarter turn -> crop box.
    area = _uniform(gen, (b,), crop_min_area, 1.0, dev)
    # Aspect ratio in [3/4, 4/3], narrowed so that neither side exceeds the patch's.
    log_ratio = torch.minimum(-area.log(), torch.tensor(math.log(4 / 3), device=dev)) * _uniform(gen, (b,), -1.0, 1.0, dev)
    sx, sy = torch.sqrt(area * log_ratio.exp()), torch.sqrt(area / log_ratio.exp())
    tx = (1.0 - sx) * _uniform(gen, (b,), -1.0, 1.0, dev)
    ty = (1.0 - sy) * _uniform(gen, (b,), -1.0, 1.0, dev)
    cos, sin = _QUARTER_TURNS[torch.randint(0, 4, (b,), generator=gen)].to(dev).unbind(1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0).to(dev)
    theta = torch.stack(
        [torch.stack([sx * cos * flip, -sx * sin, tx], 1), torch.stack([sy * sin * flip, sy * cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Stain jitter in optical density space, where H and E mix linearly (Beer-Lambert).
    hed_from_rgb = torch.as_tensor(_HED_FROM_RGB, dtype=x.dtype, device=dev)
    rgb_from_hed = torch.as_tensor(_RGB_FROM_HED, dtype=x.dtype, device=dev)
    od = -torch.log(x.clamp(min=1e-6))
    hed = torch.einsum("bchw,cs->bshw", od, hed_from_rgb)
    scale = _uniform(gen, (b, 3, 1, 1), 1.0 - stain_jitter, 1.0 + stain_jitter, dev)
    shift = _uniform(gen, (b, 3, 1, 1), -stain_jitter, stain_jitter, dev)
    od = torch.einsum("bshw,sc->bchw", hed * scale + shift, rgb_from_hed)
    x = torch.exp(-od).clamp(0.0, 1.0)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = _uniform(gen, (b, 1, 1, 1), 1.0 - contrast, 1.0 + contrast, dev)
    offset = _uniform(gen, (b, 1, 1, 1), -brightness, brightness, dev)
    x = (x - mean) * factor + mean + offset
    x = x + noise_std * torch.randn(x.shape, generator=gen).to(dev)
    return x.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy for paired views.

    Row ``i`` of ``z1`` and of ``z2`` are two views of one patch; every other row of
    either is a negative. Written with ``logsumexp`` and no integer-target cross-entropy,
    so it stays deterministic on CUDA.

    Parameters
    ----------
    z1, z2
        ``(B, D)`` projections of the two views.
    temperature
        Softmax temperature of the cosine similarities.

    Returns
    -------
    torch.Tensor
        Scalar loss, averaged over the ``2B`` anchors.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = (z @ z.T) / temperature
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pair, float("-inf"))
    pos = (z[:n] * z[n:]).sum(1) / temperature
    return (torch.logsumexp(sim, dim=1) - torch.cat([pos, pos])).mean()


# --------------------------------------------------------------------------- Lightning training plan


@functools.cache
def _plan_class() -> type:
    """The SimCLR LightningModule, built on first use.

    Lightning is imported only when an encoder is fitted: the registry imports every
    encoder module, and AnnData code (``pp.prepare_inputs``) must not pull in Lightning
    (nor its seconds-long import) just to list encoders or run ``stats``.
    """
    import pytorch_lightning as pl

    class SimCLRPlan(pl.LightningModule):
        """Train ``backbone`` with NT-Xent on two augmented views of each patch batch."""

        def __init__(self, backbone: PatchCNN, *, embed_dim: int, temperature: float, lr: float, seed: int, augment: dict):
            super().__init__()
            self.backbone = backbone
            # SimCLR's projection head; the loss acts on its output, the features are taken before it.
            self.projector = nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(inplace=True), nn.Linear(64, 32))
            self.temperature, self.lr, self.augment = temperature, lr, augment
            self.generator = torch.Generator().manual_seed(seed)

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:
            (x,) = batch
            views = torch.cat([augment_patches(x, self.generator, **self.augment) for _ in range(2)])
            z = self.projector(self.backbone(views))
            loss = nt_xent(z[: len(x)], z[len(x) :], self.temperature)
            self.log("ssl_loss", loss, prog_bar=True, batch_size=len(x))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)

    return SimCLRPlan


# --------------------------------------------------------------------------- the registered encoder


def _check_patches(patches, what: str) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"ssl_cnn.{what} expects RGB patches shaped (B, h, w, 3); got an array of shape {patches.shape}.")
    if not np.issubdtype(patches.dtype, np.floating):
        raise ValueError(
            f"ssl_cnn.{what} expects float patches in [0, 1]; got dtype {patches.dtype} (divide uint8 images by 255)."
        )
    if patches.size and not np.isfinite(patches).all():
        raise ValueError(f"ssl_cnn.{what} got non-finite patch values; check the image under uns['spatial'].")
    if patches.size and (patches.min() < -1e-3 or patches.max() > 1 + 1e-3):
        raise ValueError(
            f"ssl_cnn.{what} expects patches in [0, 1]; got values in [{patches.min():.3g}, {patches.max():.3g}] "
            "(divide uint8 images by 255)."
        )
    return np.ascontiguousarray(patches, dtype=np.float32)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU generator and numpy for the block, then restore the caller's state.

    The CPU generator is what weight initialisation draws from; fitting an encoder
    must not reseed the user's notebook.
    """
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed would also reseed, unrestored, every CUDA device.
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


@contextlib.contextmanager
def _deterministic_algorithms_restored():
    """Give back the caller's ``torch.use_deterministic_algorithms`` setting after the block.

    ``Trainer(deterministic=True)`` switches it on process-wide and leaves it on; the
    caller's later CUDA code could then fail on ops that lack a deterministic kernel.
    """
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@register_image_encoder("ssl_cnn")
class SSLCNNEncoder:
    """A small CNN trained with SimCLR on the slide's own patches; features are its output.

    Parameters
    ----------
    embed_dim
        Feature dimension returned by ``encode``.
    width
        Channels of the CNN's first layers (``2 * width`` in the last two).
    epochs
        Passes over the fitting patches.
    batch_size
        Patches per step (each gives two views); the negatives of NT-Xent come from the batch.
    lr
        AdamW learning rate.
    temperature
        NT-Xent temperature.
    crop_min_area, stain_jitter, noise_std
        Augmentation strengths (see `augment_patches`).
    seed
        Seeds the weights, the batch order and the augmentations: the same seed and
        patches give identical features on CPU.
    accelerator
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``, resolved by `mihd._device.resolve_device`.
    progress_bar
        Show Lightning's progress bar while fitting: ``"auto"`` only when stdout is a terminal (a
        log file does not fill with a bar per epoch), or ``True`` / ``False``.
    """

    requires_fit = True

    def __init__(
        self,
        *,
        embed_dim: int = 32,
        width: int = 32,
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 1e-3,
        temperature: float = 0.5,
        crop_min_area: float = 0.5,
        stain_jitter: float = 0.05,
        noise_std: float = 0.02,
        seed: int = 0,
        accelerator: str = "auto",
        progress_bar: bool | str = "auto",
    ):
        whole_numbers = (("embed_dim", embed_dim, 1), ("width", width, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 2))
        for name, value, minimum in whole_numbers:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"encoder.image_options.{name}={value!r}: expected a whole number >= {minimum}.")
        for name, value, example in (("lr", lr, "0.001"), ("temperature", temperature, "0.5")):
            if not value > 0:
                raise ValueError(f"encoder.image_options.{name}={value!r}: expected a positive number, e.g. {example}.")
        if not 0 < crop_min_area <= 1:
            raise ValueError(f"encoder.image_options.crop_min_area={crop_min_area!r}: expected a fraction in (0, 1], e.g. 0.5.")
        for name, value in (("stain_jitter", stain_jitter), ("noise_std", noise_std)):
            if not 0 <= value < 1:
                raise ValueError(f"encoder.image_options.{name}={value!r}: expected a small non-negative number, e.g. 0.05.")
        self.embed_dim, self.width, self.epochs, self.batch_size = int(embed_dim), int(width), int(epochs), int(batch_size)
        self.lr, self.temperature, self.seed = float(lr), float(temperature), int(seed)
        self.augment = {"crop_min_area": float(crop_min_area), "stain_jitter": float(stain_jitter), "noise_std": float(noise_std)}
        self.accelerator = accelerator
        try:  # fail here, before the gene encoder runs, if the accelerator is unknown or absent
            self.device = resolve_device(accelerator)
        except ValueError as err:
            raise ValueError(f"encoder.image_options.accelerator: {err}") from None
        if progress_bar not in ("auto", True, False):
            raise ValueError(f"encoder.image_options.progress_bar={progress_bar!r}; use auto, true or false.")
        self.progress_bar = bool(sys.stdout.isatty()) if progress_bar == "auto" else bool(progress_bar)
        self._backbone: PatchCNN | None = None
        self.fit_info: dict = {}

    @property
    def params(self) -> dict:
        """Every option that changes the features (part of the prepared-inputs cache key).

        ``progress_bar`` is left out: it changes nothing in the result, and keying the
        cache on it would recompute features when only the display differs.
        """
        return {
            "method": "simclr",
            "embed_dim": self.embed_dim,
            "width": self.width,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "temperature": self.temperature,
            **self.augment,
            "seed": self.seed,
            "accelerator": self.accelerator,
        }

    def fit(self, patches: np.ndarray) -> "SSLCNNEncoder":
        """Train the CNN self-supervised on the slide's patches.

        Parameters
        ----------
        patches
            ``(B, h, w, 3)`` float RGB in [0, 1], ``B >= 2``; ``mihd.pp.prepare_inputs``
            passes a seeded sample of at most 20,000 spots.

        Returns
        -------
        SSLCNNEncoder
            ``self``, ready to `encode`; ``fit_info`` holds the patch and step counts
            and the final loss.

        Raises
        ------
        ValueError
            If the patches are not ``(B, h, w, 3)`` floats in [0, 1], or fewer than 2.
        """
        import pytorch_lightning as pl

        patches = _check_patches(patches, "fit")
        n = len(patches)
        if n < 2:
            raise ValueError(f"ssl_cnn.fit needs at least 2 patches (NT-Xent contrasts patches of a batch); got {n}.")
        with _seeded(self.seed), _deterministic_algorithms_restored():
            backbone = PatchCNN(self.embed_dim, self.width).to(memory_format=torch.channels_last)
            plan = _plan_class()(
                backbone, embed_dim=self.embed_dim, temperature=self.temperature, lr=self.lr, seed=self.seed, augment=self.augment
            )
            data = torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()
            batch_size = min(self.batch_size, n)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(data),
                batch_size=batch_size,
                shuffle=True,
                # A ragged last batch of a few patches gives noisy BatchNorm statistics and few negatives.
                drop_last=n > batch_size,
                generator=torch.Generator().manual_seed(self.seed),
            )
            trainer = pl.Trainer(
                max_epochs=self.epochs,
                accelerator={"cuda": "gpu", "mps": "mps"}.get(self.device.type, "cpu"),
                devices=[self.device.index or 0] if self.device.type == "cuda" else 1,
                deterministic=True,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=self.progress_bar,
                log_every_n_steps=1,
            )
            with warnings.catch_warnings():
                # The data are an in-memory tensor: loader workers would only add start-up time.
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                # Lightning's own use of a torch API deprecated in torch 2.13; nothing to act on here.
                warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
                trainer.fit(plan, train_dataloaders=loader)
        self._backbone = backbone.eval()
        final_loss = float(trainer.callback_metrics.get("ssl_loss", float("nan")))
        self.fit_info = {"patches": n, "steps": int(trainer.global_step), "final_loss": final_loss}
        return self

    def encode(self, patches: np.ndarray) -> np.ndarray:
        """``(B, h, w, 3)`` float patches in [0, 1] -> ``(B, embed_dim)`` float32 features.

        Raises
        ------
        RuntimeError
            If called before `fit`.
        """
        if self._backbone is None:
            raise RuntimeError(
                "ssl_cnn learns from the slide's own patches: call fit(patches) before encode(); "
                "mihd.pp.prepare_inputs does this for you. For an encoder with nothing to fit, use encoder.image=stats."
            )
        patches = _check_patches(patches, "encode")
        backbone = self._backbone.to(self.device).eval()
        out = np.empty((len(patches), self.embed_dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(patches), _ENCODE_CHUNK):
                x = torch.from_numpy(patches[start : start + _ENCODE_CHUNK]).to(self.device).permute(0, 3, 1, 2)
                out[start : start + len(x)] = backbone(x).float().cpu().numpy()
        return out

