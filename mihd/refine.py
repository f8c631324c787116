"""Spatial majority-vote refinement of domain labels.

Each spot takes the most common label among itself and its spatial neighbours
(the k nearest, or all within a radius). This smooths isolated mislabelled spots
the way SpaGCN / GraphST post-process their clusters, but scales to 10^6 cells:
neighbours come from `mihd.graph.knn_indices` (cKDTree, or a numba grid search for
large 2-D inputs; on a GPU the torch grid search of `mihd._knn_torch`) and the vote
is one pass over an (N, k + 1) index array, so memory is O(N·k) and no N x N array
is built.

* `refine_labels` -- arrays or AnnData in, refined labels out;
* `majority_vote` -- the vote alone, on integer codes and a neighbour array / graph.

Neither torch nor anndata is imported here until a call needs it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
from numba import njit
from numpy.typing import ArrayLike, NDArray
from scipy import sparse

from .graph import (
    DEFAULT_N_NEIGHBORS,
    Engine,
    _n_threads,
    _validate_coords,
    knn_indices,
    radius_neighbors,
    resolve_neighbor_rule,
    run_in_threads,
)

__all__ = ["refine_labels", "majority_vote"]

# Rows per torch chunk are chosen so that the dense (rows x n_labels) count matrix
# and the gathered neighbour codes stay around this many elements (~32 MiB int64).
_TORCH_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- vote


def majority_vote(
    neighbors: ArrayLike | sparse.spmatrix,
    codes: ArrayLike,
    *,
    n_codes: int | None = None,
    device: Any = "cpu",
) -> NDArray[np.int32]:
    """Majority label among each point's neighbours, on integer label codes.

    Parameters
    ----------
    neighbors
        Either an (N, m) integer array whose row i lists the voters of point i
        (include i itself for it to vote, as `knn_indices` does by default), or an
        N x N sparse matrix whose stored entries in row i are the voters (weights
        are ignored), such as `mihd.graph.radius_neighbors` returns.
    codes
        (N,) integer label codes in ``0 .. n_codes - 1``.
    n_codes
        Number of distinct labels; ``codes.max() + 1`` when omitted.
    device
        ``"cpu"`` runs a numba kernel. ``"cuda"``, ``"mps"``, a `torch.device` or
        ``"auto"`` (resolved by `mihd._device.resolve_device`) count with torch on
        that device; the result is identical.

    Returns
    -------
    numpy.ndarray
        (N,) int32 codes. Ties: a point keeps its own code when that code is among
        the most frequent, otherwise it takes the smallest tied code.
    """
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be a 1-D integer array; got dtype {codes.dtype} and shape {codes.shape}.")
    n = codes.shape[0]
    largest = int(codes.max()) if n else -1
    if n and codes.min() < 0:
        raise ValueError("codes must be >= 0; encode missing labels before voting.")
    n_codes = largest + 1 if n_codes is None else int(n_codes)
    if largest >= n_codes:
        raise ValueError(f"codes go up to {largest} but n_codes={n_codes}.")
    indptr, indices = _as_csr_arrays(neighbors, n)
    codes32 = codes.astype(np.int32, copy=False)
    torch_device = _torch_device_or_none(device)
    if torch_device is None:
        return _vote_csr(indptr, indices, codes32, n_codes)
    return _vote_torch(indptr, indices, codes32, n_codes, torch_device)


def _as_csr_arrays(neighbors: ArrayLike | sparse.spmatrix, n: int) -> tuple[NDArray, NDArray]:
    """(indptr, indices) of the voter lists, without copying a dense index array."""
    if sparse.issparse(neighbors):
        graph = sparse.csr_matrix(neighbors)
        if graph.shape != (n, n):
            raise ValueError(f"neighbors graph has shape {graph.shape}; expected ({n}, {n}) to match codes.")
        if not graph.has_canonical_format:  # a repeated entry would vote twice
            graph = graph.copy()
            graph.sum_duplicates()
        return graph.indptr, graph.indices
    idx = np.asarray(neighbors)
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise ValueError(
            f"neighbors must be an (N, m) integer array or a sparse matrix; got dtype {idx.dtype}, shape {idx.shape}."
        )
    if idx.shape[0] != n:
        raise ValueError(f"neighbors has {idx.shape[0]} rows but codes has {n} entries.")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"neighbors holds indices outside 0..{n - 1}.")
    width = idx.shape[1]
    index_dtype = np.int32 if idx.size < np.iinfo(np.int32).max else np.int64
    indptr = np.arange(0, n * width + 1, width, dtype=index_dtype) if width else np.zeros(n + 1, index_dtype)
    return indptr, np.ascontiguousarray(idx, dtype=index_dtype).ravel()


def _torch_device_or_none(device: Any):
    """None for the numba CPU path, else the resolved torch device.

    ``"cpu"`` is decided without importing torch (it costs seconds).
    """
    if device is None or (isinstance(device, str) and device.lower() == "cpu"):
        return None
    from ._device import resolve_device

    resolved = resolve_device(device)
    return None if resolved.type == "cpu" else resolved


def _vote_csr(indptr: NDArray, indices: NDArray, codes: NDArray[np.int32], n_codes: int) -> NDArray[np.int32]:
    n = codes.shape[0]
    out = np.empty(n, dtype=np.int32)
    max_degree = int(np.diff(indptr).max()) if n else 0
    # int16 codes take half the cache of int32: the gathers codes[indices] are the
    # random accesses that dominate the vote at 10^6 points.
    small = codes.astype(np.int16) if n_codes <= np.iinfo(np.int16).max else codes
    run_in_threads(_vote_rows, n, _n_threads(-1), indptr, indices, small, n_codes, max_degree, out)
    return out


@njit(cache=True, nogil=True)
def _vote_rows(lo, hi, indptr, indices, codes, n_codes, max_degree, out):
    counts = np.zeros(max(n_codes, 1), dtype=np.int32)
    row = np.empty(max(max_degree, 1), dtype=np.int32)  # the row's codes, gathered once
    # Few labels (the usual case): scan all counts once per row. Many labels: touch
    # only the codes present in the row, so the cost stays O(row length).
    scan_all = n_codes <= max_degree
    for i in range(lo, hi):
        start = indptr[i]
        m = indptr[i + 1] - start
        for p in range(m):
            c = codes[indices[start + p]]
            row[p] = c
            counts[c] += 1
        top = 0
        smallest_top = n_codes
        if scan_all:
            for c in range(n_codes):
                if counts[c] > top:
                    top = counts[c]
                    smallest_top = c
        else:
            for p in range(m):
                c = row[p]
                cnt = counts[c]
                if cnt > top or (cnt == top and c < smallest_top):
                    top = cnt
                    smallest_top = c
        own = codes[i]
        out[i] = own if counts[own] == top else smallest_top
        if scan_all:
            counts[:] = 0
        else:
            for p in range(m):
                counts[row[p]] = 0


def _vote_torch(indptr: NDArray, indices: NDArray, codes: NDArray, n_codes: int, device) -> NDArray[np.int32]:
    """The same vote with torch (bincount per row chunk) on ``device``."""
    import torch

    device = torch.device(device)
    n = codes.shape[0]
    n_codes = max(int(n_codes), 1)
    codes_t = torch.as_tensor(codes, dtype=torch.int64).to(device)
    label_range = torch.arange(n_codes, device=device)
    degree = np.diff(indptr)
    out = torch.empty(n, dtype=torch.int64, device=device)
    mean_width = max(1, int(indptr[-1]) // max(n, 1))
    rows_per_chunk = max(1, _TORCH_CHUNK_ELEMENTS // max(n_codes, mean_width))
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        voters = torch.as_tensor(indices[indptr[start] : indptr[stop]], dtype=torch.int64).to(device)
        local_row = torch.repeat_interleave(
            torch.arange(stop - start, device=device),
            torch.as_tensor(degree[start:stop], dtype=torch.int64).to(device),
        )
        flat = local_row * n_codes + codes_t[voters]
        counts = torch.bincount(flat, minlength=(stop - start) * n_codes).view(stop - start, n_codes)
        out[start:stop] = _winner(counts, codes_t[start:stop], label_range)
    return out.cpu().numpy().astype(np.int32)


def _vote_torch_rows(voters, codes: NDArray, n_codes: int) -> NDArray[np.int32]:
    """The torch vote on an (N, m) neighbour tensor, on the tensor's device (no copy to the CPU)."""
    import torch

    device = voters.device
    n, width = voters.shape
    n_codes = max(int(n_codes), 1)
    codes_t = torch.as_tensor(codes, dtype=torch.int64).to(device)
    label_range = torch.arange(n_codes, device=device)
    out = torch.empty(n, dtype=torch.int64, device=device)
    rows_per_chunk = max(1, _TORCH_CHUNK_ELEMENTS // max(n_codes, width))
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        local_row = torch.arange(stop - start, device=device)[:, None] * n_codes
        flat = (local_row + codes_t[voters[start:stop]]).view(-1)
        counts = torch.bincount(flat, minlength=(stop - start) * n_codes).view(stop - start, n_codes)
        out[start:stop] = _winner(counts, codes_t[start:stop], label_range)
    return out.cpu().numpy().astype(np.int32)


def _winner(counts, own, label_range):
    """Per row of (rows, n_codes) counts: ``own`` if it is among the most frequent, else the smallest such code."""
    import torch

    top = counts.max(dim=1).values
    own_count = counts.gather(1, own[:, None]).squeeze(1)
    # smallest code reaching the maximum, without relying on argmax's tie order
    smallest_top = torch.where(counts == top[:, None], label_range, label_range.numel()).min(dim=1).values
    return torch.where(own_count == top, own, smallest_top)


# --------------------------------------------------------------------------- labels


def _encode_labels(labels: Any, *, name: str = "labels") -> tuple[NDArray[np.int32], int, Any]:
    """Integer codes for ``labels`` and a function turning codes back into labels like them.

    Codes follow the category order of a categorical, else sorted label order
    (so "smallest code" in the tie rule means "smallest label").
    """
    if isinstance(labels, pd.Series):
        series = labels
        is_categorical = isinstance(series.dtype, pd.CategoricalDtype)
        codes, n_codes, decode_values = _encode_labels(
            series.array if is_categorical else series.to_numpy(), name=name
        )

        def decode(new: NDArray) -> pd.Series:
            values = decode_values(new)
            dtype = None if is_categorical else series.dtype
            return pd.Series(values, index=series.index, name=series.name, dtype=dtype)

        return codes, n_codes, decode

    if isinstance(labels, pd.Categorical):
        cat = labels
        codes = np.asarray(cat.codes)
        _check_missing(codes < 0, name)

        def decode(new: NDArray) -> pd.Categorical:
            return pd.Categorical.from_codes(new, categories=cat.categories, ordered=cat.ordered)

        return codes.astype(np.int32), len(cat.categories), decode

    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per spot); got shape {arr.shape}.")
    codes, uniques = pd.factorize(arr, sort=True, use_na_sentinel=True)
    _check_missing(codes < 0, name)
    uniques = np.asarray(uniques, dtype=arr.dtype)

    def decode(new: NDArray) -> NDArray:
        return uniques[new]

    return codes.astype(np.int32), len(uniques), decode


def _check_missing(missing: NDArray[np.bool_], name: str) -> None:
    if missing.any():
        raise ValueError(
            f"{name} has {int(missing.sum())} missing values (NaN / None), first at position "
            f"{int(np.argmax(missing))}; a spot needs a label to vote. Fill or drop them first."
        )


# --------------------------------------------------------------------------- public


def refine_labels(
    data: Any,
    labels: Any = None,
    *,
    n_neighbors: int | None = DEFAULT_N_NEIGHBORS,
    radius: float | None = None,
    key_added: str | None = None,
    copy: bool = False,
    device: Any = "cpu",
    engine: Engine = "auto",
    spatial_key: str = "spatial",
):
    """Spatial majority-vote refinement of domain labels.

    Every spot votes together with its neighbours (itself included) and takes the
    most common label. Ties: a spot keeps its own label when it is among the most
    common, otherwise it takes the smallest tied label (category order for
    categoricals, sorted order otherwise). Deterministic.

    Parameters
    ----------
    data
        (N, d) coordinates, or an AnnData with coordinates in
        ``obsm[spatial_key]``.
    labels
        With coordinates: (N,) labels (ints, strings, `pandas.Categorical` or
        `pandas.Series`). With AnnData: the name of the ``obs`` column to refine.
    n_neighbors
        Voters are the spot and its k nearest other spots.
    radius
        Voters are all spots within this distance (inclusive), the spot included.
        Replaces ``n_neighbors``, which must then be left at its default or None.
    key_added
        AnnData only: ``obs`` column for the result; default ``f"{labels}_refined"``.
    copy
        AnnData only: return a refined copy instead of writing into ``data``.
    device
        Where the vote is counted: ``"cpu"`` (numba), ``"cuda"``, ``"mps"`` or
        ``"auto"``. With CUDA and ``engine="auto"`` the kNN search runs there too
        (the torch grid search), and its indices go straight to the vote; otherwise
        the search runs on the CPU. The radius rule always searches on the CPU.
    engine
        Neighbour search engine, see `mihd.graph.knn_indices`. ``"torch"`` searches
        with torch on the vote's device (on the CPU when that is the CPU or MPS,
        which lacks the float64 the exact search needs).
    spatial_key
        AnnData only: the ``obsm`` key holding the coordinates.

    Returns
    -------
    numpy.ndarray, pandas.Categorical, pandas.Series, AnnData or None
        Coordinates in: the refined labels, of the same type as ``labels`` (a list
        gives a numpy array) with the same dtype / categories.
        AnnData in: None (or the copy when ``copy=True``), having written

        - ``obs[key_added]``: the refined labels, categorical;
        - ``uns[key_added]["params"]``: ``label_key``, ``n_neighbors`` or
          ``radius`` (the rule used), ``engine``, ``device``, ``spatial_key``;
        - ``uns[key_added]["n_changed"]``: how many spots changed label.

    Raises
    ------
    ValueError
        On missing or mismatched inputs (the message says which key, column or
        option); on both or neither of ``n_neighbors`` / ``radius``.

    Examples
    --------
    >>> refined = refine_labels(coords, clusters, n_neighbors=6)
    >>> refine_labels(adata, "leiden", radius=150.0, key_added="leiden_smooth")
    """
    if _is_anndata(data):
        return _refine_anndata(
            data,
            labels,
            n_neighbors=n_neighbors,
            radius=radius,
            key_added=key_added,
            copy=copy,
            device=device,
            engine=engine,
            spatial_key=spatial_key,
        )
    if key_added is not None or copy:
        raise ValueError(
            "key_added and copy apply to AnnData input only; with arrays the refined labels are returned."
        )
    if labels is None:
        raise ValueError("labels is required with coordinate input: refine_labels(coords, labels, ...).")
    coords = _validate_coords(data)
    n_labels = len(labels)
    if n_labels != coords.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} rows but labels has {n_labels} entries; they must match.")
    codes, n_codes, decode = _encode_labels(labels)
    new = _refine_codes(coords, codes, n_codes, n_neighbors=n_neighbors, radius=radius, device=device, engine=engine)
    return decode(new)


def _refine_codes(
    coords: NDArray[np.float64],
    codes: NDArray[np.int32],
    n_codes: int,
    *,
    n_neighbors: int | None,
    radius: float | None,
    device: Any,
    engine: Engine,
) -> NDArray[np.int32]:
    k, r = resolve_neighbor_rule(n_neighbors, radius)
    if r is not None:
        voters = radius_neighbors(coords, r, include_self=True)
    else:
        search_device = _torch_search_device(engine, device, coords.shape[1])
        if search_device is not None:
            from ._knn_torch import knn_indices_torch

            voters_t = knn_indices_torch(coords, k, include_self=True, device=search_device)
            if search_device.type != "cpu":  # cuda: search and vote without a CPU round trip
                return _vote_torch_rows(voters_t, codes, n_codes)
            voters = voters_t.numpy()
        else:
            voters = knn_indices(coords, k, include_self=True, engine=engine)
    return majority_vote(voters, codes, n_codes=n_codes, device=device)


def _torch_search_device(engine: str, device: Any, n_dims: int):
    """Where the torch kNN search runs for this engine and vote device, or None for `knn_indices`.

    ``engine="torch"``: the vote's device, or the CPU when that is the CPU or MPS (no
    float64). ``engine="auto"``: a CUDA vote device, for 2-D coordinates; else None.
    """
    if engine not in ("auto", "torch") or (engine == "auto" and n_dims != 2):
        return None
    vote_device = _torch_device_or_none(device)
    if vote_device is not None and vote_device.type == "cuda":
        return vote_device
    if engine == "torch":
        import torch

        return torch.device("cpu")
    return None


def _is_anndata(obj: Any) -> bool:
    # An AnnData can only exist if anndata was imported, so this never imports it.
    anndata = sys.modules.get("anndata")
    return anndata is not None and isinstance(obj, anndata.AnnData)


def _refine_anndata(
    adata,
    label_key: Any,
    *,
    n_neighbors: int | None,
    radius: float | None,
    key_added: str | None,
    copy: bool,
    device: Any,
    engine: Engine,
    spatial_key: str,
):
    if not isinstance(label_key, str):
        raise TypeError(
            "With AnnData, labels is the name of an obs column, e.g. refine_labels(adata, 'leiden'); "
            f"got {type(label_key).__name__}."
        )
    if label_key not in adata.obs.columns:
        raise KeyError(
            f"adata.obs has no column {label_key!r}; columns are: {list(map(str, adata.obs.columns))}."
        )
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no {spatial_key!r} entry with the spot coordinates; obsm keys are: "
            f"{list(adata.obsm.keys())}. Set adata.obsm[{spatial_key!r}] = coords (n_obs x 2) "
            "or pass spatial_key=..."
        )
    coords = _validate_coords(np.asarray(adata.obsm[spatial_key]), name=f"adata.obsm[{spatial_key!r}]")
    column = adata.obs[label_key]
    # A plain column becomes categorical with sorted categories, as scanpy stores labels.
    labels = column.array if isinstance(column.dtype, pd.CategoricalDtype) else pd.Categorical(column.to_numpy())
    codes, n_codes, decode = _encode_labels(labels, name=f"adata.obs[{label_key!r}]")
    new = _refine_codes(coords, codes, n_codes, n_neighbors=n_neighbors, radius=radius, device=device, engine=engine)

    key_added = key_added or f"{label_key}_refined"
    k, r = resolve_neighbor_rule(n_neighbors, radius)
    # h5ad cannot store None, so only the rule in use is recorded.
    rule = {"n_neighbors": int(k)} if r is None else {"radius": float(r)}
    target = adata.copy() if copy else adata
    target.obs[key_added] = decode(new)
    target.uns[key_added] = {
        "params": {
            "label_key": label_key,
            **rule,
            "engine": str(engine),
            "device": str(device),
            "spatial_key": spatial_key,
        },
        "n_changed": int((new != codes).sum()),
    }
    return target if copy else None
