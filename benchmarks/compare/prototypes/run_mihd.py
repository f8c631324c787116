"""In-process loop of `mihd train` over development datasets x seeds (scratch runner of the research log).

    OMP_NUM_THREADS=1 PYTHONPATH=benchmarks/compare/prototypes python benchmarks/compare/prototypes/run_mihd.py \
        fusions=gated seeds=0,1,2 ds=151673,151674,151675,151676,BZ5,BZ9,BZ14 [train overrides ...]

Env CACHE: prepared-feature cache folder (use one per monkeypatched variant, see variants.py).
"""
import sys, logging, warnings, time
import numpy as np
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from mihd._config import compose
import variants  # noqa: F401  (monkeypatches selected by environment variables)
from mihd.train import train
a = dict(x.split("=", 1) for x in sys.argv[1:] if "=" in x and x.split("=")[0] in ("fusions", "seeds", "ds", "tag"))
over = [x for x in sys.argv[1:] if x.split("=")[0] not in ("fusions", "seeds", "ds", "tag")]
DS = {"151673": ["data=dlpfc", "data.slice=151673"], "151674": ["data=dlpfc", "data.slice=151674"],
      "151675": ["data=dlpfc", "data.slice=151675"], "151676": ["data=dlpfc", "data.slice=151676"],
      "BZ5": ["data=starmap_mpfc", "data.slice=BZ5"], "BZ9": ["data=starmap_mpfc", "data.slice=BZ9"], "BZ14": ["data=starmap_mpfc", "data.slice=BZ14"]}
ds = a.get("ds", "151673,151674,151675,151676").split(",")
for fusion in a.get("fusions", "gated").split(","):
    allm = []
    for d in ds:
        vals = []
        for s in a.get("seeds", "0").split(","):
            t = time.time()
            cfg = compose("train", DS[d] + over + [f"fusion={fusion}", f"seed={s}", "cache_dir=" + __import__("os").environ.get("CACHE", "/tmp/mihd_proto/cache"), "trainer.progress_bar=false"])
            r = train(cfg, write=False)
            v = r.metrics["scores"]["after_refinement"]["ari"]; vals.append(v)
            print(f"  {a.get('tag','')} {fusion} {d} seed{s} ari {v:.3f} raw {r.metrics['scores']['before_refinement']['ari']:.3f} {time.time()-t:.0f}s", flush=True)
        print(f"{a.get('tag','')} {fusion} {d} mean {np.mean(vals):.3f} sd {np.std(vals, ddof=1) if len(vals)>1 else 0:.3f}", flush=True)
        allm.append(np.mean(vals))
    print(f"{a.get('tag','')} {fusion} {over} ALL mean {np.mean(allm):.3f} worst {np.min(allm):.3f}", flush=True)
