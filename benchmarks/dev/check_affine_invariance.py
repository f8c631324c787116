"""Is the tied GMM's choice of partition changed by a linear map of its input? (label-free)

On one development slice's smoothed gene PCs (the floor's input, as in `diagnose_clustering.py`),
compares the tied GMM's partition of X with its partition of X A^T for a random 30 x 30 matrix A:
started from the mapped fit (same start) and from the default 10 k-means starts; prints the ARI
between the partitions and the Jacobian-adjusted log-likelihoods. No annotation is read.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/check_affine_invariance.py [--slice 151507]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from diagnose_clustering import load  # noqa: E402
from semisynthetic import DEV_SLICES  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MIHD_DATA_DIR", str(HERE.parents[2] / "shared" / "data")))
    ap.add_argument("--slice", default="151507", choices=DEV_SLICES)
    ap.add_argument("--preset", default="v3")
    args = ap.parse_args(argv)
    d = load(Path(args.data_dir), args.slice, args.preset)
    x, k = d["gene"], d["k"]
    a = np.random.default_rng(0).standard_normal((x.shape[1], x.shape[1]))
    xa = x @ a.T
    log_jac = np.log(abs(np.linalg.det(a)))

    def tied(**kw):
        return GaussianMixture(k, covariance_type="tied", random_state=0, **kw)

    fit = tied(n_init=1).fit(x)
    mapped = tied(n_init=1, means_init=fit.means_ @ a.T, precisions_init=np.linalg.inv(a @ fit.covariances_ @ a.T)).fit(xa)
    print(f"same start, mapped input: ARI between partitions {adjusted_rand_score(fit.predict(x), mapped.predict(xa)):.3f}")
    g, ga = tied(n_init=10).fit(x), tied(n_init=10).fit(xa)
    print(
        f"10 k-means starts each: ARI between partitions {adjusted_rand_score(g.predict(x), ga.predict(xa)):.3f}; "
        f"log-likelihood per spot {g.score(x):.3f} (X) vs {ga.score(xa) + log_jac:.3f} (X A^T, Jacobian-adjusted)"
    )


if __name__ == "__main__":
    main()
