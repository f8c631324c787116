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
