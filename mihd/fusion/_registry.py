"""Fusion registry: ``@register_fusion("name")`` records a strategy and its capabilities.

Capabilities are derived once, at registration, from the module's ``forward``
signature: a strategy needs spatial coordinates exactly when ``forward`` takes a
``coords`` argument without a default. A class may also declare
``needs_coords = True/False``; the declaration is checked against the signature so
the two can never disagree. ``NEEDS_COORDS_FUSIONS`` is computed from this registry.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass

from torch import nn

from .._discovery import import_submodules

__all__ = ["FusionInfo", "register_fusion", "list_fusions", "get_fusion", "fusion_info", "needs_coords", "forward_fusion"]


@dataclass(frozen=True)
class FusionInfo:
    """What the registry knows about one strategy."""

    name: str
    cls: type
    needs_coords: bool
    trainable: bool
    summary: str


_REGISTRY: dict[str, FusionInfo] = {}


def _coords_in_signature(cls: type) -> bool:
    params = inspect.signature(cls.forward).parameters
    p = params.get("coords")
    return p is not None and p.default is inspect.Parameter.empty


def register_fusion(name: str):
    """Class decorator that adds an ``nn.Module`` fusion strategy to the registry.

    The module is built as ``cls(dims, out_dim=..., **options)`` where ``dims`` maps
    modality name (``"gene"``, ``"image"``) to input width. Its
    ``forward(features, coords)`` (``coords`` only if the strategy needs them) returns
    the ``(N, out_dim)`` fused embedding. Optional class attributes: ``trainable = False``
    for non-learned baselines; ``needs_coords`` (checked against the signature).
    """

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register_fusion({name!r}) must decorate an nn.Module subclass, got {cls!r}.")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"fusion {name!r} is already registered by {_REGISTRY[name].cls.__module__}.")
        derived = _coords_in_signature(cls)
        declared = cls.__dict__.get("needs_coords")
        if declared is not None and bool(declared) != derived:
            raise TypeError(
                f"fusion {name!r} declares needs_coords={declared} but its forward signature "
                f"{'takes' if derived else 'does not take'} a required 'coords' argument."
            )
        doc = inspect.getdoc(cls) or ""
        _REGISTRY[name] = FusionInfo(
            name=name,
            cls=cls,
            needs_coords=derived,
            trainable=bool(getattr(cls, "trainable", True)),
            summary=doc.splitlines()[0] if doc else "",
        )
        cls.fusion_name = name
        return cls

    return deco


def _discover() -> None:
    """Import every strategy module once so their decorators run."""
    import_submodules("mihd.fusion")


def list_fusions(needs_coords: bool | None = None, trainable: bool | None = None) -> list[str]:
    """Names of registered fusions, sorted; optionally filtered by capability."""
    _discover()
    return sorted(
        n
        for n, info in _REGISTRY.items()
        if (needs_coords is None or info.needs_coords == needs_coords)
        and (trainable is None or info.trainable == trainable)
    )


def fusion_info(name: str) -> FusionInfo:
    """Registry entry for ``name``; an unknown name lists the registered ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown fusion {name!r}; registered fusions: {', '.join(list_fusions())}. "
            "Pick one with fusion=<name>."
        ) from None


def get_fusion(name: str) -> type:
    """The registered class for ``name``."""
    return fusion_info(name).cls


def needs_coords(name: str) -> bool:
    """Whether fusion ``name`` needs spatial coordinates."""
    return fusion_info(name).needs_coords


def forward_fusion(module: nn.Module, features: dict, coords=None):
    """Call a registered fusion with coordinates exactly when it needs them."""
    if fusion_info(module.fusion_name).needs_coords:
        if coords is None:
            raise ValueError(f"fusion {module.fusion_name!r} needs coordinates; none were given.")
        return module(features, coords)
    return module(features)
