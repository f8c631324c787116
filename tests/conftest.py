"""Shared fixtures: the one data-dir setting, small synthetic slices, shrunk configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real public data: ``$MIHD_DATA_DIR``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("MIHD_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def load_script():
    """Import a script that is not part of the package (``benchmarks/...``) by its repo-relative path."""
    import importlib.util

    def load(relpath: str):
        path = REPO_ROOT / relpath
        spec = importlib.util.spec_from_file_location("mihd_script_" + path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never write into the user's ~/.cache/mihd.
    monkeypatch.setenv("MIHD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mihd_cache"))


@pytest.fixture(scope="session")
def tiny_slice():
    """A 300-spot synthetic slice with image, coordinates and 3 annotated domains."""
    from mihd.data import synthetic_slice

    return synthetic_slice(300, n_genes=60, n_domains=3, seed=0)


def _import_timm_beside_cpu_torch():
    """``import timm``; where torchvision is missing or broken (its PyPI wheel does not match the CPU torch
    build here), import it beside a stand-in ``torchvision`` whose attributes are inert placeholders, then
    take the stand-in out of ``sys.modules``. timm imports torchvision at import time for its data
    transforms only; model creation and state dicts, which ``encoder=timm`` uses, are plain torch."""
    import importlib.abc
    import importlib.machinery
    import sys
    import types

    import torch

    try:
        import timm

        return timm
    except (ImportError, RuntimeError):  # RuntimeError: "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n == "timm" or n.startswith(("timm.", "torchvision"))]:
            del sys.modules[name]

    class _Placeholder(type(torch.nn.Module)):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = _Placeholder(name, (torch.nn.Module,), {})
            setattr(self, name, value)
            return value

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _Module(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    finder = _Finder()
    sys.meta_path.insert(0, finder)
    try:
        import timm
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    return timm


@pytest.fixture(scope="session")
def timm_module():
    """The real timm (``pip install --no-deps timm``, as ``make test`` does), importable beside the CPU torch
    wheel; skips with a reason where timm is not installed."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (make test installs it with --no-deps: it declares torchvision, "
                    "which has no wheel for this CPU torch)")
    return _import_timm_beside_cpu_torch()
