"""Encoder registries, one encoder per file, filled by decorators.

Two kinds share one mechanism:

- image encoders (``@register_image_encoder("name")``) turn a batch of spot-centred
  RGB patches ``(B, h, w, 3)`` float32 in [0, 1] into features ``(B, F)`` via
  ``encode``; an encoder with ``requires_fit = True`` is first given ``fit(patches)``
  with a seeded sample of the slide's own patches (self-supervised CNNs);
- gene encoders (``@register_gene_encoder("name")``) turn an AnnData of raw counts
  into ``(N, F)`` features via ``encode(adata)``; ``feature_scaling = "zscore"`` asks the
  runner to give every feature sd 1 instead of keeping the PCA variance profile (the default,
  ``"profile"``), for encoders with a very steep spectrum (a config's ``encoder.feature_scaling``
  overrides it and, unlike the attribute, is part of the run key).

Both are built as ``cls(**options)`` and expose ``params`` (recorded, and part of
the cache key).
"""

from __future__ import annotations

from .._discovery import import_submodules


__all__ = [
    "register_image_encoder",
    "list_image_encoders",
    "get_image_encoder",
    "register_gene_encoder",
    "list_gene_encoders",
    "get_gene_encoder",
]

_REGISTRIES: dict[str, dict[str, type]] = {"image": {}, "gene": {}}


def _register(kind: str, name: str):
    def deco(cls: type) -> type:
        reg = _REGISTRIES[kind]
        if name in reg and reg[name] is not cls:
            raise ValueError(f"{kind} encoder {name!r} is already registered by {reg[name].__module__}.")
        reg[name] = cls
        cls.encoder_name = name
        return cls

    return deco


def _discover() -> None:
    """Import every strategy module once so their decorators run."""
    import_submodules("mihd.encoders")


def _list(kind: str) -> list[str]:
    _discover()
    return sorted(_REGISTRIES[kind])


def _get(kind: str, name: str) -> type:
    _discover()
    try:
        return _REGISTRIES[kind][name]
    except KeyError:
        raise KeyError(
            f"unknown {kind} encoder {name!r}; registered: {', '.join(_list(kind))}. "
            f"Pick one with encoder.{kind}=<name>."
        ) from None


def register_image_encoder(name: str):
    """Class decorator adding an image encoder to the registry."""
    return _register("image", name)


def register_gene_encoder(name: str):
    """Class decorator adding a gene encoder to the registry."""
    return _register("gene", name)


def list_image_encoders() -> list[str]:
    """Names of the registered image encoders."""
    return _list("image")


def list_gene_encoders() -> list[str]:
    """Names of the registered gene encoders."""
    return _list("gene")


def get_image_encoder(name: str) -> type:
    """The image encoder class for ``name``; an unknown name lists the registered ones."""
    return _get("image", name)


def get_gene_encoder(name: str) -> type:
    """The gene encoder class for ``name``; an unknown name lists the registered ones."""
    return _get("gene", name)
