"""``timm``: a pretrained backbone from a **local** checkpoint (UNI, CONCH, ResNet-50, ...).

Nothing is downloaded: pathology foundation models are used from weights the user
already has on disk. Two checkpoint kinds are accepted:

- a TorchScript file (``torch.jit.save``): loaded with ``torch.jit.load``; no other
  package needed. This is how to run any exported backbone;
- a ``state_dict`` (``.pth`` / ``.pt`` / ``.bin``) plus ``model_name``: the architecture is
  built with ``timm.create_model(model_name, pretrained=False, num_classes=0)`` and the
  weights loaded strictly (needs ``pip install timm``).

Patches are resized to ``input_size`` and normalised with ``mean`` / ``std`` (ImageNet by
default, as UNI and most timm models expect). Backbones want detail: with a hires or
full-resolution image set ``encoder.patch_px=224``; at lowres scale a spot is ~4 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._registry import register_image_encoder

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@register_image_encoder("timm")
class TimmEncoder:
    """Frozen backbone from a local TorchScript or timm state_dict checkpoint."""

    requires_fit = False
    needs_user_file = True  # built from the user's checkpoint; generic registry tests supply one

    def __init__(
        self,
        checkpoint: str | None = None,
        model_name: str | None = None,
        input_size: int = 224,
        mean: tuple[float, float, float] = _IMAGENET_MEAN,
        std: tuple[float, float, float] = _IMAGENET_STD,
        batch_size: int = 64,
        device: str = "auto",
    ):
        if not checkpoint:
            raise ValueError(
                "encoder.image=timm needs encoder.image_options.checkpoint=<local TorchScript file, or a state_dict "
                "with encoder.image_options.model_name=<timm architecture>>; weights are never downloaded."
            )
        self.checkpoint = Path(str(checkpoint)).expanduser()
        if not self.checkpoint.is_file():
            raise FileNotFoundError(
                f"encoder.image_options.checkpoint={str(self.checkpoint)!r} does not exist; give the path of a local "
                "checkpoint (e.g. UNI's pytorch_model.bin with model_name=vit_large_patch16_224)."
            )
        if input_size < 8:
            raise ValueError(f"encoder.image_options.input_size must be >= 8; got {input_size}.")
        self.model_name, self.input_size, self.batch_size, self.device_name = model_name, int(input_size), int(batch_size), device
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._model = None

    @property
    def params(self) -> dict:
        stat = self.checkpoint.stat()
        return {
            "checkpoint": str(self.checkpoint.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "model_name": self.model_name,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def _load(self):
        import torch

        from .._device import resolve_device

        self._device = resolve_device(self.device_name)
        try:
            model = torch.jit.load(str(self.checkpoint), map_location="cpu")
        except RuntimeError:  # not TorchScript: a state_dict for a timm architecture
            model = self._load_state_dict()
        self._model = model.to(self._device).eval()

    def _load_state_dict(self):
        import torch

        if not self.model_name:
            raise ValueError(
                f"{self.checkpoint} is not a TorchScript file; to load it as a state_dict set "
                "encoder.image_options.model_name=<timm architecture, e.g. resnet50 or vit_large_patch16_224>."
            )
        try:
            import timm
        except ImportError:
            raise ImportError(
                f"loading {self.checkpoint} as a {self.model_name!r} state_dict needs timm: pip install timm "
                "(or export the backbone with torch.jit.save and point checkpoint at that file)."
            ) from None
        model = timm.create_model(self.model_name, pretrained=False, num_classes=0)
        state = torch.load(str(self.checkpoint), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        model.load_state_dict(state, strict=True)
        return model

    def encode(self, patches: np.ndarray) -> np.ndarray:
        """``(B, h, w, 3)`` float patches in [0, 1] -> ``(B, F)`` float32 backbone features."""
        import torch
        import torch.nn.functional as F

        if self._model is None:
            self._load()
        mean = torch.tensor(self.mean, device=self._device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self._device).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for start in range(0, len(patches), self.batch_size):
                x = torch.as_tensor(np.ascontiguousarray(patches[start : start + self.batch_size]), device=self._device)
                x = x.permute(0, 3, 1, 2).float()
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
                y = self._model((x - mean) / std)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                if y.ndim == 4:  # a feature map: global average pool
                    y = y.mean((2, 3))
                out.append(y.reshape(len(x), -1).float().cpu().numpy())
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out).astype(np.float32)
