"""The shared trend on the package's own synthetic slices (4,000 cells, every pattern x hex/cells layout, generator
seeds 0-1, gated): refined ARI with cluster.spatial_trend=none vs linear (DIAGNOSIS.md section 7).
    OMP_NUM_THREADS=1 python benchmarks/compare/prototypes/trend_synthetic.py
"""
import logging, warnings, sys; warnings.filterwarnings('ignore'); logging.disable(logging.WARNING)
import numpy as np
from mihd._config import compose; from mihd.train import train
for pat in ["layers", "blobs", "gradient", "mixed"]:
    for layout in ["hex", "cells"]:
        res = {}
        for t in ["none", "linear"]:
            v = []
            for s in [0, 1]:
                r = train(compose('train', ['data=synthetic', 'data.n_cells=4000', f'data.generator.pattern={pat}', f'data.generator.layout={layout}', f'data.generator.seed={s}', f'cluster.spatial_trend={t}', 'trainer.progress_bar=false', 'cache_dir=null']), write=False)
                v.append(r.metrics['scores']['after_refinement']['ari'])
            res[t] = np.round(v, 3).tolist()
        print(pat, layout, res, flush=True)
