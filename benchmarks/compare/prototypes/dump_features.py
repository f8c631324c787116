import sys, os, numpy as np, warnings, logging
sys.path.insert(0, os.path.dirname(__file__)); import variants
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from mihd._config import compose
from mihd.train._runner import load_slice, prepare_slice_inputs, spatial_neighbors, annotation_column, _standardise
from mihd.graph import knn_indices
DS = {"151673": ["data=dlpfc", "data.slice=151673"], "151674": ["data=dlpfc", "data.slice=151674"],
      "151675": ["data=dlpfc", "data.slice=151675"], "151676": ["data=dlpfc", "data.slice=151676"],
      "BZ5": ["data=starmap_mpfc", "data.slice=BZ5"], "BZ9": ["data=starmap_mpfc", "data.slice=BZ9"], "BZ14": ["data=starmap_mpfc", "data.slice=BZ14"]}
for d in sys.argv[1].split(","):
    cfg = compose("train", DS[d] + ["cache_dir=" + os.environ.get("CACHE", "/tmp/mihd_proto/cache"), "encoder.image=none"] + sys.argv[2:])
    adata = load_slice(cfg["data"])
    p = prepare_slice_inputs(cfg, adata)
    k = spatial_neighbors(cfg, adata)
    nb = knn_indices(p.coords, k, include_self=True)
    truth = adata.obs[annotation_column(cfg, adata)].astype(str).to_numpy()
    depth = np.asarray(adata.X.sum(1)).ravel()
    g = _standardise(p.features)["gene"]
    np.savez(f"{os.environ.get('EXP', '/tmp/exp')}/{d}{os.environ.get('SUF', '')}.npz", pcs=g, nb=nb, coords=p.coords, truth=truth, depth=depth, K=cfg["data"]["n_domains"])
    print(d, g.shape, k, cfg["data"]["n_domains"])
