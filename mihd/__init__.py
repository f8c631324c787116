"""mihd: multimodal fusion of gene expression, histology and coordinates into spatial domains.

The public face::

    import mihd
    mihd.list_fusions()                 # registered strategies
    mihd.NEEDS_COORDS_FUSIONS           # frozenset, computed from the registry
    mihd.refine_labels(coords, labels)  # spatial majority vote (arrays or AnnData)
    mihd.datasets.dlpfc_151673()        # bundled example slice
    mihd.train.train(cfg)               # the runner behind ``mihd train``
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = [
    "NEEDS_COORDS_FUSIONS",
    "list_fusions",
    "refine_labels",
    "data",
    "datasets",
    "metrics",
    "pp",
    "tl",
    "pl",
]

_SUBMODULES = {"data", "datasets", "metrics", "pp", "tl", "pl", "fusion", "encoders", "train", "cluster", "graph"}


def list_fusions(needs_coords: bool | None = None, trainable: bool | None = None) -> list[str]:
    """Names of the registered fusion strategies.

    Parameters
    ----------
    needs_coords
        ``True``: only strategies that need spot coordinates; ``False``: only those
        that do not; ``None``: all.
    trainable
        Filter on whether the strategy has parameters to train (the non-learned
        baselines have none).
    """
    from .fusion._registry import list_fusions as _list

    return _list(needs_coords=needs_coords, trainable=trainable)


def __getattr__(name: str):
    # Lazy: importing scanpy / lightning costs seconds, and `import mihd` should not.
    if name == "NEEDS_COORDS_FUSIONS":
        return frozenset(list_fusions(needs_coords=True))
    if name == "refine_labels":
        from .refine import refine_labels

        return refine_labels
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mihd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
