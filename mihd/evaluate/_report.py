"""Report of an evaluation: a Markdown summary, an ARI box plot and spatial domain maps.

The input is the tidy results table of an evaluation, one row per planned run
(``status`` ``"ok"`` or ``"failed"``). Statistics use the ok runs only; failed runs are
listed with the first line of their error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_write, write_text
from ..metrics import annotated_mask

__all__ = ["plot_ari", "plot_domain_grid", "summary_markdown", "write_report"]

log = logging.getLogger(__name__)

_MISSING = "–"
_TABLE_COLUMNS = ("run_id", "status", "slice", "fusion", "encoder", "cluster", "seed", "ari_after")
_SUMMARY_COLUMNS = _TABLE_COLUMNS + ("nmi_after", "ari_before", "wall_seconds", "peak_rss_mib", "error")


# --------------------------------------------------------------------------- table statistics


def _check_columns(table: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise KeyError(
            f"The results table has no column(s) {missing}; it needs {list(columns)} "
            f"(one row per planned run, as written by the evaluation)."
        )


def _methods(table: pd.DataFrame) -> pd.Series:
    """Method name per row: a ``method`` column when the table has one (e.g. a report that mixes
    mihd with peer tools), else the fusion, plus encoder / cluster when either varies in the table,
    plus ``[variant]`` for runs of a variant other than ``default``."""
    if "method" in table:
        return table["method"].astype(str)
    name = table["fusion"].astype(str)
    varying = [c for c in ("encoder", "cluster") if table[c].nunique() > 1]
    if varying:  # both shown as soon as one varies, so names read the same way in every row
        name = name + " / " + table["encoder"].astype(str) + " / " + table["cluster"].astype(str)
    if "variant" in table:
        variant = table["variant"].fillna("default").astype(str)
        name = name.where(variant == "default", name + " [" + variant + "]")
    return name


def _ok_runs(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(method=_methods(table))[lambda t: t["status"] == "ok"]


def _ranking(table: pd.DataFrame) -> pd.Series:
    """Rank per method (1 = highest mean ``ari_after`` over its ok runs; ties share the min rank).

    Ordered by rank, then name; methods without a scored run come last with a NaN rank.
    """
    methods = pd.unique(_methods(table))
    mean = _ok_runs(table).groupby("method")["ari_after"].mean().reindex(methods)
    # Means of equal scores summed in another order can differ in the last bit.
    rank = mean.round(12).rank(ascending=False, method="min")
    order = pd.DataFrame({"rank": rank, "name": rank.index}).sort_values(["rank", "name"], na_position="last")
    return rank.loc[order.index]


def _fmt(value: float, digits: int = 3) -> str:
    return _MISSING if pd.isna(value) else f"{value:.{digits}f}"


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return _MISSING
    if len(values) == 1:
        return _fmt(values.iloc[0])
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summary_markdown(table: pd.DataFrame, *, title: str = "mihd evaluate", command: str | None = None) -> str:
    """Markdown summary of an evaluation: one row per method, ranked by mean ARI.

    Parameters
    ----------
    table
        Results table, one row per planned run, with at least the columns ``run_id, status,
        slice, fusion, encoder, cluster, seed, ari_after, nmi_after, ari_before,
        wall_seconds, peak_rss_mib, error``. Only rows with ``status == "ok"`` enter the statistics.
    title
        First-level heading.
    command
        The command that produced the table, shown in a code block.

    Returns
    -------
    str
        Header (counts, slices, seeds), the method table (rank; per slice ARI and NMI after
        refinement as mean ± sd over seeds; overall median and mean ARI, mean ARI before
        refinement, mean wall seconds, max peak MiB, number of ok runs), a note on what the
        scores mean, and a "Failed runs" section when any run failed.
    """
    _check_columns(table, _SUMMARY_COLUMNS)
    ok = _ok_runs(table)
    failed = table[table["status"] == "failed"]
    slices = list(pd.unique(table["slice"]))
    ranking = _ranking(table)

    rows = []
    for method, rank in ranking.items():
        runs = ok[ok["method"] == method]
        row = {"rank": _MISSING if pd.isna(rank) else int(rank), "method": method}
        for s in slices:
            row[f"ARI {s}"] = _mean_sd(runs.loc[runs["slice"] == s, "ari_after"])
            row[f"NMI {s}"] = _mean_sd(runs.loc[runs["slice"] == s, "nmi_after"])
        row["median ARI"] = _fmt(runs["ari_after"].median())
        row["mean ARI"] = _fmt(runs["ari_after"].mean())
        row["ARI before refinement"] = _fmt(runs["ari_before"].mean())
        row["wall s"] = _fmt(runs["wall_seconds"].mean(), 1)
        row["peak MiB"] = _fmt(runs["peak_rss_mib"].max(), 0)
        row["n"] = len(runs)
        rows.append(row)

    seeds = sorted(pd.unique(table["seed"].dropna()))
    parts = [f"# {title}", ""]
    if command:
        parts += ["```", command, "```", ""]
    parts += [
        f"- runs planned: {len(table)} (ok: {len(ok)}, failed: {len(failed)})",
        f"- slices: {', '.join(map(str, slices))}",
        f"- seeds: {', '.join(map(str, seeds))}",
        "",
        _markdown_table(pd.DataFrame(rows, columns=list(rows[0]) if rows else ["rank", "method"])),
        "",
        "ARI and NMI are after spatial refinement; ground-truth labels are used only for scoring; "
        "the spread (±) is the standard deviation over seeds.",
    ]
    datasets = datasets_markdown(table)
    if datasets:
        parts += ["", datasets]
    image = image_markdown(table)
    if image:
        parts += ["", image]
    if len(failed):
        errors = [str(e).strip().splitlines()[0] if pd.notna(e) and str(e).strip() else _MISSING for e in failed["error"]]
        parts += ["", "## Failed runs", "", _markdown_table(pd.DataFrame({"run_id": failed["run_id"], "error": errors}))]
    return "\n".join(parts) + "\n"


def datasets_markdown(table: pd.DataFrame) -> str:
    """Per slice: spots and the depth share of its gene PCs (R² of log total counts on them, and the share of
    the PCs' variance that log depth explains); "" when the table has no depth columns."""
    if "depth_share" not in table or not table["depth_share"].notna().any():
        return ""
    ok = _ok_runs(table)
    rows = []
    for slice_name, runs in ok.groupby("slice", sort=False):
        rows.append({"slice": slice_name, "spots": _fmt(runs["n_spots"].median(), 0) if "n_spots" in runs else _MISSING,
                     "depth share (R² of log depth on the gene PCs)": _fmt(runs["depth_share"].median(), 2),
                     "PC variance explained by depth": _fmt(runs["depth_share_pcs"].median(), 2)})
    return "\n".join(["## Datasets", "", _markdown_table(pd.DataFrame(rows))])


NO_IMAGE_VARIANT = "no_image"  # a variant with encoder.image=none: the image gain is ARI(method) - ARI(method [no_image])


def image_markdown(table: pd.DataFrame) -> str:
    """The image's part in every method and slice, or "" when no run saw an image.

    Per method and slice: the image's weight in the joint mixture (`mihd.joint`, mean over seeds), its
    share of the fused embedding (ablation: variance moved by replacing the image with its mean, over
    the embedding's variance) and, where the plan also ran the method as variant ``no_image``
    (``encoder.image=none``), the image gain: mean refined ARI with the image minus without.
    """
    if "image_weight" not in table:
        return ""
    ok = _ok_runs(table)
    if not ok["image_weight"].notna().any():
        return ""
    variant = ok["variant"].fillna("default").astype(str) if "variant" in ok else pd.Series("default", index=ok.index)
    base = ok[variant != NO_IMAGE_VARIANT]
    without = ok[variant == NO_IMAGE_VARIANT].assign(method=lambda t: t["method"].str.replace(f" [{NO_IMAGE_VARIANT}]", "", regex=False))
    rows = []
    for (method, slice_name), runs in base.groupby(["method", "slice"], sort=False):
        if not runs["image_weight"].notna().any():
            continue
        other = without[(without["method"] == method) & (without["slice"] == slice_name)]["ari_after"]
        gain = runs["ari_after"].mean() - other.mean() if len(other) else np.nan
        rows.append({"method": method, "slice": slice_name, "image weight": _fmt(runs["image_weight"].mean(), 2),
                     "agreement (AMI)": _fmt(runs["image_agreement"].mean(), 2), "image share": _fmt(runs["image_share"].mean(), 2),
                     "ARI with image": _fmt(runs["ari_after"].mean()), "ARI without": _fmt(other.mean()) if len(other) else _MISSING,
                     "image gain": f"{gain:+.3f}" if np.isfinite(gain) else _MISSING})
    if not rows:
        return ""
    return "\n".join([
        "## The image", "",
        "Image weight: how much the image counts in the mixture over genes and image (0: left out, the genes-only run), "
        "derived from the agreement (AMI) of the domains each modality finds on its own; image share: the part of the "
        f"fused embedding that replacing the image by its mean moves; image gain: ARI minus the `{NO_IMAGE_VARIANT}` "
        "variant's (`encoder.image=none`), where the plan has it.", "",
        _markdown_table(pd.DataFrame(rows)),
    ])


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def plot_ari(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Box plot of ``ari_after`` per method (ordered by rank), each run a jittered point coloured by slice.

    Parameters
    ----------
    table
        Results table (see `summary_markdown`); failed runs and NaN scores are skipped.
    path
        PNG file to write (atomically).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    _check_columns(table, _TABLE_COLUMNS)
    plt = _pyplot()
    ok = _ok_runs(table).dropna(subset=["ari_after"])
    methods = [m for m in _ranking(table).index if m in set(ok["method"])]
    slices = list(pd.unique(ok["slice"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * len(methods) + 2.0), 4.0))
    if methods:
        ax.boxplot([ok.loc[ok["method"] == m, "ari_after"] for m in methods], showfliers=False, widths=0.5)
    rng = np.random.default_rng(0)
    cmap = plt.get_cmap("tab10")
    for j, s in enumerate(slices):
        runs = ok[ok["slice"] == s]
        x = runs["method"].map({m: i + 1 for i, m in enumerate(methods)}) + rng.uniform(-0.15, 0.15, len(runs))
        ax.scatter(x, runs["ari_after"], s=18, color=cmap(j % 10), label=str(s), zorder=3, alpha=0.85)
    tilt = len(methods) > 3
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel("ARI (after refinement)")
    if slices:
        ax.legend(title="slice", fontsize=7, title_fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    return _save_png(fig, path)


def _read_obs_and_spatial(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """``obs`` and ``obsm["spatial"]`` of an h5ad file, without reading ``X``."""
    import h5py

    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    with h5py.File(path, "r") as f:
        if "obsm/spatial" not in f:
            raise KeyError(f"{path} has no obsm['spatial']; the domain maps need spot coordinates.")
        return read_elem(f["obs"]), np.asarray(read_elem(f["obsm/spatial"]))


def _truth_settings(run_dir: Path) -> tuple[str, list[str]]:
    """The run's annotation column and its extra unannotated label values (from its metrics.json config)."""
    try:
        data = json.loads((run_dir / "metrics.json").read_text())["config"]["data"]
        return data.get("annotation_key") or "ground_truth", [str(v) for v in data.get("unannotated") or []]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "ground_truth", []


def _domain_panels(table: pd.DataFrame, slice_name, *, seed=None, label_key_suffix: str = "_refined"):
    """AnnData with one ``obs`` column per panel, the panel keys and titles, the seed drawn and the
    key the colours match (the ground truth, else the first panel); None if nothing to draw."""
    from anndata import AnnData

    _check_columns(table, _TABLE_COLUMNS + ("nmi_after", "run_dir"))
    ok = _ok_runs(table)
    ok = ok[ok["slice"] == slice_name]
    if seed is None and len(ok):
        seed = ok["seed"].min()
    ok = ok[ok["seed"] == seed].drop_duplicates("method")
    rank = {m: i for i, m in enumerate(_ranking(table).index)}
    ok = ok.iloc[np.argsort([rank[m] for m in ok["method"]], kind="stable")]

    obs = keys = titles = None
    spatial = truth = None
    for run in ok.itertuples(index=False):
        path = Path(str(run.run_dir)) / "adata.h5ad"
        if not path.is_file():
            log.debug("No %s; run %s is left out of the domain maps.", path, run.run_id)
            continue
        run_obs, run_xy = _read_obs_and_spatial(path)
        column = f"mihd_{run.fusion}{label_key_suffix}"
        if column not in run_obs:
            log.warning("%s has no obs[%r]; run %s is left out of the domain maps.", path, column, run.run_id)
            continue
        if obs is None:  # the first method fixes the spots and their coordinates
            obs, keys, titles, spatial = pd.DataFrame(index=run_obs.index), [], [], run_xy
        key = f"panel_{len(keys)}"
        obs[key] = run_obs[column].reindex(obs.index).astype(object)
        keys.append(key)
        titles.append(f"{run.method}: ARI {_fmt(run.ari_after)}, NMI {_fmt(run.nmi_after)}")
        truth_key, unannotated = _truth_settings(path.parent)
        if truth is None and truth_key in run_obs:
            truth = run_obs[truth_key].reindex(obs.index).astype(object)
            truth = truth.where(annotated_mask(truth.to_numpy()) & ~truth.astype(str).isin(unannotated).to_numpy())
    if obs is None:
        return None
    match_to = keys[0]
    if truth is not None:
        obs["ground_truth"] = pd.Categorical(truth)
        keys.append("ground_truth")
        titles.append("ground truth")
        match_to = "ground_truth"
    return AnnData(obs=obs, obsm={"spatial": spatial}), keys, titles, seed, match_to


def plot_domain_grid(
    table: pd.DataFrame,
    slice_name,
    path: str | os.PathLike,
    *,
    seed=None,
    label_key_suffix: str = "_refined",
) -> Path | None:
    """Grid of spatial domain maps of one slice and seed, one panel per method plus the ground truth.

    Each ok run's ``run_dir/adata.h5ad`` is read (``obs`` and ``obsm["spatial"]`` only). Spots
    are aligned on the first method's ``obs_names``. Every method's domains take the colour of
    the ground-truth label they overlap most (Hungarian matching, `mihd.pl.spatial_domains`),
    unmatched domains extra colours; without a ground truth, of the first method's domains.
    Panel titles carry ARI / NMI, the figure title the slice and seed.

    Parameters
    ----------
    table
        Results table (see `summary_markdown`) with ``nmi_after`` and ``run_dir`` columns.
    slice_name
        The ``slice`` to draw.
    path
        PNG file to write (atomically).
    seed
        The seed to draw; default the smallest seed among the slice's ok runs.
    label_key_suffix
        Domains are read from ``obs[f"mihd_{fusion}{label_key_suffix}"]``.

    Returns
    -------
    pathlib.Path or None
        ``path``, or None (with a warning) when no ok run of that slice and seed has an ``adata.h5ad``.
    """
    from ..pl import spatial_domains

    panels = _domain_panels(table, slice_name, seed=seed, label_key_suffix=label_key_suffix)
    if panels is None:
        log.warning("No ok run of slice %r (seed %s) has an adata.h5ad; no domain maps drawn.", slice_name, seed)
        return None
    adata, keys, titles, seed, match_to = panels
    matched = "the ground truth" if match_to == "ground_truth" else "the first panel"
    seed = int(seed) if float(seed).is_integer() else seed
    stage = "refined domains" if label_key_suffix == "_refined" else "domains"
    fig = spatial_domains(adata, keys, titles=titles, match_to=match_to, ncols=min(4, len(keys)),
                          suptitle=f"slice {slice_name}, seed {seed}: {stage} of each method, colours matched to {matched}")
    return _save_png(fig, path)


def write_report(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    plot_slice=None,
    title: str = "mihd evaluate",
    command: str | None = None,
) -> dict[str, Path]:
    """Write ``summary.md``, ``ari_by_method.png`` and ``domains_<slice>.png`` into ``out_dir``.

    Parameters
    ----------
    table
        Results table (see `summary_markdown`).
    out_dir
        Output folder (created if needed); every file is written atomically.
    plot_slice
        Slice of the domain maps; default the first slice in the table.
    title, command
        Passed to `summary_markdown`.

    Returns
    -------
    dict
        ``"summary"``, ``"ari_plot"`` and, when any run of the slice has an ``adata.h5ad``,
        ``"domains"``: the paths written.
    """
    out_dir = Path(out_dir)
    paths = {
        "summary": write_text(out_dir / "summary.md", summary_markdown(table, title=title, command=command)),
        "ari_plot": plot_ari(table, out_dir / "ari_by_method.png"),
    }
    if plot_slice is None and len(table):
        plot_slice = table["slice"].iloc[0]
    if plot_slice is not None:
        domains = plot_domain_grid(table, plot_slice, out_dir / f"domains_{plot_slice}.png")
        if domains is not None:
            paths["domains"] = domains
    return paths
