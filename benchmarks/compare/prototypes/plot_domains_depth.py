"""Truth, default domains and log10 UMI side by side on one DLPFC slice, plus the confusion table and mean
depth per domain:  OMP_NUM_THREADS=1 python benchmarks/compare/prototypes/plot_domains_depth.py 151676
"""
import logging, warnings, numpy as np, pandas as pd, sys
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
from mihd._config import compose
from mihd.train import train
d = sys.argv[1]
cfg = compose("train", ["data=dlpfc", f"data.slice={d}", "fusion=gated", "seed=0", "cache_dir=/tmp/mihd_proto/cache", "trainer.progress_bar=false"])
r = train(cfg, write=False); ad = r.adata
xy = ad.obsm["spatial"]; truth = ad.obs[cfg.data.annotation_key].astype(str)
ours = ad.obs[r.refined_key].astype(int)
depth = np.log10(np.asarray(ad.X.sum(1)).ravel())
fig, ax = plt.subplots(1, 3, figsize=(18, 6))
for a, (c, t) in zip(ax, [(pd.Categorical(truth).codes, "truth"), (ours, "ours"), (depth, "log10 UMI")]):
    a.scatter(xy[:, 0], -xy[:, 1], c=c, s=4, cmap="tab10" if t != "log10 UMI" else "viridis"); a.set_title(t); a.set_aspect("equal")
plt.savefig(f"benchmarks/compare/diagnosis_{d}.png", dpi=60)
print(pd.crosstab(truth, ours))
print(pd.Series(depth).groupby(ours.to_numpy()).mean())
