"""Public API conventions (after scanpy's tests/test_package_structure.py)."""

from __future__ import annotations

import inspect

import pytest

import mihd


def _public_functions(module):
    return [(n, getattr(module, n)) for n in module.__all__ if inspect.isfunction(getattr(module, n))]


@pytest.mark.parametrize("name,fn", _public_functions(mihd.tl) + _public_functions(mihd.pl))
def test_anndata_functions_take_adata_first_then_keywords(name, fn):
    params = list(inspect.signature(fn).parameters.values())
    assert params[0].name in ("adata", "data"), f"{name}: first parameter should be adata"
    positional = [p for p in params[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # refine_labels(data, labels) keeps its label argument positional (arrays API)
    allowed = {"refine_labels": {"labels"}, "spatial_domains": {"keys"}}.get(name, set())
    assert {p.name for p in positional} <= allowed, f"{name}: options after adata must be keyword-only"


@pytest.mark.parametrize("name,fn", _public_functions(mihd.tl) + _public_functions(mihd.pl))
def test_public_functions_have_numpydoc(name, fn):
    doc = inspect.getdoc(fn) or ""
    assert "Parameters" in doc and "Returns" in doc, f"{name} lacks a numpydoc Parameters/Returns section"


def test_top_level_api():
    for attr in ("refine_labels", "list_fusions", "NEEDS_COORDS_FUSIONS", "pp", "tl", "pl", "datasets", "metrics"):
        assert hasattr(mihd, attr), attr
    assert isinstance(mihd.NEEDS_COORDS_FUSIONS, frozenset)
    from mihd import refine_labels

    assert refine_labels is mihd.refine.refine_labels


def test_torch_modules_do_not_import_anndata():
    import ast
    from pathlib import Path

    root = Path(mihd.__file__).parent
    for path in list((root / "fusion").glob("*.py")) + [root / "train" / "_plan.py", root / "train" / "_datamodule.py"]:
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in getattr(n, "names", [])}
        mods = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not ({"anndata", "scanpy"} & (names | mods)), f"{path.name} imports AnnData code"
