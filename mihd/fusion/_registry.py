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
    needs_neighborhood: bool
    trainable: bool
    summary: str


_REGISTRY: dict[str, FusionInfo] = {}


def _required_in_signature(cls: type, arg: str) -> bool:
    p = inspect.signature(cls.forward).parameters.get(arg)
    return p is not None and p.default is inspect.Parameter.empty


def register_fusion(name: str):
    """Class decorator that adds an ``nn.Module`` fusion strategy to the registry.

    The module is built as ``cls(dims, out_dim=..., **options)`` where ``dims`` maps
    modality name (``"gene"``, ``"image"``) to input width. Its
    ``forward(features, coords, neighborhood)`` returns the ``(N, out_dim)`` fused
    embedding; ``coords`` and ``neighborhood`` appear only if the strategy uses them.
    ``neighborhood`` is a dict with, per modality, the ``(N, k, F)`` features of each
    spot's k nearest spatial neighbours and ``"offsets"``, their ``(N, k, 2)``
    normalised coordinate offsets (a graph fusion then needs no N x N structure, and
    mini-batches carry their own neighbourhoods). Optional class attributes:
    ``trainable = False`` for non-learned baselines; ``needs_coords`` (checked
    against the signature). Optional methods: ``extra_loss(z, batch)`` adds a
    strategy-specific term to the runner's objective; ``precompute(features, seed)``
    returns per-spot arrays derived from the input features (never from labels)
    that reach ``extra_loss`` as ``batch["aux"]``.
    """

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register_fusion({name!r}) must decorate an nn.Module subclass, got {cls!r}.")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"fusion {name!r} is already registered by {_REGISTRY[name].cls.__module__}.")
        derived = _required_in_signature(cls, "coords")
        wants_graph = _required_in_signature(cls, "neighborhood")
        if wants_graph and not derived:
            raise TypeError(f"fusion {name!r} takes a spatial 'neighborhood', so its forward must also take 'coords'.")
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
            needs_neighborhood=wants_graph,
            trainable=bool(getattr(cls, "trainable", True)),
            summary=doc.splitlines()[0] if doc else "",
        )
        cls.fusion_name = name
        return cls

    return deco


def _discover() -> None:
    """Import every strategy module once so their decorators run."""
    import_submodules("mihd.fusion")


def list_fusions(
    needs_coords: bool | None = None, trainable: bool | None = None, needs_neighborhood: bool | None = None
) -> list[str]:
    """Names of registered fusions, sorted; optionally filtered by capability."""
    _discover()
    return sorted(
        n
        for n, info in _REGISTRY.items()
        if (needs_coords is None or info.needs_coords == needs_coords)
        and (trainable is None or info.trainable == trainable)
        and (needs_neighborhood is None or info.needs_neighborhood == needs_neighborhood)
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


def forward_fusion(module: nn.Module, features: dict, coords=None, neighborhood=None):
    """Call a registered fusion with coordinates / neighbourhoods exactly when it needs them."""
    info = fusion_info(module.fusion_name)
    if info.needs_coords and coords is None:
        raise ValueError(f"fusion {info.name!r} needs coordinates; none were given.")
    if info.needs_neighborhood:
        if neighborhood is None:
            raise ValueError(f"fusion {info.name!r} needs spatial neighbourhoods; none were given.")
        return module(features, coords, neighborhood)
    return module(features, coords) if info.needs_coords else module(features)
