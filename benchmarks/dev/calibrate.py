"""Label-free statistics of real and semi-synthetic slices, to calibrate the development set.

No labels are read. For the real slices with counts (151673 / 151674: their counts and
coordinates only) and for development slices of a generator preset, it prints what the
default gene encoder (normalised, log, HVG, PCA) or ``--encoder`` makes of them (`_standardise` so PC1 has sd 1):

- median UMI and detected genes per spot; sd and Moran's I (6-NN graph) of log UMI;
- sd of PCs 1-8 relative to PC1 (the spectrum);
- Moran's I of PCs 1-8 and its mean over PCs 1-5 / 6-10 / 11-20 (spatial structure per PC);
- kurtosis of PCs 1-3 (a domain that a minority of spots has, like white matter, is heavy-tailed;
  a smooth wave is light-tailed) and their correlation with log UMI (which PC is sequencing depth).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/dev/calibrate.py --real 151673 151674 \\
        --preset v3 --slices 151507 151669 151510
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from semisynthetic import dlpfc_geometry_slice, preset_options  # noqa: E402


def moran(x: np.ndarray, graph) -> np.ndarray:
    """Moran's I of each column of ``x`` over a binary spatial graph (scanpy's ``morans_i``)."""
    import scanpy as sc

    return np.atleast_1d(sc.metrics.morans_i(graph, np.asarray(x, dtype=np.float64).T))


def label_free_stats(adata, encoder: str = "default") -> dict:
    from mihd._config import compose
    from mihd.graph import build_spatial_graph
    from mihd.train._runner import _standardise, prepare_slice_inputs

    cfg = compose("train", ["data=h5ad", "data.path=unused", "cache_dir=/tmp/mihd_dev_cache", f"encoder={encoder}", "encoder.image=none"],
                  stamp_run_dir=False)
    prep = prepare_slice_inputs(cfg, adata)
    # PC1-sd scaling whatever the encoder declares: the sd / PC1 ratios need it; Moran's I, kurtosis
    # and correlations do not depend on scale.
    g = _standardise(prep.features)["gene"].astype(np.float64)
    graph = build_spatial_graph(prep.coords, n_neighbors=6, symmetric=False)  # each spot -> its 6 nearest
    umi = np.asarray(adata.X.sum(1)).ravel()
    det = np.asarray((adata.X > 0).sum(1)).ravel()
    lu = np.log(umi)
    mi = moran(g, graph)
    gc = g - g.mean(0)
    return {
        "umi": np.median(umi),
        "genes": np.median(det),
        "log_umi_sd": lu.std(),
        "log_umi_moran": moran(lu[:, None], graph)[0],
        "sd": g.std(0)[:8] / g[:, 0].std(),
        "moran": mi[:8],
        "moran_blocks": (mi[:5].mean(), mi[5:10].mean(), mi[10:20].mean()),
        "kurtosis": (gc[:, :3] ** 4).mean(0) / gc[:, :3].var(0) ** 2,
        "corr_umi": np.array([np.corrcoef(lu, g[:, j])[0, 1] for j in range(3)]),
    }


def show(name: str, s: dict) -> None:
    r = lambda a: " ".join(f"{v:.2f}" for v in np.ravel(a))  # noqa: E731
    print(f"{name:>14}  UMI {s['umi']:.0f}  genes {s['genes']:.0f}  log-UMI sd {s['log_umi_sd']:.2f} Moran {s['log_umi_moran']:.2f}")
    print(f"{'':>14}  PC sd/PC1 [{r(s['sd'])}]  Moran [{r(s['moran'])}]  blocks 1-5/6-10/11-20 [{r(s['moran_blocks'])}]")
    print(f"{'':>14}  kurtosis PC1-3 [{r(s['kurtosis'])}]  corr(log UMI, PC1-3) [{r(s['corr_umi'])}]", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MIHD_DATA_DIR", str(HERE.parents[2] / "shared" / "data")))
    ap.add_argument("--real", nargs="*", default=["151673", "151674"], help="real slices with counts (labels unread)")
    ap.add_argument("--preset", default="v3")
    ap.add_argument("--slices", nargs="*", default=["151507", "151669", "151510"])
    ap.add_argument("--encoder", default="default", help="encoder config group (configs/encoder), e.g. pearson")
    args = ap.parse_args(argv)
    from mihd.data import read_slice

    root = Path(args.data_dir) / "dlpfc"
    for s in args.real:
        show(f"real {s}", label_free_stats(read_slice(root / s), args.encoder))
    for s in args.slices:
        show(f"{args.preset} {s}", label_free_stats(dlpfc_geometry_slice(root / s, seed=0, **preset_options(args.preset)), args.encoder))


if __name__ == "__main__":
    main()
