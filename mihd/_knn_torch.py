"""Exact k-nearest-neighbour search for 2-D coordinates in torch, on the CPU or a GPU.

The same uniform-grid idea as the numba engine of `mihd.graph.knn_indices`, written
as batched tensor operations so that it runs where the data already is (a CUDA GPU
in `mihd.refine.refine_labels`, say) instead of on the host:

1. a cell side giving about ``max(2, 0.45 (k + 1))`` points per cell where the points
   actually are (the side shrinks until the occupancy a typical point sees is near
   that, so dense blobs in a mostly empty bounding box get small cells);
2. points sorted by cell id (row-major), so every row of a block of cells is one
   contiguous slice of the sorted points (a CSR cell list: offsets tabulated per cell
   when there are at most 4 cells per point, else found by `torch.searchsorted`;
   only occupied rows are visited, so clustered data costs no padded table);
3. rounds: each still-unresolved query gathers every point of the (2r + 1)^2 cells
   around its own (r = 1 first), keeps itself and its k nearest (float64 squared
   distances), and is resolved once its k-th neighbour is no farther than the edge
   of the searched block (nothing outside the block can then be closer). The others
   go to the next round with twice the radius or, when they already have k + 1
   candidates, with the radius certain to contain their k-th neighbour.

Memory is O(N·k): queries are processed in batches of about ``chunk`` candidate slots.
Like every uniform grid, it is slow on layouts where many points are far from
everything else but near a dense cluster (each gathers the cluster); a few outliers
only add rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from .graph import _grid_side, _validate_coords, _validate_n_neighbors

__all__ = ["knn_indices_torch"]

# Mean points per cell = max(_MIN_POINTS_PER_CELL, _POINTS_PER_CELL_PER_K1 * (k + 1)).
# The (k + 1)-th nearest point (self included) then lies within ~0.84 of a cell side,
# inside the 3 x 3 block whose edge is 1..2 sides away, so round one settles 98-99.9%
# of the points of an even layout. Measured with torch on the CPU, 10^6 uniform and
# jittered-hex points, k = 6, 18, 50: 0.35 .. 0.6 are within ~20% at k = 6; at k = 50
# 0.6 was ~25% slower than 0.35 .. 0.45 (more candidates per point).
_POINTS_PER_CELL_PER_K1 = 0.45
_MIN_POINTS_PER_CELL = 2.0
# Cells per axis stay below this, so that cell ids (row * nx + column) fit int64.
_MAX_CELLS_PER_AXIS = 1 << 30
# Up to this many cells per point the CSR offsets of every cell are tabulated (8 bytes
# a cell); beyond, cells are looked up by binary search in the sorted ids.
_MAX_TABLE_CELLS_PER_POINT = 4
# Default chunk (slots of the padded query x candidate buffer per batch, ~100 bytes
# each with the per-candidate and per-row temporaries): ~25 MiB on the CPU, where
# buffers that size are reused by malloc instead of page-faulted in afresh (2^18 was
# 1.5x faster than 2^21 at 10^6 points), and ~800 MiB on a GPU, where larger batches
# mean fewer kernel launches.
_CHUNK_CPU = 1 << 18
_CHUNK_ACCELERATOR = 1 << 23


def knn_indices_torch(
    coords: ArrayLike | torch.Tensor,
    n_neighbors: int,
    *,
    include_self: bool = True,
    device: Any = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Exact k nearest neighbours of 2-D points, computed with torch on ``device``.

    Parameters
    ----------
    coords
        (N, 2) coordinates, a numpy array or a tensor. NaN / inf are rejected.
    n_neighbors
        Number of neighbours *other than the point itself*; must be < N.
    include_self
        Put the point itself in column 0, even when other points share its
        coordinates (duplicates), as `mihd.graph.knn_indices` does.
    device
        Where to search. None: the device of a ``coords`` tensor, else the CPU.
        ``"auto"``: CUDA when available, else the CPU (Apple MPS has no float64,
        which the exact distances need, so an explicit ``"mps"`` is refused).
    chunk
        Batch size: (query, candidate) slots held at once. Memory is about 100 bytes
        times ``chunk`` beyond the O(N·k) inputs and output. Default 2^18 on the CPU,
        2^23 on a GPU.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape (N, n_neighbors + include_self) on ``device``. Each row
        is sorted by distance (self first when included). Points at equal distance
        may come in a different order than from the other engines; the distances agree.

    Raises
    ------
    ValueError
        If ``coords`` is not (N, 2), holds NaN / inf, or ``n_neighbors >= N``.
    """
    target = _search_device(device, coords)
    pts = _as_points(coords, target)
    k = _validate_n_neighbors(n_neighbors, pts.shape[0])
    if chunk is None:
        chunk = _CHUNK_CPU if target.type == "cpu" else _CHUNK_ACCELERATOR
    elif isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (candidate pairs per batch); got {chunk!r}.")
    idx, _ = _knn_grid_torch(pts, k, int(chunk))
    return idx if include_self else idx[:, 1:]


# --------------------------------------------------------------------------- inputs


def _search_device(device: Any, coords: Any) -> torch.device:
    if device is None:
        return coords.device if isinstance(coords, torch.Tensor) else torch.device("cpu")
    from ._device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "mps":
        if isinstance(device, str) and device.lower() == "auto":
            return torch.device("cpu")
        raise ValueError(
            f"device={device!r}: the exact neighbour search needs float64, which MPS does not support; "
            "use device='cpu' (or 'auto')."
        )
    return resolved


def _as_points(coords: Any, device: torch.device) -> torch.Tensor:
    """(N, 2) float64 tensor on ``device``, or a readable error (the messages of `mihd.graph`)."""
    if isinstance(coords, torch.Tensor):
        if coords.ndim != 2:
            raise ValueError(
                "coords must be a 2-D array of shape (n_points, n_dims); "
                f"got a tensor of shape {tuple(coords.shape)}."
            )
        if coords.dtype.is_complex or coords.dtype == torch.bool:
            raise TypeError(f"coords must hold real numbers (float or int); got dtype {coords.dtype}.")
        _check_two_columns(coords.shape[1])
        if coords.shape[0] < 2:
            raise ValueError(f"coords has {coords.shape[0]} point(s); a neighbour search needs at least 2.")
        pts = coords.detach().to(device=device, dtype=torch.float64).contiguous()
        finite = torch.isfinite(pts).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            raise ValueError(
                f"coords has {bad.numel()} of {pts.shape[0]} rows with NaN or inf values "
                f"(first at row {int(bad[0])}); drop or impute those points before building neighbours."
            )
        return pts
    arr = _validate_coords(coords)
    _check_two_columns(arr.shape[1])
    return torch.from_numpy(arr).to(device)


def _check_two_columns(n_dims: int) -> None:
    if n_dims != 2:
        raise ValueError(
            f"the torch neighbour search handles 2-D coordinates only; these have {n_dims} columns. "
            "Use mihd.graph.knn_indices(engine='kdtree')."
        )


# --------------------------------------------------------------------------- grid


@dataclass
class _Grid:
    """Points sorted by cell (row-major ids); sorted position p is input row ``order[p]``."""

    xs: torch.Tensor  # (N + 1,) float64 x of the sorted points, then inf (padding)
    ys: torch.Tensor  # (N + 1,) float64 y likewise
    order: torch.Tensor  # (N,) int64
    ids: torch.Tensor  # (N,) int64 cell id of each sorted point, nondecreasing
    cx: torch.Tensor  # (N,) int64 column of each sorted point
    cy: torch.Tensor  # (N,) int64 row of each sorted point
    rows: torch.Tensor  # occupied rows, increasing
    cell_start: torch.Tensor | None  # (nx * ny + 1,) CSR offsets, or None (search ``ids``)
    x0: float
    y0: float
    side: float
    nx: int
    ny: int
    tol: float  # rounding slack on the block margin


def _build_grid(pts: torch.Tensor, k: int) -> _Grid:
    """Bin the points; shrink the cells until a typical point's cell holds ~ the target."""
    n = pts.shape[0]
    lo_t = pts.amin(dim=0)
    lo = lo_t.cpu().numpy()
    hi = pts.amax(dim=0).cpu().numpy()
    width, height = (hi - lo).tolist()
    per_cell = max(_MIN_POINTS_PER_CELL, _POINTS_PER_CELL_PER_K1 * (k + 1))
    side = _grid_side(lo, hi, n, per_cell)
    min_side = max(width, height) / _MAX_CELLS_PER_AXIS
    rel = pts - lo_t
    for attempt in range(5):
        nx = int(width / side) + 1
        ny = int(height / side) + 1
        cell = torch.floor(rel / side).to(torch.int64)
        ids = cell[:, 1].clamp_(0, ny - 1) * nx + cell[:, 0].clamp_(0, nx - 1)
        sorted_ids, order = torch.sort(ids)
        counts = torch.unique_consecutive(sorted_ids, return_counts=True)[1]
        # mean occupancy of the cell of a random point (Poisson: per_cell + 1)
        load = float(counts.double().square().sum()) / n
        if load <= 2.0 * per_cell + 2.0 or width == height == 0.0 or attempt == 4:
            break
        smaller = max(side * math.sqrt(per_cell / load), min_side)
        if not smaller < side:  # duplicates, or the id range is exhausted
            break
        side = smaller
    cy = torch.div(sorted_ids, nx, rounding_mode="floor")
    far = torch.full((1,), math.inf, dtype=pts.dtype, device=pts.device)
    spts = pts[order]
    scale = float(np.abs(np.concatenate([lo, hi])).max())
    cell_start = None
    if nx * ny <= _MAX_TABLE_CELLS_PER_POINT * n:
        cell_start = torch.zeros(nx * ny + 1, dtype=torch.int64, device=pts.device)
        torch.cumsum(torch.bincount(sorted_ids, minlength=nx * ny), 0, out=cell_start[1:])
    return _Grid(
        xs=torch.cat([spts[:, 0], far]),
        ys=torch.cat([spts[:, 1], far]),
        order=order,
        ids=sorted_ids,
        cx=sorted_ids - cy * nx,
        cy=cy,
        rows=torch.unique_consecutive(cy),
        cell_start=cell_start,
        x0=float(lo[0]),
        y0=float(lo[1]),
        side=float(side),
        nx=nx,
        ny=ny,
        tol=64 * np.finfo(np.float64).eps * max(scale, side),
    )


def _knn_grid_torch(pts: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, int]:
    """(N, k + 1) int64 neighbours (self first) of validated (N, 2) float64 points, and the rounds used."""
    grid = _build_grid(pts, k)
    n = pts.shape[0]
    device = pts.device
    out = torch.empty((n, k + 1), dtype=torch.int64, device=device)  # sorted positions
    queries = torch.arange(n, device=device)
    radius = torch.ones(n, dtype=torch.int64, device=device)
    rounds = 0
    while queries.numel():
        rounds += 1
        queries, radius = _search_round(grid, queries, radius, k, chunk, out)
    return torch.empty_like(out).index_copy_(0, grid.order, grid.order[out]), rounds


def _search_round(grid: _Grid, queries, radius, k: int, chunk: int, out) -> tuple[torch.Tensor, torch.Tensor]:
    """Search the (2r + 1)^2 block of every query; write the resolved ones into ``out``.

    Returns the unresolved queries with the radius of their next round.
    """
    y_lo = (grid.cy[queries] - radius).clamp_(min=0)
    y_hi = (grid.cy[queries] + radius).clamp_(max=grid.ny - 1)
    first_row = torch.searchsorted(grid.rows, y_lo)
    n_rows = torch.searchsorted(grid.rows, y_hi, right=True) - first_row
    left_q, left_r = [], []
    # Batches of queries whose (query, occupied row) pairs fit the chunk.
    bounds = _cuts(n_rows, max(1, chunk // 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        q = queries[lo:hi]
        r = radius[lo:hi]
        row_q, start, count = _block_rows(grid, q, r, first_row[lo:hi], n_rows[lo:hi])
        n_cand = torch.zeros(hi - lo, dtype=torch.int64, device=q.device).index_add_(0, row_q, count)
        row_end = torch.cumsum(n_rows[lo:hi], 0)
        cand_end = torch.cumsum(n_cand, 0)
        for a, b, width in _padded_cuts(n_cand, chunk, k):
            # rows of queries a:b are contiguous, and so are their candidates
            r0, r1, c0, c1 = (
                torch.stack([_before(row_end, a), row_end[b - 1], _before(cand_end, a), cand_end[b - 1]]).tolist()
            )
            nbr, kth = _nearest(
                grid,
                q[a:b],
                row_q[r0:r1] - a,
                start[r0:r1],
                count[r0:r1],
                n_cand[a:b],
                c1 - c0,
                width,
                k,
            )
            done, next_r = _check(grid, q[a:b], r[a:b], kth)
            out.index_copy_(0, q[a:b][done], nbr[done])
            left_q.append(q[a:b][~done])
            left_r.append(next_r[~done])
    return torch.cat(left_q), torch.cat(left_r)


def _before(cumulative: torch.Tensor, i: int) -> torch.Tensor:
    """Exclusive prefix sum at ``i`` from an inclusive one."""
    return cumulative[i - 1] if i > 0 else torch.zeros((), dtype=cumulative.dtype, device=cumulative.device)


def _block_rows(grid: _Grid, q, r, first_row, n_rows):
    """One (query, occupied row) pair per row of each query's block: owner, first sorted position, count."""
    total = int(n_rows.sum())
    local = torch.arange(q.numel(), device=q.device)
    row_q = torch.repeat_interleave(local, n_rows, output_size=total)
    row_base = torch.cumsum(n_rows, 0) - n_rows
    row = grid.rows[first_row[row_q] + torch.arange(total, device=q.device) - row_base[row_q]]
    cx = grid.cx[q]
    id_lo = row * grid.nx + (cx - r).clamp_(min=0)[row_q]
    id_hi = row * grid.nx + (cx + r).clamp_(max=grid.nx - 1)[row_q]
    if grid.cell_start is not None:
        start = grid.cell_start.index_select(0, id_lo)
        count = grid.cell_start.index_select(0, id_hi + 1) - start
    else:
        start = torch.searchsorted(grid.ids, id_lo)
        count = torch.searchsorted(grid.ids, id_hi, right=True) - start
    return row_q, start, count


def _nearest(grid: _Grid, q, row_q, start, count, n_cand, total: int, width: int, k: int):
    """Self and the k nearest candidates of each query in ``q``, and the k-th squared distance.

    Candidates go into a (queries x most candidates) buffer padded with a point at
    infinity; the query itself gets distance -1, so duplicates at distance 0 never
    displace it from column 0. Queries with fewer than k + 1 candidates get an inf
    k-th distance. ``total`` is the number of candidates, ``width`` the buffer's
    (at least k + 1 and the largest count).
    """
    device = q.device
    n_q = q.numel()
    # Within a row, candidate j sits at sorted position start + j and at buffer
    # slot first_slot + j: both are an arange plus a per-row shift.
    row_base = torch.cumsum(count, 0) - count
    first_slot = row_q * width + row_base - (torch.cumsum(n_cand, 0) - n_cand)[row_q]
    cand_row = torch.repeat_interleave(torch.arange(count.numel(), device=device), count, output_size=total)
    ramp = torch.arange(total, device=device)
    slot = ramp + (first_slot - row_base).index_select(0, cand_row)
    pos = ramp.add_((start - row_base).index_select(0, cand_row))
    del cand_row
    index = torch.full((n_q * width,), grid.xs.numel() - 1, dtype=torch.int64, device=device)
    index.scatter_(0, slot, pos)  # 8x faster than index[slot] = pos on the CPU
    del slot, pos
    dist = grid.xs.index_select(0, index).view(n_q, width).sub_(grid.xs[q][:, None]).square_()
    dist += grid.ys.index_select(0, index).view(n_q, width).sub_(grid.ys[q][:, None]).square_()
    index = index.view(n_q, width)
    # the query itself, in the row of its own cell
    q_row = q[row_q]
    own = (q_row >= start) & (q_row < start + count)
    dist.view(-1)[first_slot[own] + q_row[own] - start[own]] = -1.0
    best, cols = _smallest(dist, k + 1)
    return index.gather(1, cols), best[:, k]


def _smallest(dist: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` smallest values of each row, ascending, and their columns."""
    if dist.is_cuda and dist.shape[1] <= 4096:
        # CUDA sorts rows this short in one batched in-block kernel, while topk runs
        # a radix select over all 64 bits of a float64 per row (not measured here:
        # no GPU on the development machine).
        values, cols = torch.sort(dist, dim=1)
        return values[:, :n], cols[:, :n]
    return torch.topk(dist, n, dim=1, largest=False, sorted=True)


def _check(grid: _Grid, q, r, kth):
    """Which queries are resolved, and the radius of the next round for the others.

    Resolved: the k-th squared distance is within the margin, the distance from the
    point to the nearest side of its searched block that is not on the grid's border.
    Otherwise, with k + 1 candidates, a block of radius floor(sqrt(kth) / side) + 1 is
    certain to hold the k nearest; without, the radius doubles.
    """
    inf = torch.tensor(math.inf, dtype=torch.float64, device=q.device)
    side = grid.side
    x = grid.xs[q]
    y = grid.ys[q]
    cx = grid.cx[q]
    cy = grid.cy[q]
    margin = torch.minimum(
        torch.minimum(
            torch.where(cx - r > 0, x - (grid.x0 + (cx - r).double() * side), inf),
            torch.where(cx + r < grid.nx - 1, grid.x0 + (cx + r + 1).double() * side - x, inf),
        ),
        torch.minimum(
            torch.where(cy - r > 0, y - (grid.y0 + (cy - r).double() * side), inf),
            torch.where(cy + r < grid.ny - 1, grid.y0 + (cy + r + 1).double() * side - y, inf),
        ),
    )
    margin = (margin - grid.tol).clamp_(min=0.0)
    done = kth <= margin.square()
    found = torch.isfinite(kth)
    r_max = max(grid.nx, grid.ny)
    reach = torch.floor(torch.sqrt(torch.where(found, kth, 0.0)) / side).clamp_(max=r_max).to(torch.int64) + 1
    next_r = torch.where(found, torch.maximum(reach, r + 1), 2 * r).clamp_(max=r_max)
    return done, next_r


# --------------------------------------------------------------------------- batching


def _cuts(cost: torch.Tensor, budget: int) -> list[int]:
    """Boundaries splitting ``cost`` into consecutive runs of total about ``budget``.

    A run holds at least one item; its total is at most ``budget`` plus its first item.
    """
    m = cost.numel()
    if m == 0:
        return [0]
    cumulative = torch.cumsum(cost, 0)
    total = int(cumulative[-1])
    if total <= budget:
        return [0, m]
    targets = torch.arange(1, -(-total // budget), device=cost.device, dtype=cumulative.dtype) * budget
    inner = torch.searchsorted(cumulative, targets, right=True).tolist()
    return sorted({0, m, *(i for i in inner if 0 < i < m)})


def _padded_cuts(n_cand: torch.Tensor, budget: int, k: int) -> list[tuple[int, int, int]]:
    """Runs of queries whose padded (queries x most candidates) buffer fits ``budget`` slots.

    Runs are first cut at half the budget in candidates (padding to the largest
    count about doubles an even layout's), then halved while uneven counts (a heavy
    query among light ones) would blow up the padding. A single query may exceed it.
    Returns (first, stop, width) per run, width = max(k + 1, largest count).
    """
    bounds = _cuts(n_cand, max(1, budget // 2))
    stack = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])][::-1]
    runs = []
    while stack:
        a, b = stack.pop()
        width = max(int(n_cand[a:b].max()), k + 1)
        if b - a > 1 and (b - a) * width > budget:
            mid = (a + b) // 2
            stack.extend([(mid, b), (a, mid)])
        else:
            runs.append((a, b, width))
    return runs
