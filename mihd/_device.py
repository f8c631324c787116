"""Resolve the compute device once, in one place (auto -> cuda / mps / cpu)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

_VALID = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device to use.

    Parameters
    ----------
    device
        ``"auto"`` (or ``None``) picks CUDA, then Apple MPS, then CPU. ``"cuda:1"``
        style strings are accepted.

    Raises
    ------
    ValueError
        If the name is unknown or the requested accelerator is not available.
    """
    if isinstance(device, torch.device):
        return device
    name = "auto" if device is None else str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in _VALID:
        raise ValueError(f"device={device!r} is not known; use one of {', '.join(_VALID)}.")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but torch sees no CUDA GPU; use device=auto or cpu.")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} was requested but MPS is not available; use device=auto or cpu.")
    return torch.device(name)


@contextmanager
def keep_torch_threads():
    """Restore torch's intra-op thread count on exit.

    scanpy's numba kernels (``normalize_total``, ...) run on numba's OpenMP threading layer,
    which sets the process-wide OpenMP thread count to ``NUMBA_NUM_THREADS`` (every core by
    default); torch's CPU wheel shares that OpenMP runtime, so after a scanpy call torch would
    silently use every core whatever ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` said.
    With two runs side by side on a 2-core machine that oversubscription, in OpenMP's spinning
    barriers, made training 3-10x slower (2026-11-21, `benchmarks/dev`).
    """
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
