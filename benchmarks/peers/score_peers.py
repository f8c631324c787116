"""Score the peers' saved labels with mihd's own metrics -> results.csv / results.md.

Run with the mihd venv (never the peers venv): the peers only write ``barcode,label,label_before``
CSVs (``run_<tool>.py``); this script reads each DLPFC slice with ``mihd.data.read_visium`` (truth
from ``truth.tsv``) and each STARmap mPFC section from its h5ad (truth = ``obs["truth"]``,
coordinates = ``obsm["spatial"]``), aligns the labels by barcode and calls
``mihd.metrics.score_labels(pred, truth, coords)`` exactly as ``mihd train`` does (unannotated
"NA" spots left out of the label scores; chaos/PAS on ``obsm["spatial"]``). The table has the
``mihd evaluate`` columns (``mihd.evaluate._evaluate.RESULT_COLUMNS``): fusion = peer name,
encoder = "peer", cluster = the peer's clustering; ``*_after`` = the peer's refined output,
``*_before`` = its unrefined labels.

    .venv/bin/python benchmarks/peers/score_peers.py --out-dir benchmarks/peers/out

Datasets are named ``dlpfc_<slice>`` and ``starmap_<section>``; without ``--seeds`` every seed folder
found under ``<out-dir>/<Tool>/<dataset>/`` is scored (with ``--seeds``, missing runs are rows with
status ``todo``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mihd.data import read_visium
from mihd.evaluate._evaluate import RESULT_COLUMNS
from mihd.evaluate._report import plot_ari, summary_markdown
from mihd.metrics import score_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_machine.py
from _machine import cpu_model  # noqa: E402

HERE = Path(__file__).resolve().parent
TOOLS = {"banksy": ("BANKSY", "leiden"), "spagcn": ("SpaGCN", "louvain"), "cellcharter": ("CellCharter", "gmm"),
         "stagate": ("STAGATE", "mclust"), "graphst": ("GraphST", "mclust")}
ALL_DATASETS = ["dlpfc_151673", "dlpfc_151674", "dlpfc_151675", "dlpfc_151676", "starmap_BZ5", "starmap_BZ9", "starmap_BZ14"]
K_OF = {"dlpfc": 7, "starmap": 4}
SCORES = ("ari", "nmi", "ami", "homogeneity", "completeness", "chaos", "pas")


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip("-") or "x"


def _key(tool: str, slice_name: str, seed: int, n_domains: int) -> str:
    ident = json.dumps({"peer": tool, "slice": slice_name, "seed": seed, "n_domains": n_domains}, sort_keys=True)
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def _load_slice(data_dir: Path, name: str):
    """The dataset with ``obs["ground_truth"]`` and ``obsm["spatial"]``: dlpfc_<slice> or starmap_<section>."""
    kind, _, s = name.partition("_")
    if kind == "dlpfc":
        return read_visium(data_dir / "dlpfc" / s, annotation="truth.tsv")
    if kind == "starmap":
        import anndata as ad

        adata = ad.read_h5ad(data_dir / "starmap_mpfc" / f"{s}.h5ad")
        adata.obs_names = adata.obs_names.astype(str)
        adata.obs["ground_truth"] = adata.obs["truth"].astype(object)
        return adata
    raise ValueError(f"unknown dataset {name!r} (dlpfc_<slice> or starmap_<section>)")


def _seeds_found(out_dir: Path, fusion: str, name: str) -> list[int]:
    d = out_dir / fusion / name
    found = []
    for sub in d.glob("seed*") if d.is_dir() else []:
        if sub.name[4:].isdigit() and any((sub / f).is_file() for f in ("labels.csv.json", "error.txt")):
            found.append(int(sub.name[4:]))
    return sorted(found)


def score_run(adata, labels_csv: Path) -> dict:
    lab = pd.read_csv(labels_csv, dtype={"barcode": str, "label": str, "label_before": str}, keep_default_na=False)
    obs = pd.Index(adata.obs_names)
    if lab["barcode"].duplicated().any():
        raise ValueError(f"{labels_csv}: duplicated barcodes")
    if set(lab["barcode"]) != set(obs):
        raise ValueError(f"{labels_csv}: barcodes differ from the slice's in-tissue spots "
                         f"({len(set(lab['barcode']) - set(obs))} extra, {len(set(obs) - set(lab['barcode']))} missing)")
    lab = lab.set_index("barcode").loc[obs]
    truth = adata.obs["ground_truth"].to_numpy()
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    out = {}
    for col, suffix in (("label_before", "before"), ("label", "after")):
        sc = score_labels(lab[col].to_numpy(), truth, coords)
        for s in SCORES:
            out[f"{s}_{suffix}"] = sc.get(s, math.nan)
        out["n_scored"] = sc.get("n_scored")
    return out


def build_table(out_dir: Path, data_dir: Path, datasets, seeds, tools) -> pd.DataFrame:
    """One row per (tool, dataset, seed): the planned seeds, or (seeds=None) every seed folder found."""
    rows = []
    cache = {}
    for tool in tools:
        fusion, cluster = TOOLS[tool]
        for name in datasets:
            s = name
            n_domains = K_OF[name.split("_")[0]]
            for seed in (seeds if seeds is not None else _seeds_found(out_dir, fusion, name)):
                key = _key(fusion, name, seed, n_domains)
                run_dir = out_dir / fusion / name / f"seed{seed}"
                row = {c: math.nan for c in RESULT_COLUMNS}
                row.update(run_id="__".join(_slug(x) for x in (name, fusion, "peer", cluster, f"seed{seed}", key[:8])), key=key,
                           status="todo", slice=name, fusion=fusion, encoder="peer", cluster=cluster, seed=seed,
                           n_domains=n_domains, error="", run_dir=str(run_dir))
                labels, info_path, err = run_dir / "labels.csv", run_dir / "labels.csv.json", run_dir / "error.txt"
                if labels.is_file() and info_path.is_file():
                    info = json.loads(info_path.read_text())
                    t = info.get("timing_seconds", {})
                    mem = info.get("memory", {})
                    p = info.get("params", {})
                    try:
                        if s not in cache:
                            cache[s] = _load_slice(data_dir, s)
                        row.update(score_run(cache[s], labels))
                        row.update(status="ok")
                    except Exception as e:  # a bad label file fails its row, not the table
                        row.update(status="failed", error=f"scoring: {type(e).__name__}: {e}")
                    row.update(
                        n_spots=info.get("n_spots"), n_domains=info.get("n_domains", n_domains), device=info.get("device"),
                        epochs=p.get("epochs", p.get("train", {}).get("max_epochs")),
                        wall_seconds=t.get("total"), train_seconds=t.get("train"), prepare_seconds=t.get("read"),
                        cluster_seconds=t.get("cluster", math.nan),
                        peak_rss_mib=max(mem.get("peak_rss_mib", math.nan), mem.get("peak_rss_children_mib", 0.0)),
                    )
                    row["n_found"] = info.get("n_labels_found")
                    row["n_found_before"] = info.get("n_labels_found_before")
                elif err.is_file():
                    lines = [l for l in err.read_text().splitlines() if l.strip()]
                    row.update(status="failed", error=lines[-1] if lines else "failed (no message)")
                rows.append(row)
    table = pd.DataFrame(rows)
    extra = [c for c in table.columns if c not in RESULT_COLUMNS]
    return table[list(RESULT_COLUMNS) + extra]


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, Python {platform.python_version()} "
            f"(scoring); load average now {load[0]:.2f} (the machine is shared: wall times are upper bounds)")


def _fmt(v, d=3):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.{d}f}" if isinstance(v, float) else str(v))


def per_dataset_markdown(table: pd.DataFrame) -> str:
    ok = table[table["status"] == "ok"]
    datasets = list(pd.unique(table["slice"]))
    lines = ["| tool | " + " | ".join(datasets) + " | wall s DLPFC | wall s mPFC | peak MiB |", "|" + "---|" * (len(datasets) + 4)]
    for fusion in pd.unique(table["fusion"]):
        runs = ok[ok["fusion"] == fusion]
        cells = []
        for d in datasets:
            a = runs.loc[runs["slice"] == d, "ari_after"].dropna()
            cells.append("–" if a.empty else (f"{a.iloc[0]:.3f} (1)" if len(a) == 1 else f"{a.mean():.3f} ± {a.std(ddof=1):.3f} ({len(a)})"))
        w = lambda kind: _fmt(runs.loc[runs["slice"].str.startswith(kind), "wall_seconds"].astype(float).mean(), 1)
        lines.append(f"| {fusion} | " + " | ".join(cells) + f" | {w('dlpfc')} | {w('starmap')} | {_fmt(runs['peak_rss_mib'].astype(float).max(), 0)} |")
    return "\n".join(lines)


def write_markdown(table: pd.DataFrame, path: Path, command: str, out_dir: Path) -> None:
    versions = {}
    for f in sorted(out_dir.glob("*/*/seed*/labels.csv.json")):
        info = json.loads(f.read_text())
        versions.setdefault(info["tool"], (info.get("versions"), info.get("params"), info.get("machine", {}).get("OMP_NUM_THREADS")))
    parts = [summary_markdown(table, title="Peers scored with mihd's metrics", command=command).rstrip(), ""]
    parts += ["", "## Per dataset (refined ARI mean ± sd over seeds, n seeds; wall s mean; peak MiB max)", ""]
    parts += per_dataset_markdown(table).splitlines() + [""]
    parts += [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine()}",
        "- peers ran in `benchmarks/peers/.venv-peers` (`setup_peers.sh`), CPU torch 2.13.0, one run at a time; "
        "labels scored here with `mihd.metrics.score_labels` from the mihd venv (NA spots excluded; chaos/PAS on full-resolution pixel coordinates).",
        "- ARI/NMI after = the tool's own refined output (GraphST `refine_label` radius 50; SpaGCN `refine` hexagon; "
        "BANKSY `refine_once` on Visium only); before = its unrefined clustering (STAGATE and CellCharter do not refine: "
        "before = after). Nothing was chosen by ARI; each tool ran with its documented recipe, K given.",
        "- STARmap mPFC sections: truth = `obs['truth']` of the h5ad (L1, L2/3, L5, L6; K = 4); chaos/PAS on `obsm['spatial']` pixels.",
        "- The rank column orders methods by mean ARI over *their own* ok runs: where methods have different "
        "slices/seeds done (see n and the per-slice columns; rows with status todo have not run), compare per slice, not by rank.",
        "",
    ]
    for tool, (v, p, omp) in versions.items():
        parts.append(f"- {tool}: versions {json.dumps(v)}; OMP_NUM_THREADS={omp}; params {json.dumps(p)}")
    parts += ["", "## Every run", ""]
    cols = ["slice", "fusion", "cluster", "seed", "status", "ari_before", "ari_after", "nmi_before", "nmi_after",
            "n_found", "wall_seconds", "peak_rss_mib"]
    cols = [c for c in cols if c in table.columns]
    parts.append("| " + " | ".join(cols) + " |")
    parts.append("|" + "---|" * len(cols))
    for _, r in table.iterrows():
        parts.append("| " + " | ".join(_fmt(r[c], 1 if c in ("wall_seconds", "peak_rss_mib") else 0 if c == "n_found" else 3) for c in cols) + " |")
    parts += ["", "n_found = number of distinct refined labels the tool returned (K requested = n_domains)."]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=HERE / "out", help="where run_all.sh put <Tool>/<slice>/seed<k>/labels.csv")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MIHD_DATA_DIR", HERE.parents[1].parent / "shared" / "data")))
    ap.add_argument("--datasets", nargs="+", default=ALL_DATASETS, help="dlpfc_<slice> / starmap_<section>")
    ap.add_argument("--slices", nargs="+", default=None, help="DLPFC slice ids (old form; same as --datasets dlpfc_<id> ...)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="planned seeds (default: every seed folder found)")
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    ap.add_argument("--results-dir", type=Path, default=HERE, help="results.csv / results.md / ari_by_method.png go here")
    ap.add_argument("--command", default=None, help="the command to show in results.md")
    args = ap.parse_args()
    command = args.command or " ".join(["python"] + sys.argv)
    datasets = [f"dlpfc_{x}" for x in args.slices] if args.slices else args.datasets
    table = build_table(args.out_dir, args.data_dir, datasets, args.seeds, args.tools)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    csv = args.results_dir / "results.csv"
    table[list(RESULT_COLUMNS)].to_csv(csv.with_name("results.csv.tmp"), index=False)  # exactly mihd evaluate's columns
    os.replace(csv.with_name("results.csv.tmp"), csv)
    write_markdown(table, args.results_dir / "results.md", command, args.out_dir)
    if (table["status"] == "ok").any():
        try:
            plot_ari(table, args.results_dir / "ari_by_method.png")
        except Exception as e:
            print(f"ari_by_method.png not written ({type(e).__name__}: {e})", file=sys.stderr)
    print(table[["slice", "fusion", "cluster", "seed", "status", "ari_before", "ari_after", "nmi_after", "wall_seconds"]].to_string())


if __name__ == "__main__":
    main()
