"""Spatial neighbour search and spatial graphs on spot / cell coordinates.

Everything here is O(N·k) in memory: neighbours come from a KD-tree
(`scipy.spatial.cKDTree`) or, for large 2-D inputs, from an exact uniform-grid
search compiled with numba (or written in torch, to run on a GPU:
`mihd._knn_torch`). No N x N dense array is ever built.

* `knn_indices` -- the k nearest neighbours of every point, self first;
* `radius_neighbors` -- all pairs closer than a radius, as a sparse matrix;
* `build_spatial_graph` -- the binary adjacency used by training (graph fusions),
  label refinement and the spatial metrics.

This module does not import anndata, nor torch until ``engine="torch"`` asks for it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from scipy.spatial import cKDTree

__all__ = ["knn_indices", "radius_neighbors", "build_spatial_graph", "GRID_MIN_POINTS"]

Engine = Literal["auto", "kdtree", "grid", "torch"]
_ENGINES = ("auto", "kdtree", "grid", "torch")

#: Default k of `build_spatial_graph` and `mihd.refine.refine_labels` (the 6 hexagonal
#: neighbours of a Visium spot).
DEFAULT_N_NEIGHBORS = 6

#: ``engine="auto"`` uses the grid engine for 2-D inputs with at least this many points.
#: Below it cKDTree is as fast and the grid's one-off JIT compile is not worth it.
GRID_MIN_POINTS = 50_000

# Rows per cKDTree query: bounds the temporary (distances float64 + indices int64)
# to about 64 MiB whatever N is.
_KDTREE_CHUNK_ENTRIES = 1 << 22

# Mean number of points per grid cell, as a fraction of k. Measured on 10^6 uniform
# and jittered-hex points, k = 6 and 50: 0.25 .. 0.5 are within ~15% of each other,
# 0.3 was fastest. Smaller cells send more points to the ring search; larger ones make
# every point scan more far candidates. Never below 2 points per cell.
_GRID_POINTS_PER_CELL_PER_K = 0.3
_GRID_MIN_POINTS_PER_CELL = 2.0
# Cap on grid cells per point when shrinking cells to follow the occupied area
# (cell_start costs 8 bytes per cell).
_GRID_MAX_CELLS_PER_POINT = 4


# --------------------------------------------------------------------------- validation


def _validate_coords(coords: ArrayLike, *, name: str = "coords") -> NDArray[np.float64]:
    """Return ``coords`` as a C-contiguous float64 (N, d) array, or raise a readable error."""
    arr = np.asarray(coords)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_points, n_dims); got an array of shape {arr.shape}."
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{name} has shape {arr.shape}: it needs at least one coordinate column.")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} has {arr.shape[0]} point(s); a neighbour search needs at least 2.")
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold numbers (float or int); got dtype {arr.dtype}. "
            "Convert it first, e.g. np.asarray(coords, dtype=float)."
        )
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{name} has {bad.size} of {arr.shape[0]} rows with NaN or inf values "
            f"(first at row {bad[0]}); drop or impute those points before building neighbours."
        )
    return arr


def _validate_n_neighbors(n_neighbors: int, n_points: int) -> int:
    if isinstance(n_neighbors, (bool, np.bool_)) or not isinstance(n_neighbors, (int, np.integer)):
        raise TypeError(f"n_neighbors must be an int; got {n_neighbors!r}.")
    k = int(n_neighbors)
    if k < 1:
        raise ValueError(f"n_neighbors must be >= 1; got {k}.")
    if k >= n_points:
        raise ValueError(
            f"n_neighbors={k} needs more than {k} points, but there are only {n_points}; "
            f"use n_neighbors <= {n_points - 1}."
        )
    return k


def _validate_radius(radius: float) -> float:
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise TypeError(f"radius must be a positive number; got {radius!r}.") from None
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"radius must be a positive finite number; got {radius!r}.")
    return r


def _resolve_engine(engine: str, n_points: int, n_dims: int) -> str:
    if engine not in _ENGINES:
        raise ValueError(f"engine={engine!r} is not known; use one of {', '.join(_ENGINES)}.")
    if engine == "auto":
        return "grid" if (n_dims == 2 and n_points >= GRID_MIN_POINTS) else "kdtree"
    if engine in ("grid", "torch") and n_dims != 2:
        raise ValueError(
            f"engine={engine!r} handles 2-D coordinates only; these have {n_dims} columns. "
            "Use engine='kdtree' (or 'auto')."
        )
    return engine


def _n_threads(n_jobs: int | None) -> int:
    """Thread count for ``n_jobs``: -1 / None = every core this process may use."""
    if n_jobs is None or n_jobs == -1:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive int or -1 (all cores); got {n_jobs!r}.")
    return int(n_jobs)


def run_in_threads(kernel: Callable[..., None], n_items: int, n_threads: int, *args) -> None:
    """Call ``kernel(lo, hi, *args)`` over ``range(n_items)`` split into chunks, in threads.

    The kernels are numba functions compiled with ``nogil=True``, so Python threads
    run them truly in parallel. This replaces ``parallel=True`` / prange, whose
    lowering added seconds to every cold compile, and honours ``n_threads`` without
    touching numba's global thread pool. Eight chunks per thread even out uneven
    point densities.
    """
    if n_threads == 1 or n_items <= 1:
        kernel(0, n_items, *args)
        return
    n_chunks = min(n_items, 8 * n_threads)
    bounds = np.linspace(0, n_items, n_chunks + 1).astype(np.int64)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        futures = [pool.submit(kernel, lo, hi, *args) for lo, hi in zip(bounds[:-1], bounds[1:])]
        for future in futures:
            future.result()  # re-raises a kernel's exception here


# --------------------------------------------------------------------------- kNN


def knn_indices(
    coords: ArrayLike,
    n_neighbors: int,
    *,
    include_self: bool = True,
    engine: Engine = "auto",
    n_jobs: int | None = -1,
    device: Any = "auto",
) -> NDArray[np.int32]:
    """Indices of the nearest neighbours of every point.

    Parameters
    ----------
    coords
        (N, d) spot or cell coordinates. NaN / inf are rejected.
    n_neighbors
        Number of neighbours *other than the point itself*; must be < N.
    include_self
        Put the point itself in column 0. It is placed there even when other points
        share its coordinates (duplicates), so ``out[:, 0] == arange(N)``.
    engine
        ``"kdtree"``: `scipy.spatial.cKDTree`, any dimension, queried in
        Morton (Z-order) sorted chunks for cache locality and bounded memory.
        ``"grid"``: exact search on a uniform cell grid, numba-compiled and
        multithreaded, 2-D only; 3-7x faster than the KD-tree engine at 10^6
        points (``benchmarks/refine/results.md``).
        ``"torch"``: the same exact grid search written in torch
        (`mihd._knn_torch.knn_indices_torch`), 2-D only, run on ``device``; meant
        for GPUs (on the CPU it is several times slower than ``"grid"``).
        ``"auto"``: grid for 2-D inputs with at least `GRID_MIN_POINTS` points,
        unless they are spread too unevenly for cells of balanced size (say, a
        far outlier beside a dense slice); kdtree otherwise. Never torch.
    n_jobs
        Threads to use; -1 (or None) for all. Not used by ``"torch"``.
    device
        ``engine="torch"`` only: where to search; ``"auto"`` is CUDA when
        available, else the CPU. The result is copied back to the CPU.

    Returns
    -------
    numpy.ndarray
        int32 array of shape (N, n_neighbors + include_self). Each row is sorted by
        distance (self first when included). int32 halves the memory of int64
        (200 MB instead of 400 MB at 10^6 points and k = 50) and indexes numpy
        arrays and scipy sparse matrices directly. Points at equal distance may be
        ordered differently by the two engines; the distances agree.

    Raises
    ------
    ValueError
        If ``coords`` is not (N, d), holds NaN / inf, or ``n_neighbors >= N``.
    """
    pts = _validate_coords(coords)
    n, d = pts.shape
    k = _validate_n_neighbors(n_neighbors, n)
    requested = engine
    engine = _resolve_engine(engine, n, d)
    n_threads = _n_threads(n_jobs)
    if n >= np.iinfo(np.int32).max:
        raise ValueError(f"{n} points do not fit int32 indices; split the data.")
    if engine == "torch":
        from ._knn_torch import knn_indices_torch

        idx = knn_indices_torch(pts, k, include_self=bool(include_self), device=device)
        return idx.cpu().numpy().astype(np.int32)
    if engine == "grid":
        plan = _plan_grid(pts, k)
        if plan[-1] or requested == "grid":
            return _knn_grid(pts, k, bool(include_self), n_threads, plan=plan)
    return _knn_kdtree(pts, k, bool(include_self), n_threads)


def _morton_order(pts: NDArray[np.float64]) -> NDArray[np.intp]:
    """Permutation that sorts points along a Z-order (Morton) curve.

    Consecutive queries then touch the same tree nodes: the query is 1.5-2x faster
    (10^6 random points, k = 50: 6.5 s -> 3.2-3.8 s on 2 cores; 3.0 s -> 2.0 s
    single-threaded at 3·10^5 points). The tree itself is built with the sliding
    midpoint rule and non-compact nodes, the fastest build + query here.
    """
    n, d = pts.shape
    bits = min(21, 63 // d)
    if bits < 3:  # too many dimensions for a useful interleave; keep the input order
        return np.arange(n)
    lo = pts.min(axis=0)
    span = pts.max(axis=0) - lo
    span[span == 0] = 1.0
    q = ((pts - lo) / span * ((1 << bits) - 1)).astype(np.uint64)
    code = np.zeros(n, dtype=np.uint64)
    for b in range(bits):
        for j in range(d):
            code |= ((q[:, j] >> np.uint64(b)) & np.uint64(1)) << np.uint64(b * d + j)
    return np.argsort(code, kind="stable")


def _knn_kdtree(pts: NDArray[np.float64], k: int, include_self: bool, n_threads: int) -> NDArray[np.int32]:
    n = pts.shape[0]
    order = _morton_order(pts)
    spts = pts[order]
    tree = cKDTree(spts, balanced_tree=False, compact_nodes=False)
    offset = int(include_self)
    out = np.empty((n, k + offset), dtype=np.int32)
    chunk = max(1, _KDTREE_CHUNK_ENTRIES // (k + 1))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        _, idx = tree.query(spts[start:stop], k=k + 1, workers=n_threads)
        rows = np.arange(start, stop)
        is_self = idx == rows[:, None]
        # With duplicate coordinates the tree may return other copies at distance 0
        # and leave the point itself out; then the farthest of the k + 1 is dropped.
        keep = ~is_self
        keep[~is_self.any(axis=1), k] = False
        others = idx[keep].reshape(stop - start, k)
        target = order[start:stop]
        out[target, offset:] = order[others]
        if include_self:
            out[target, 0] = target
    return out


def _grid_side(lo: NDArray[np.float64], hi: NDArray[np.float64], n: int, per_cell: float) -> float:
    """Cell side giving ``per_cell`` points per cell if the points filled their bounding box."""
    width, height = hi - lo
    n_cells = max(1.0, n / per_cell)
    # The second term keeps the cell count ~ n / per_cell for (nearly) collinear points,
    # where the bounding-box area says nothing about density.
    side = max(np.sqrt(width * height / n_cells), max(width, height) / n_cells)
    return float(side) if side > 0 else 1.0  # all points identical: any side works


def _plan_grid(pts: NDArray[np.float64], k: int) -> tuple[NDArray, float, int, int, bool]:
    """Origin, cell side, cell counts, and whether the grid is balanced enough to be fast.

    The target is `_GRID_POINTS_PER_CELL_PER_K`·k points per cell. Tissue rarely fills its bounding box
    (holes, several sections, outlying spots), so the side is shrunk until the
    occupancy a typical point sees, sum(count^2) / N, is near the target, with at
    most `_GRID_MAX_CELLS_PER_POINT` cells per point. A layout that stays unbalanced
    (e.g. one far outlier beside a dense slice) is left to the KD-tree by
    ``engine="auto"``.
    """
    n = pts.shape[0]
    lo, hi = _bounds(pts)
    width, height = hi - lo
    per_cell = max(_GRID_MIN_POINTS_PER_CELL, _GRID_POINTS_PER_CELL_PER_K * k)
    side = _grid_side(lo, hi, n, per_cell)
    max_cells = max(1024, _GRID_MAX_CELLS_PER_POINT * n)
    for _ in range(4):
        nx = int(width / side) + 1
        ny = int(height / side) + 1
        load = _cell_load(pts, lo[0], lo[1], side, nx, ny)
        if load <= 2.0 * per_cell + 2.0:  # Poisson occupancy is per_cell + 1
            return lo, side, nx, ny, True
        smaller = side * np.sqrt(per_cell / load)
        if (width / smaller + 1) * (height / smaller + 1) > max_cells:
            break
        side = smaller
    return lo, side, nx, ny, load <= 8.0 * per_cell + 8.0


def _knn_grid(
    pts: NDArray[np.float64], k: int, include_self: bool, n_threads: int, *, plan: tuple | None = None
) -> NDArray[np.int32]:
    lo, side, nx, ny, _ = plan if plan is not None else _plan_grid(pts, k)
    # Points sorted by cell: a cell's points, and each row of a 3 x 3 block of cells,
    # are contiguous, so the candidates of a whole cell are read with three slices.
    cell_start, order, spts = _bin_points(pts, lo[0], lo[1], side, nx, ny)
    out = np.empty((pts.shape[0], k + int(include_self)), dtype=np.int32)
    # Squared k-th distances of nearby points differ by about 1/sqrt(k) (relative);
    # 2 standard deviations of slack keep the cheap path for most points.
    slack = 1.0 + 2.0 / np.sqrt(k)
    capacity = max(_max_block_size(cell_start, nx, ny), k) + 1
    run_in_threads(
        _knn_cell_run,
        nx * ny,
        n_threads,
        capacity,
        spts,
        cell_start,
        order,
        nx,
        ny,
        lo[0],
        lo[1],
        side,
        k,
        include_self,
        slack,
        out,
    )
    return out


@njit(cache=True)
def _cell_load(pts, x0, y0, side, nx, ny):
    """Mean number of points in the cell of a random point: sum(count^2) / N."""
    counts = np.zeros(nx * ny, dtype=np.int64)
    for i in range(pts.shape[0]):
        cx = min(int((pts[i, 0] - x0) / side), nx - 1)
        cy = min(int((pts[i, 1] - y0) / side), ny - 1)
        counts[cy * nx + cx] += 1
    total = 0.0
    for c in range(nx * ny):
        total += counts[c] * counts[c]
    return total / pts.shape[0]


@njit(cache=True)
def _bounds(pts):
    # one pass instead of numpy's strided min / max along axis 0 (3x slower at 10^6)
    lo = pts[0].copy()
    hi = pts[0].copy()
    for i in range(pts.shape[0]):
        for j in range(pts.shape[1]):
            v = pts[i, j]
            if v < lo[j]:
                lo[j] = v
            if v > hi[j]:
                hi[j] = v
    return lo, hi


@njit(cache=True)
def _bin_points(pts, x0, y0, side, nx, ny):
    """Counting sort of points into grid cells.

    Returns ``cell_start`` (CSR: cell c holds sorted positions
    ``cell_start[c]:cell_start[c + 1]``), ``order`` (sorted position -> input row)
    and the coordinates in sorted order.
    """
    n = pts.shape[0]
    cell = np.empty(n, dtype=np.int32)
    cell_start = np.zeros(nx * ny + 1, dtype=np.int64)
    for i in range(n):
        cx = min(int((pts[i, 0] - x0) / side), nx - 1)
        cy = min(int((pts[i, 1] - y0) / side), ny - 1)
        c = cy * nx + cx
        cell[i] = c
        cell_start[c + 1] += 1
    for c in range(nx * ny):
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    order = np.empty(n, dtype=np.int32)
    spts = np.empty((n, 2), dtype=np.float64)
    for i in range(n):
        c = cell[i]
        pos = fill[c]
        order[pos] = i
        spts[pos, 0] = pts[i, 0]
        spts[pos, 1] = pts[i, 1]
        fill[c] = pos + 1
    return cell_start, order, spts


@njit(cache=True)
def _select_smallest(d, j, n, k):
    """Reorder ``d[:n]`` (and ``j`` alongside) so that ``d[:k]`` are the k smallest.

    Hoare quickselect with a median-of-three pivot: O(n), versus O(n·k) for keeping
    a sorted buffer while scanning, which dominated the run time at k = 50.
    """
    lo = 0
    hi = n - 1
    target = k - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        a = d[lo]
        b = d[mid]
        c = d[hi]
        if a > b:
            a, b = b, a
        pivot = b if b < c else (c if c > a else a)
        i = lo
        r = hi
        while i <= r:
            while d[i] < pivot:
                i += 1
            while d[r] > pivot:
                r -= 1
            if i <= r:
                d[i], d[r] = d[r], d[i]
                j[i], j[r] = j[r], j[i]
                i += 1
                r -= 1
        if target <= r:
            hi = r
        elif target >= i:
            lo = i
        else:
            break


@njit(cache=True)
def _insertion_sort(d, j, n):
    for a in range(1, n):
        dv = d[a]
        jv = j[a]
        b = a
        while b > 0 and d[b - 1] > dv:
            d[b] = d[b - 1]
            j[b] = j[b - 1]
            b -= 1
        d[b] = dv
        j[b] = jv


@njit(cache=True)
def _square_margin(qx, qy, ccx, ccy, r, nx, ny, x0, y0, side):
    """Distance from q to the nearest side of the (2r+1)^2 block of cells around its cell.

    Sides on the grid boundary do not count: there are no points beyond them.
    """
    margin = np.inf
    if ccx - r > 0:
        margin = min(margin, qx - (x0 + (ccx - r) * side))
    if ccx + r < nx - 1:
        margin = min(margin, x0 + (ccx + r + 1) * side - qx)
    if ccy - r > 0:
        margin = min(margin, qy - (y0 + (ccy - r) * side))
    if ccy + r < ny - 1:
        margin = min(margin, y0 + (ccy + r + 1) * side - qy)
    return margin


@njit(cache=True)
def _ring_search(spts, cell_start, nx, ny, x0, y0, side, p, ccx, ccy, k, best_d, best_j, cnt, r):
    """Grow square rings of cells from ring ``r`` until the k best of point p are final.

    ``best_d[:cnt]`` / ``best_j[:cnt]`` hold the best found so far, sorted. A ring is
    done when the k-th best distance is no larger than the distance to the edge of the
    searched square; cells farther than the k-th best are skipped.
    """
    qx = spts[p, 0]
    qy = spts[p, 1]
    while True:
        for gy in range(max(ccy - r, 0), min(ccy + r, ny - 1) + 1):
            step = 1 if (gy == ccy - r or gy == ccy + r) else 2 * r
            gx = ccx - r
            while gx <= ccx + r:
                if gx >= 0 and gx < nx:
                    visit = True
                    if cnt == k:
                        left = x0 + gx * side
                        bottom = y0 + gy * side
                        dx = max(left - qx, 0.0, qx - (left + side))
                        dy = max(bottom - qy, 0.0, qy - (bottom + side))
                        visit = dx * dx + dy * dy < best_d[k - 1]
                    if visit:
                        c = gy * nx + gx
                        for pp in range(cell_start[c], cell_start[c + 1]):
                            if pp == p:
                                continue
                            ex = spts[pp, 0] - qx
                            ey = spts[pp, 1] - qy
                            dist = ex * ex + ey * ey
                            if cnt < k:
                                b = cnt
                                cnt += 1
                            elif dist < best_d[k - 1]:
                                b = k - 1
                            else:
                                continue
                            while b > 0 and best_d[b - 1] > dist:
                                best_d[b] = best_d[b - 1]
                                best_j[b] = best_j[b - 1]
                                b -= 1
                            best_d[b] = dist
                            best_j[b] = pp
                gx += step
        if ccx - r <= 0 and ccy - r <= 0 and ccx + r >= nx - 1 and ccy + r >= ny - 1:
            return  # the whole grid has been searched
        if cnt == k:
            margin = _square_margin(qx, qy, ccx, ccy, r, nx, ny, x0, y0, side)
            if best_d[k - 1] <= margin * margin:
                return
        r += 1


@njit(cache=True)
def _bucket_sort(d, j, m, upper, sd, sj, counts):
    """Sort ``d[:m]`` (all within [0, upper]) into ``sd`` / ``sj``.

    Squared distances to the nearest neighbours of a point in a roughly uniform
    layout are roughly uniform on [0, upper] (area grows like r^2), so a counting
    sort on m buckets leaves about one value per bucket and the insertion pass that
    follows is nearly linear. This replaced an insertion sort of the k best, which
    cost about as much as everything else together at k = 50.
    """
    for b in range(m + 1):
        counts[b] = 0
    scale = m / upper if upper > 0 else 0.0
    if not scale < np.inf:  # tiny positive upper; inf would make 0 * scale NaN
        scale = 0.0
    for i in range(m):
        x = d[i] * scale
        # written so that NaN (inf * 0 with overflowing coordinates) lands in the last bucket
        b = int(x) if x < m - 1 else m - 1
        counts[b + 1] += 1
    for b in range(m):
        counts[b + 1] += counts[b]
    for i in range(m):
        x = d[i] * scale
        b = int(x) if x < m - 1 else m - 1
        pos = counts[b]
        sd[pos] = d[i]
        sj[pos] = j[i]
        counts[b] = pos + 1
    _insertion_sort(sd, sj, m)


@njit(cache=True)
def _max_block_size(cell_start, nx, ny):
    """Largest number of points in any 3 x 3 block of cells (sizes the work buffers)."""
    largest = 0
    for c in range(nx * ny):
        ccx = c % nx
        ccy = c // nx
        gx_lo = max(ccx - 1, 0)
        gx_hi = min(ccx + 1, nx - 1)
        size = 0
        for gy in range(max(ccy - 1, 0), min(ccy + 1, ny - 1) + 1):
            size += cell_start[gy * nx + gx_hi + 1] - cell_start[gy * nx + gx_lo]
        largest = max(largest, size)
    return largest


@njit(cache=True, nogil=True)
def _knn_cell_run(c_lo, c_hi, capacity, spts, cell_start, order, nx, ny, x0, y0, side, k, include_self, slack, out):
    """kNN of the points of cells ``c_lo:c_hi``.

    Per cell, the points of the 3 x 3 block of cells around it are copied once. Each
    point of the cell then

    1. computes its squared distances to the whole block, keeping (branch-free) those
       below a guess of its k-th distance: the previous point's k-th distance times
       ``slack`` (points of a cell are close, so their k-th distances are similar);
    2. if fewer than k survive, keeps the k smallest of the whole block instead
       (quickselect);
    3. sorts the survivors (`_bucket_sort`) and keeps the first k;
    4. accepts them when the k-th distance is within the block (`_square_margin`),
       otherwise continues ring by ring (`_ring_search`) from these k.
    """
    offset = 1 if include_self else 0
    bx = np.empty(capacity, dtype=np.float64)
    by = np.empty(capacity, dtype=np.float64)
    bj = np.empty(capacity, dtype=np.int32)
    d = np.empty(capacity, dtype=np.float64)
    jj = np.empty(capacity, dtype=np.int32)
    sd = np.empty(capacity, dtype=np.float64)
    sj = np.empty(capacity, dtype=np.int32)
    counts = np.empty(capacity + 1, dtype=np.int64)
    guess = -1.0
    for c in range(c_lo, c_hi):
        p_lo = cell_start[c]
        p_hi = cell_start[c + 1]
        if p_lo == p_hi:
            continue
        ccx = c % nx
        ccy = c // nx
        gx_lo = max(ccx - 1, 0)
        gx_hi = min(ccx + 1, nx - 1)
        gy_lo = max(ccy - 1, 0)
        gy_hi = min(ccy + 1, ny - 1)
        n_block = 0
        self_base = 0
        for gy in range(gy_lo, gy_hi + 1):
            a = cell_start[gy * nx + gx_lo]
            if gy == ccy:
                self_base = n_block - a
            for pp in range(a, cell_start[gy * nx + gx_hi + 1]):
                bx[n_block] = spts[pp, 0]
                by[n_block] = spts[pp, 1]
                bj[n_block] = pp
                n_block += 1
        if guess < 0:
            # first cell of a task: k-th distance expected at the block's density
            area = (gx_hi - gx_lo + 1) * (gy_hi - gy_lo + 1) * side * side
            guess = slack * k * area / (np.pi * n_block)
        for p in range(p_lo, p_hi):
            qx = spts[p, 0]
            qy = spts[p, 1]
            if n_block - 1 < k:
                _ring_search(spts, cell_start, nx, ny, x0, y0, side, p, ccx, ccy, k, d, jj, 0, 0)
            else:
                self_t = self_base + p
                bx[self_t] = np.inf  # the point is not its own neighbour
                m = 0
                for t in range(n_block):
                    ex = bx[t] - qx
                    ey = by[t] - qy
                    dist = ex * ex + ey * ey
                    d[m] = dist
                    jj[m] = bj[t]
                    m += dist <= guess
                upper = guess
                if m < k:
                    for t in range(n_block):
                        ex = bx[t] - qx
                        ey = by[t] - qy
                        d[t] = ex * ex + ey * ey
                        jj[t] = bj[t]
                    _select_smallest(d, jj, n_block, k)
                    m = k
                    upper = 0.0
                    for t in range(k):
                        upper = max(upper, d[t])
                bx[self_t] = qx
                _bucket_sort(d, jj, m, upper, sd, sj, counts)
                for t in range(k):
                    d[t] = sd[t]
                    jj[t] = sj[t]
                margin = _square_margin(qx, qy, ccx, ccy, 1, nx, ny, x0, y0, side)
                if d[k - 1] > margin * margin:
                    _ring_search(spts, cell_start, nx, ny, x0, y0, side, p, ccx, ccy, k, d, jj, k, 2)
            guess = d[k - 1] * slack
            row = order[p]
            if include_self:
                out[row, 0] = row
            for b in range(k):
                out[row, offset + b] = order[jj[b]]


# --------------------------------------------------------------------------- radius


def radius_neighbors(coords: ArrayLike, radius: float, *, include_self: bool = True) -> sparse.csr_matrix:
    """All pairs of points at most ``radius`` apart, as a binary sparse matrix.

    Parameters
    ----------
    coords
        (N, d) coordinates. NaN / inf are rejected.
    radius
        Distance threshold (inclusive), in the units of ``coords``.
    include_self
        Put ones on the diagonal.

    Returns
    -------
    scipy.sparse.csr_matrix
        Symmetric N x N matrix, float32 ones where two points are within ``radius``,
        sorted column indices.
    """
    pts = _validate_coords(coords)
    r = _validate_radius(radius)
    n = pts.shape[0]
    pairs = cKDTree(pts).query_pairs(r, output_type="ndarray")  # i < j, each pair once
    parts_i = [pairs[:, 0], pairs[:, 1]]
    parts_j = [pairs[:, 1], pairs[:, 0]]
    if include_self:
        diag = np.arange(n)
        parts_i.append(diag)
        parts_j.append(diag)
    rows = np.concatenate(parts_i)
    cols = np.concatenate(parts_j)
    data = np.ones(rows.size, dtype=np.float32)
    graph = sparse.csr_matrix((data, (rows, cols)), shape=(n, n))
    graph.sort_indices()
    return graph


# --------------------------------------------------------------------------- graph


def resolve_neighbor_rule(n_neighbors: int | None, radius: float | None) -> tuple[int | None, float | None]:
    """Decide between the kNN and the radius rule, and reject ambiguous requests.

    ``radius`` replaces the kNN rule when given; ``n_neighbors`` must then be left at
    its default (or None). Returns ``(n_neighbors, None)`` or ``(None, radius)``.
    """
    if radius is not None:
        if n_neighbors is not None and n_neighbors != DEFAULT_N_NEIGHBORS:
            raise ValueError(
                f"Give either n_neighbors or radius, not both (got n_neighbors={n_neighbors}, radius={radius}). "
                "Pass n_neighbors=None to use the radius."
            )
        return None, _validate_radius(radius)
    if n_neighbors is None:
        raise ValueError("Give n_neighbors (k nearest neighbours) or radius (all neighbours within a distance).")
    return n_neighbors, None


def build_spatial_graph(
    coords: ArrayLike,
    *,
    n_neighbors: int | None = DEFAULT_N_NEIGHBORS,
    radius: float | None = None,
    include_self: bool = False,
    symmetric: bool = True,
    engine: Engine = "auto",
) -> sparse.csr_matrix:
    """Binary spatial neighbour graph.

    Parameters
    ----------
    coords
        (N, d) coordinates.
    n_neighbors
        Connect each point to its k nearest others. Ignored (leave at the default or
        None) when ``radius`` is given.
    radius
        Connect all points at most this far apart instead (inclusive).
    include_self
        Put ones on the diagonal.
    symmetric
        kNN only: connect i and j when either is among the other's neighbours
        (union). A radius graph is always symmetric.
    engine
        Neighbour search engine for the kNN rule, see `knn_indices`.

    Returns
    -------
    scipy.sparse.csr_matrix
        N x N, float32 ones, sorted indices, no row normalisation.
        Without ``symmetric`` every row has exactly ``n_neighbors`` (+1) entries.
    """
    k, r = resolve_neighbor_rule(n_neighbors, radius)
    if r is not None:
        return radius_neighbors(coords, r, include_self=include_self)
    idx = knn_indices(coords, k, include_self=include_self, engine=engine)
    n, width = idx.shape
    index_dtype = np.int32 if idx.size < np.iinfo(np.int32).max else np.int64
    indptr = np.arange(0, n * width + 1, width, dtype=index_dtype)
    indices = idx.ravel().astype(index_dtype, copy=False)
    graph = sparse.csr_matrix((np.ones(idx.size, dtype=np.float32), indices, indptr), shape=(n, n))
    if symmetric:
        graph = graph.maximum(graph.T).tocsr()
    graph.sort_indices()
    return graph


# --------------------------------------------------------------------------- spatial statistics


def morans_i(X, neighbors: NDArray[np.integer]) -> NDArray[np.float64]:
    """Moran's I of every column of ``X`` over a kNN graph with row-normalised weights.

    ``I_g = sum_i z_ig * mean_{j in N(i)} z_jg / sum_i z_ig^2`` with ``z`` the centred
    column: 1 for a perfectly smooth pattern, about 0 for spatial noise. Column 0 of
    ``neighbors`` is taken to be the point itself (``knn_indices(..., include_self=True)``)
    and is left out. ``X`` may be dense or scipy-sparse (CSR/CSC); the sparse path never
    densifies ``X``: memory is O(nnz), time O(nnz * k).
    """
    nb = np.asarray(neighbors)[:, 1:]
    n, k = nb.shape
    if n != X.shape[0]:
        raise ValueError(f"neighbors has {n} rows but X has {X.shape[0]}.")
    if k < 1:
        raise ValueError("neighbors needs at least one neighbour besides the point itself.")
    if sparse.issparse(X):
        # sum_i (x_i - m)(mean_j x_j - m) = sum_i x_i . mean_j x_j - m . sum_i mean_j x_j: one neighbour
        # column at a time, each a row-permuted copy of X, so memory stays O(nnz) (no N x N product).
        X = sparse.csr_matrix(X, dtype=np.float64)
        mean = np.asarray(X.mean(0)).ravel()
        cross = np.zeros(X.shape[1])
        for j in range(k):
            cross += np.asarray(X.multiply(X[nb[:, j]]).sum(0)).ravel()
        indegree = np.bincount(nb.ravel(), minlength=n).astype(np.float64)
        sum_wx = np.asarray(X.T @ indegree).ravel() / k
        num = cross / k - mean * sum_wx
        den = np.asarray(X.multiply(X).sum(0)).ravel() - n * mean**2
    else:
        Z = np.asarray(X, dtype=np.float64)
        Z = Z - Z.mean(0)
        num = np.zeros(Z.shape[1])
        for j in range(k):
            num += (Z * Z[nb[:, j]]).sum(0)
        num /= k
        den = (Z * Z).sum(0)
    out = np.zeros(X.shape[1])
    ok = den > 1e-12 * max(1.0, float(np.max(den, initial=0.0)))
    out[ok] = num[ok] / den[ok]
    return out


def neighbors_for_depth(total_counts: ArrayLike, *, target: float = 6000.0, minimum: int = 6, maximum: int = 30) -> int:
    """Spatial neighbours to pool so that a neighbourhood holds about ``target`` molecules.

    ``k = ceil(target / median counts per observation) - 1``, clipped to
    ``[minimum, maximum]``: a Visium spot grid (hundreds to thousands of UMIs per spot)
    keeps its first hexagonal ring (6), while shallow single cells (a 166-gene STARmap
    panel: 300-600 per cell; Xenium, Visium HD bins) pool 10-30 cells. Derived from the
    data, so no per-platform switch is needed. ``target`` = 6000 was chosen on the
    development set (DLPFC Br8100 and STARmap mPFC; ``benchmarks/compare/DIAGNOSIS.md``).
    """
    counts = np.asarray(total_counts, dtype=np.float64).ravel()
    counts = counts[np.isfinite(counts) & (counts > 0)]
    if counts.size == 0:
        raise ValueError("every observation has zero counts; cannot size the spatial neighbourhood.")
    k = int(np.ceil(float(target) / float(np.median(counts)))) - 1
    return int(min(max(k, int(minimum)), int(maximum)))
