"""``train(cfg)``: one slice in, a trained fusion, clustered and refined domains, scores out.

A plain function (lightning-hydra-template style) so that notebooks and tests call
it directly; ``mihd train`` is a thin Hydra wrapper around it. Every check on the
configuration and the data runs before any long computation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._config import check_config_keys, check_output_dir
from ..cluster import SPATIAL_TRENDS

# torch, scanpy and Lightning are imported inside the functions that use them: a config error
# comes back before they load (issue 17: in well under 2 s).
log = logging.getLogger(__name__)

__all__ = ["train", "RunResult", "load_slice", "validate_config", "check_config", "prepare_slice_inputs",
           "peak_memory_mib"]

# Fused-embedding width when a config has no `out_dim` (configs/train.yaml sets the same value).
DEFAULT_OUT_DIM = 32


@dataclass
class RunResult:
    """What ``train`` returns: the annotated AnnData, the scores and where outputs went."""

    adata: object
    metrics: dict
    run_dir: Path | None
    embedding_key: str
    label_key: str
    refined_key: str


# --------------------------------------------------------------------------- config


MISSING = "???"  # OmegaConf's mark of a value the user must give (e.g. data.path of data=visium)


def _cfg_get(cfg, dotted: str, default=None):
    from omegaconf.errors import MissingMandatoryValue

    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return default
        except MissingMandatoryValue:
            return MISSING
    return default if node is None else node


def _to_dict(node) -> dict:
    if node is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(node)


PROGRESS_BAR = (True, False, "auto")


def check_config(cfg) -> int:
    """The checks that need no registry, data or heavy import: every key known, every number a number.

    Returns ``data.n_domains``. Raises ``ValueError`` naming the key and what would work.
    """
    check_config_keys(cfg)
    if not _cfg_get(cfg, "fusion.name"):
        raise ValueError("no fusion given; use fusion=<name>.")
    _positive_int(cfg, "seed", minimum=0, default=0, hint="the seed of the model, batch order and clustering, e.g. seed=0")
    n_domains = _positive_int(cfg, "data.n_domains", minimum=2, hint="the number of spatial domains K to find, e.g. data.n_domains=7")
    _positive_int(cfg, "trainer.max_epochs", minimum=1, default=200)
    _positive_int(cfg, "trainer.min_steps", minimum=0, default=0, hint="optimiser steps at least, whatever the slice size")
    if _cfg_get(cfg, "trainer.batch_size") is not None:
        _positive_int(cfg, "trainer.batch_size", minimum=1, hint="spots per step, or null for the full slice")
    _positive_int(cfg, "out_dim", minimum=2, default=DEFAULT_OUT_DIM)
    if _cfg_get(cfg, "data.path") == MISSING:
        raise ValueError(f"data.path is required for data={_cfg_get(cfg, 'data.name', '?')}: give the slice, e.g. "
                         "data.path=/path/to/spaceranger/outs or data.path=slice.h5ad.")
    progress = _cfg_get(cfg, "trainer.progress_bar", "auto")
    if progress not in PROGRESS_BAR:
        raise ValueError(f"trainer.progress_bar={progress!r}; use auto (only when the output is a terminal), true or false.")
    key = _cfg_get(cfg, "data.annotation_key")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"data.annotation_key={key!r}: give an obs column name, or null (ground_truth when present).")
    k_spatial = _spatial_neighbors_setting(cfg)
    _unannotated_labels(cfg)
    if _cfg_get(cfg, "spatial.context_neighbors") is not None:
        context = _positive_int(cfg, "spatial.context_neighbors", minimum=2, hint="a wider neighbourhood than spatial.n_neighbors, e.g. 18, or null")
        # with auto, the neighbourhood is at least 6 (mihd.graph.neighbors_for_depth's minimum); the run checks the rest
        if context <= (6 if k_spatial == "auto" else k_spatial):
            raise ValueError(
                f"spatial.context_neighbors={context} must be larger than spatial.n_neighbors={k_spatial} "
                "(it adds a wider neighbourhood mean beside the smoothed genes), or null to leave it out."
            )
    start = _cfg_get(cfg, "cluster.start", "free")
    if start not in CLUSTER_STARTS:
        raise ValueError(f"cluster.start={start!r}; use one of {', '.join(CLUSTER_STARTS)} (inputs: anchor a trained "
                         "fusion's gmm at the partition of its smoothed gene inputs; free: k-means starts).")
    trend = _cfg_get(cfg, "cluster.spatial_trend", "none")
    if trend not in SPATIAL_TRENDS:
        raise ValueError(f"cluster.spatial_trend={trend!r}; use one of {', '.join(SPATIAL_TRENDS)} (linear: the gmm "
                         "shares one linear gradient over the coordinates across domains; none: plain tied gmm).")
    if trend != "none" and _cfg_get(cfg, "cluster.method", "gmm") != "gmm":
        raise ValueError(f"cluster.spatial_trend={trend!r} is a gmm option; with cluster.method="
                         f"{_cfg_get(cfg, 'cluster.method')!r} set cluster.spatial_trend=none or use cluster=gmm.")
    image_weight_setting(cfg)
    _bool_setting(cfg, "encoder.permute_image", False)
    space = _cfg_get(cfg, "cluster.space", "embedding")
    if space not in ("embedding", "reconstruction"):
        raise ValueError(f"cluster.space={space!r}; use 'embedding' or 'reconstruction'.")
    weights = _to_dict(_cfg_get(cfg, "trainer.modality_weights"))
    unknown = sorted(set(weights) - {"gene", "image"})
    if unknown:
        raise ValueError(f"trainer.modality_weights has unknown modalities {unknown}; the modalities are gene and image.")
    image = _cfg_get(cfg, "encoder.image", "stats")
    if image == "precomputed" and _cfg_get(cfg, "encoder.image_options.path", MISSING) == MISSING:
        raise ValueError("encoder=precomputed: encoder.image_options.path is required, the embedding file, e.g. "
                         "encoder.image_options.path=emb.npy (one row per spot, in obs order) or a .csv/.tsv/.parquet "
                         "keyed by barcode.")
    return n_domains


def validate_config(cfg) -> dict:
    """Check names and options against the registries before anything runs.

    Returns the few resolved facts the runner needs (fusion info, cluster method).
    Raises ``ValueError`` / ``KeyError`` whose messages name the option and what would work.
    """
    import inspect

    from .._device import resolve_device
    from ..cluster import check_method
    from ..encoders import get_gene_encoder, get_image_encoder
    from ..fusion import fusion_info

    n_domains = check_config(cfg)
    name = _cfg_get(cfg, "fusion.name")
    info = fusion_info(str(name))  # unknown name -> lists the registered ones
    options = _to_dict(_cfg_get(cfg, "fusion.options"))
    try:
        inspect.signature(info.cls).bind({}, out_dim=1, **options)
    except TypeError:
        accepted = [p for p in inspect.signature(info.cls).parameters if p not in ("dims", "out_dim")]
        raise ValueError(
            f"fusion.options {sorted(options)} do not fit fusion {info.name!r}; it accepts: {', '.join(accepted) or 'none'}."
        ) from None
    method = _cfg_get(cfg, "cluster.method", "gmm")
    check_method(method, _to_dict(_cfg_get(cfg, "cluster.options")))
    gene = _cfg_get(cfg, "encoder.gene", "pca")
    gene_cls = get_gene_encoder(gene)
    gene_options = _to_dict(_cfg_get(cfg, "encoder.gene_options"))
    try:
        inspect.signature(gene_cls).bind(**gene_options)
    except TypeError:
        accepted = [p for p in inspect.signature(gene_cls).parameters if p != "self"]
        hint = (" (encoder=pearson gives it its own gene_options; encoder.gene=pearson keeps pca's)" if gene == "pearson"
                else " (encoder=default resets gene_options; encoder.gene=pca keeps the previous encoder's)")
        raise ValueError(
            f"encoder.gene_options {sorted(gene_options)} do not fit gene encoder {gene!r}; it accepts: {', '.join(accepted)}{hint}."
        ) from None
    gene_cls(**gene_options)  # its own checks of the values (ValueError naming the option), before any data is read
    gene_scaling(cfg)
    image = _cfg_get(cfg, "encoder.image", "stats")
    if image not in (None, "none"):
        # Building the encoder checks its options (e.g. a precomputed file that is missing).
        image_cls = get_image_encoder(image)
        try:
            image_cls(**_to_dict(_cfg_get(cfg, "encoder.image_options")))
        except TypeError as err:
            raise ValueError(f"encoder.image_options do not fit encoder {image!r}: {err}") from None
    resolve_device(_cfg_get(cfg, "trainer.accelerator", "auto"))
    return {"info": info, "method": method, "n_domains": n_domains}


def _spatial_neighbors_setting(cfg):
    """``spatial.n_neighbors``: ``"auto"`` (sized from the data's depth) or a whole number >= 1."""
    if str(_cfg_get(cfg, "spatial.n_neighbors", "auto")).lower() == "auto":
        return "auto"
    return _positive_int(cfg, "spatial.n_neighbors", minimum=1, hint="or auto: pool about 6,000 molecules per neighbourhood")


def show_progress(setting) -> bool:
    """``trainer.progress_bar``: ``auto`` shows Lightning's bar only when stdout is a terminal (a log
    file gets the per-step messages instead of a bar per epoch); ``true`` / ``false`` force it."""
    return bool(sys.stdout.isatty()) if setting == "auto" else bool(setting)


def annotation_column(cfg, adata) -> str | None:
    """The ``obs`` column a run is scored against, checked before any training.

    ``data.annotation_key`` names it; null means ``ground_truth`` when the data has it, else unscored.
    A named column that is absent, or one without a single label, raises ``KeyError`` / ``ValueError``.
    Only the labels' presence is looked at here: they are read for scoring alone, after clustering.
    """
    key = _cfg_get(cfg, "data.annotation_key")
    if key is None:
        if "ground_truth" in adata.obs:
            key = "ground_truth"
        else:
            log.info("no annotation (data.annotation_key=null and no obs['ground_truth']): domains are not scored")
            return None
    if key not in adata.obs:
        columns = [str(c) for c in adata.obs.columns]
        raise KeyError(
            f"data.annotation_key={key!r} is not a column of the data; its obs columns are "
            f"{columns if columns else 'none'}. Name one of them, give data.annotation=<table>, "
            "or data.annotation_key=null to run unscored."
        )
    truth = _truth(cfg, adata, key)
    if not _has_labels(truth):
        raise ValueError(
            f"obs[{key!r}] has no label on any of the {adata.n_obs} spots (all NA"
            f"{' or listed in data.unannotated' if _unannotated_labels(cfg) else ''}); nothing could be scored. "
            "Check the annotation (data.annotation / data.annotation_key), or set data.annotation_key=null to run unscored."
        )
    return key


def _truth(cfg, adata, key: str | None):
    if key is None:
        return None
    truth = adata.obs[key].to_numpy()
    unannotated = _unannotated_labels(cfg)
    if unannotated:
        truth = np.where(np.isin(truth.astype(str), unannotated), None, truth.astype(object))
    return truth


def _has_labels(truth) -> bool:
    from ..metrics import annotated_mask  # the rule scoring uses: None, NaN and the NA strings

    return bool(annotated_mask(truth).any())


def spatial_neighbors(cfg, adata) -> int:
    """The smoothing neighbourhood size of a run: the configured number, or for ``auto``
    `mihd.graph.neighbors_for_depth` of the observations' total counts."""
    setting = _spatial_neighbors_setting(cfg)
    if setting != "auto":
        return min(int(setting), adata.n_obs - 1)
    from ..graph import neighbors_for_depth

    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    return min(neighbors_for_depth(totals), adata.n_obs - 1)


def _unannotated_labels(cfg) -> list[str]:
    """``data.unannotated``: label values scored as unannotated (like NA), e.g. ``[undetermined]``."""
    value = _cfg_get(cfg, "data.unannotated")
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, (str, int)) for v in value):
        raise ValueError(f"data.unannotated={value!r}: give a list of label values, e.g. data.unannotated=[undetermined].")
    return [str(v) for v in value]


def _positive_int(cfg, key: str, *, minimum: int, default=None, hint: str = "") -> int:
    value = _cfg_get(cfg, key, default)
    try:
        number = int(value)
        ok = number == float(value) and number >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{key}={value!r}: expected a whole number >= {minimum}" + (f" ({hint})." if hint else "."))
    return number


# --------------------------------------------------------------------------- data


def load_slice(data_cfg):
    """Read the slice a ``data`` config describes (the bundled example when ``path`` is null), pooled
    into coarse pseudo-spots (`mihd.data.pool_spots`) when ``data.pool`` is set."""
    from ..data import dlpfc_151673, read_slice
    from ..data._pool import pool_options
    from ..data._validate import check_slice

    pool = _cfg_get(data_cfg, "pool")
    pool = pool_options(pool if isinstance(pool, bool) or pool is None else _to_dict(pool))  # checked before reading
    if pool is not None:
        from ..data import pool_spots

        return pool_spots(load_slice({**_to_dict(data_cfg), "pool": None}), **pool)
    path = _cfg_get(data_cfg, "path")
    annotation = _cfg_get(data_cfg, "annotation")
    key = _cfg_get(data_cfg, "annotation_key", "ground_truth")  # where a table's labels go
    if path is None:
        example = _cfg_get(data_cfg, "example")
        if example == "synthetic":
            return _synthetic(data_cfg)
        if example not in (None, "dlpfc_151673"):
            raise ValueError(
                f"data.example={example!r} is unknown; use dlpfc_151673 (the bundled slice) or synthetic "
                "(mihd.datasets.synthetic_slice, e.g. data=synthetic data.n_cells=1000000)."
            )
        return dlpfc_151673()
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        root = _cfg_get(data_cfg, "root")
        where = (f" (data.root={root}; set MIHD_DATA_DIR to the folder that holds {Path(str(root)).name}/, or give data.root=...)"
                 if root else "")
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist{where}; give a Space Ranger output folder "
            "(filtered_feature_bc_matrix.h5 + spatial/), a Visium HD outs/ or binned_outputs/square_NNNum/ "
            "folder, a Xenium output folder (cell_feature_matrix.h5 + cells.parquet) or an .h5ad file."
        )
    kwargs = {}
    if path.is_dir():
        kwargs = {"annotation": annotation, "annotation_key": key}
        if _cfg_get(data_cfg, "fullres_image"):
            kwargs["fullres_image"] = _cfg_get(data_cfg, "fullres_image")
        if _cfg_get(data_cfg, "bin_size") is not None:  # Visium HD: 2, 8 or 16 µm bins
            kwargs["bin_size"] = int(_cfg_get(data_cfg, "bin_size"))
        if _cfg_get(data_cfg, "load_morphology"):  # Xenium: a bounded level of the DAPI image
            kwargs["load_morphology"] = True
    adata = read_slice(path, **kwargs)
    check_slice(adata, source=f"data.path={path}")
    if path.is_file() and annotation:
        from ..data import add_annotation

        add_annotation(adata, annotation, key=key)
    return adata


def _synthetic(data_cfg):
    """A generated slice: ``data.n_cells`` cells, ``data.n_domains`` domains, ``data.generator`` options."""
    import inspect

    from ..data import synthetic_slice

    options = _to_dict(_cfg_get(data_cfg, "generator"))
    accepted = set(inspect.signature(synthetic_slice).parameters) - {"n_spots", "n_domains"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"data.generator has unknown option(s) {unknown}; synthetic_slice accepts: {', '.join(sorted(accepted))}.")
    return synthetic_slice(int(_cfg_get(data_cfg, "n_cells", 10000)), n_domains=int(_cfg_get(data_cfg, "n_domains")), **options)


def _neighbourhood_mean(x: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Mean of ``x`` over each row of the (N, k+1) neighbour index; O(N F) extra memory."""
    out = np.zeros_like(x, dtype=np.float64)
    for j in range(neighbors.shape[1]):
        out += x[neighbors[:, j]]
    return (out / neighbors.shape[1]).astype(np.float32)


def _normalise_coords(xy: np.ndarray) -> np.ndarray:
    """Centre and scale coordinates to unit spread so positional encodings are resolution-free."""
    xy = xy - xy.mean(0)
    return (xy / (xy.std(0).max() + 1e-12)).astype(np.float32)


GENE_SCALINGS = ("profile", "zscore")
CLUSTER_STARTS = ("inputs", "free")


def gene_scaling(cfg) -> str:
    """How the runner scales the gene features: ``encoder.feature_scaling`` when the config sets it
    (so it is part of every run's key), else the gene encoder's ``feature_scaling`` class attribute,
    else ``"profile"``."""
    from ..encoders import get_gene_encoder

    name = _cfg_get(cfg, "encoder.gene", "pca")
    scaling = _cfg_get(cfg, "encoder.feature_scaling")
    if scaling is None:
        scaling = getattr(get_gene_encoder(name), "feature_scaling", "profile")
    if scaling not in GENE_SCALINGS:
        raise ValueError(f"encoder.feature_scaling={scaling!r} (gene encoder {name!r}); use one of {', '.join(GENE_SCALINGS)}.")
    return scaling


def _standardise(features: dict[str, np.ndarray], scaling: str = "profile") -> dict[str, np.ndarray]:
    """Per-modality scaling. Genes: ``"profile"`` keeps the PCA variance profile (scaled so PC1 has
    sd 1), ``"zscore"`` gives every component sd 1 (for encoders whose spectrum is so steep that a
    reconstruction loss would see little but PC1; a gene encoder declares it as ``feature_scaling``).
    Image features are z-scored since their units differ."""
    if scaling not in GENE_SCALINGS:
        raise ValueError(f"gene feature scaling {scaling!r}: use one of {', '.join(GENE_SCALINGS)}.")
    out = {}
    for m, x in features.items():
        x = x - x.mean(0)
        if m == "gene" and scaling == "profile":
            out[m] = (x / (x[:, 0].std() + 1e-8)).astype(np.float32)
        else:
            out[m] = (x / (x.std(0) + 1e-8)).astype(np.float32)
    return out



def prepare_slice_inputs(cfg, adata):
    """Gene and image features of ``adata`` as the ``encoder`` config asks, from the cache when there.

    Every run of a slice with the same encoder settings shares one preparation (the cache
    key is the data fingerprint plus every encoder parameter, never the fusion or the seed);
    ``mihd evaluate`` calls this once per slice and encoder before launching its runs.
    """
    from ..encoders import get_image_encoder
    from ..pp import prepare_inputs, slide_images

    image = _cfg_get(cfg, "encoder.image", "stats")
    if image not in (None, "none") and getattr(get_image_encoder(image), "uses_patches", True):
        if not slide_images(adata):
            log.warning("the data has no H&E image: training on genes only (encoder.image=none)")
            image = None
    cache_dir = _cfg_get(cfg, "cache_dir")
    return prepare_inputs(
        adata,
        gene=_cfg_get(cfg, "encoder.gene", "pca"),
        # The encoder has its own seed (default 0), independent of the run seed, so every
        # seed of a slice shares one cached preparation.
        gene_options={"seed": 0, **_to_dict(_cfg_get(cfg, "encoder.gene_options"))},
        image=image,
        image_options=_to_dict(_cfg_get(cfg, "encoder.image_options")),
        patch_context=float(_cfg_get(cfg, "encoder.patch_context", 2.0)),
        patch_px=int(_cfg_get(cfg, "encoder.patch_px", 16)),
        cache_dir=os.path.expanduser(str(cache_dir)) if cache_dir else None,
    )


def peak_memory_mib(device=None) -> dict:
    """Peak resident memory of this process so far (and of the CUDA allocator when used), MiB."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mib": round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out

# --------------------------------------------------------------------------- run


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fit(plan, dm, cfg, device, run_dir: Path | None, progress: bool) -> dict:
    import pytorch_lightning as pl

    max_epochs = int(_cfg_get(cfg, "trainer.max_epochs", 200))
    steps_per_epoch = -(-dm.n // dm.batch_size)
    min_steps = int(_cfg_get(cfg, "trainer.min_steps", 0))
    if steps_per_epoch * max_epochs < min_steps:
        # A small slice (a legacy-ST section of a few hundred spots) has one step per epoch: train
        # for steps, not epochs (benchmarks/image/README.md: 60 steps left the decoded image underfit).
        max_epochs = -(-min_steps // steps_per_epoch)
        log.info("%d spots make %d step(s) per epoch: %d epochs for trainer.min_steps=%d", dm.n, steps_per_epoch,
                 max_epochs, min_steps)
    callbacks, logger = [], False
    ckpt = None
    if run_dir is not None:
        from pytorch_lightning.callbacks import ModelCheckpoint

        ckpt = ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), filename="last", save_top_k=1, monitor=None, enable_version_counter=False
        )
        callbacks.append(ckpt)
    accelerator = {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")
    log.info("training %s for %d epochs on %s%s", _cfg_get(cfg, "fusion.name"), max_epochs, device.type,
             "" if progress else " (no progress bar: stdout is not a terminal; trainer.progress_bar=true forces it)"
             if _cfg_get(cfg, "trainer.progress_bar", "auto") == "auto" else "")
    t0 = time.perf_counter()
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=1,
            logger=logger,
            callbacks=callbacks,
            enable_checkpointing=ckpt is not None,
            enable_progress_bar=progress,
            enable_model_summary=False,
            deterministic=bool(_cfg_get(cfg, "trainer.deterministic", True)),
            log_every_n_steps=max(1, min(50, max_epochs)),
            gradient_clip_val=_cfg_get(cfg, "trainer.gradient_clip_val", 1.0),
            default_root_dir=str(run_dir) if run_dir else None,
        )
        trainer.fit(plan, datamodule=dm)
    out = {"epochs": int(trainer.current_epoch), "train_seconds": round(time.perf_counter() - t0, 2)}
    out["final_loss"] = float(trainer.callback_metrics.get("loss", float("nan")))
    log.info("trained in %.1f s (final loss %.4g)", out["train_seconds"], out["final_loss"])
    if ckpt is not None and ckpt.best_model_path:
        out["checkpoint"] = str(Path(ckpt.best_model_path).resolve())
    return out


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up banner ("GPU available", "Tip: ...") buries the useful lines, in the
    Python API as in the CLI; its warnings stay. The levels are restored afterwards."""
    import warnings

    names = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
             "lightning_fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def train(cfg, *, adata=None, progress: bool | None = None, write: bool = True) -> RunResult:
    """Train a fusion on one slice, cluster, refine, score and write the outputs.

    Parameters
    ----------
    cfg
        A config with the groups ``data``, ``encoder``, ``fusion``, ``cluster``,
        ``trainer`` and top-level ``seed``, ``out_dim``, ``spatial``, ``refine``,
        ``run_dir``, ``cache_dir`` (see ``configs/train.yaml``); an OmegaConf
        DictConfig or nested dicts.
    adata
        Use this AnnData instead of reading ``cfg.data`` (notebooks).
    progress
        Show Lightning's progress bar (default: ``cfg.trainer.progress_bar``).
    write
        Write the run folder (``.h5ad``, ``metrics.json``, config, PNG, checkpoint).

    Returns
    -------
    RunResult
        ``adata`` gains ``obsm["X_mihd_<fusion>"]``, ``obs["mihd_<fusion>"]`` (domains),
        ``obs["mihd_<fusion>_refined"]`` and ``uns["mihd"]`` (params, scores).
    """
    t_start = time.perf_counter()
    check_config(cfg)  # keys and values: before any heavy import
    run_dir = Path(str(_cfg_get(cfg, "run_dir"))) if write and _cfg_get(cfg, "run_dir") else None
    if run_dir is not None:
        check_output_dir(run_dir, "run_dir")  # before the data is read, not after training
        if (run_dir / "metrics.json").exists() and not bool(_cfg_get(cfg, "overwrite", False)):
            raise FileExistsError(
                f"run_dir={str(run_dir)!r} already holds a finished run (metrics.json); choose another "
                "run_dir, or pass overwrite=true to replace it."
            )

    import torch

    from .._device import resolve_device
    from ..cluster import cluster_embedding, gmm_from_labels, gmm_spatial_trend
    from ..data._validate import check_slice
    from ..fusion import forward_fusion
    from ..graph import knn_indices
    from ..joint import joint_mixture
    from ..metrics import score_labels
    from ..refine import refine_labels
    from ._datamodule import SpotDataModule
    from ._plan import FusionTrainingPlan

    checked = validate_config(cfg)
    info, method, n_domains = checked["info"], checked["method"], checked["n_domains"]
    seed = int(_cfg_get(cfg, "seed", 0))
    device = resolve_device(_cfg_get(cfg, "trainer.accelerator", "auto"))
    progress = show_progress(_cfg_get(cfg, "trainer.progress_bar", "auto")) if progress is None else progress

    if adata is None:
        t0 = time.perf_counter()
        log.info("reading %s", _cfg_get(cfg, "data.path") or f"the {_cfg_get(cfg, 'data.name', 'bundled')} slice")
        adata = load_slice(cfg["data"])
        log.info("read %d spots x %d genes in %.1f s", adata.n_obs, adata.n_vars, time.perf_counter() - t0)
    else:
        check_slice(adata, source="the AnnData given to train()")
    has_coords = "spatial" in adata.obsm
    if info.needs_coords and not has_coords:
        raise ValueError(
            f"fusion {info.name!r} needs spatial coordinates, but the data has no obsm['spatial'] "
            f"(obsm keys: {list(adata.obsm.keys())}). Use a fusion that does not need them: "
            f"{', '.join(n for n in _registered(needs_coords=False))}."
        )
    truth_key = annotation_column(cfg, adata)
    if n_domains >= adata.n_obs:
        raise ValueError(f"data.n_domains={n_domains} must be smaller than the number of spots ({adata.n_obs}).")
    if run_dir is not None and (run_dir / "metrics.json").exists():
        (run_dir / "metrics.json").unlink()  # overwrite=true; its presence must keep meaning "finished"

    # ---- prepared inputs (cached per slice and encoder parameters)
    t0 = time.perf_counter()
    log.info("preparing features (gene encoder %s, image encoder %s)", _cfg_get(cfg, "encoder.gene", "pca"),
             _cfg_get(cfg, "encoder.image", "stats"))
    prepared = prepare_slice_inputs(cfg, adata)
    prep_seconds = time.perf_counter() - t0
    log.info("features %s in %.1f s: %s", "loaded from the cache" if prepared.meta.get("cache_hit") else "computed",
             prep_seconds, ", ".join(f"{m} {x.shape[1]}" for m, x in prepared.features.items()))
    depth = _depth_shares(prepared.features["gene"], adata)
    features = _standardise(prepared.features, gene_scaling(cfg))
    if _bool_setting(cfg, "encoder.permute_image", False) and "image" in features:
        # A null control (benchmarks/image): each spot gets another spot's image features, fixed permutation.
        features["image"] = features["image"][np.random.default_rng([0, adata.n_obs]).permutation(adata.n_obs)]
        log.info("encoder.permute_image=true: image features permuted across spots (a null control)")

    # ---- spatial neighbours for input smoothing (cKDTree, or the grid engine at HD scale)
    k_spatial = spatial_neighbors(cfg, adata)
    neighbors = knn_indices(prepared.coords, k_spatial, include_self=True) if has_coords else None
    smooth = bool(_cfg_get(cfg, "spatial.smooth_inputs", True)) and neighbors is not None
    if smooth:
        # Neighbourhood-mean inputs (the BANKSY / "averaged over spatial neighbours" prior),
        # computed O(N k) from the (N, k+1) index, identical for every fusion.
        unsmoothed_gene = features["gene"]
        features = {m: _neighbourhood_mean(x, neighbors) for m, x in features.items()}
        context_k = _cfg_get(cfg, "spatial.context_neighbors")
        if context_k is not None and int(context_k) <= k_spatial:
            raise ValueError(
                f"spatial.context_neighbors={context_k} must be larger than the smoothing neighbourhood "
                f"({k_spatial} here: spatial.n_neighbors={_cfg_get(cfg, 'spatial.n_neighbors')}); use a larger number or null."
            )
        if context_k is not None:
            # Multi-scale context: the gene mean over a wider neighbourhood stacked beside the
            # 6-NN mean. A tied GMM is blind to linear maps of its input; a second scale is new
            # information (benchmarks/dev/README.md, "Multi-scale context").
            wide = knn_indices(prepared.coords, min(int(context_k), adata.n_obs - 1), include_self=True)
            features["gene"] = np.hstack([features["gene"], _neighbourhood_mean(unsmoothed_gene, wide)])
    # ---- how much the image counts (mihd.joint): from the agreement of each modality's own domains
    gene_partition, image_info = None, None
    cluster_options = _to_dict(_cfg_get(cfg, "cluster.options"))
    gmm_options = cluster_options if method == "gmm" else {}
    if "image" in features and info.trainable:
        features, gene_partition, image_info = _weigh_image(cfg, features, n_domains, seed, gmm_options)
    dims = {m: int(x.shape[1]) for m, x in features.items()}
    coords = _normalise_coords(prepared.coords) if has_coords else None
    graph_neighbors = neighbors[:, 1:] if info.needs_neighborhood else None

    # ---- model
    _seed_everything(seed)
    out_dim = int(_cfg_get(cfg, "out_dim", DEFAULT_OUT_DIM))
    fusion = info.cls(dims, out_dim=out_dim, **_to_dict(_cfg_get(cfg, "fusion.options")))
    train_info = {"epochs": 0, "train_seconds": 0.0}
    plan = None
    if info.trainable:
        plan = FusionTrainingPlan(
            fusion,
            dims,
            out_dim=out_dim,
            needs_coords=info.needs_coords,
            modality_weights=_modality_weights(cfg, dims, image_info),
            lr=float(_cfg_get(cfg, "trainer.lr", 2e-3)),
            weight_decay=float(_cfg_get(cfg, "trainer.weight_decay", 1e-4)),
        )
        # A strategy may derive per-spot training data from the features (never from labels).
        aux = fusion.precompute(features, seed) if hasattr(fusion, "precompute") else None
        dm = SpotDataModule(
            features,
            coords=coords,
            neighbors=graph_neighbors,
            aux=aux,
            batch_size=_cfg_get(cfg, "trainer.batch_size"),
            seed=seed,
        )
        train_info = _fit(plan, dm, cfg, device, run_dir, progress)
        plan = plan.to(device).eval()
    else:
        fusion.eval()
        dm = SpotDataModule(features, coords=coords, neighbors=graph_neighbors)

    # ---- embedding (inference in batches)
    decoded = [m for m in ("gene", "image") if plan is not None and m in plan.decoders]
    emb, rec, moved = [], {m: [] for m in decoded}, None
    with torch.no_grad():
        for batch in dm.predict_batches():
            batch = _to_device(batch, device)
            inputs = {m: batch[m] for m in dims}
            z = forward_fusion(fusion, inputs, batch.get("coords"), batch.get("neighborhood"))
            emb.append(z.float().cpu().numpy())
            for m in decoded:
                rec[m].append(plan.decoders[m](z).float().cpu().numpy())
            if "image" in dims:  # ablation: the same spots with the image at its mean (0 after scaling)
                ablated = {**inputs, "image": torch.zeros_like(inputs["image"])}
                neighborhood = batch.get("neighborhood")
                if neighborhood is not None and "image" in neighborhood:
                    neighborhood = {**neighborhood, "image": torch.zeros_like(neighborhood["image"])}
                z0 = forward_fusion(fusion, ablated, batch.get("coords"), neighborhood)
                moved = (0.0 if moved is None else moved) + float(((z - z0).double() ** 2).sum())
    emb = np.concatenate(emb)
    rec = {m: np.concatenate(r) for m, r in rec.items()}
    emb_key = f"X_mihd_{info.name}"
    adata.obsm[emb_key] = emb
    if image_info is not None:
        # the image's share of the fused embedding: the variance of what replacing it by its mean
        # moves, over the embedding's own variance (0: the fusion ignores the image)
        image_info["share"] = (round(moved / max(float(((emb - emb.mean(0)) ** 2).sum()), 1e-12), 4)
                               if moved is not None else 0.0)
    space = _cfg_get(cfg, "cluster.space", "embedding")
    to_cluster = emb
    if space == "reconstruction" and "gene" in rec:
        adata.obsm[f"{emb_key}_reconstruction"] = to_cluster = rec["gene"]
    joint = image_info is not None and image_info["weight"] > 0 and space == "reconstruction" and "image" in rec
    beta = image_info["weight"] if joint else 0.0
    if joint and method != "gmm":  # other methods: the decoded image beside the genes, scaled by its weight
        to_cluster = np.hstack([rec["gene"], np.sqrt(beta) * rec["image"] * rec["gene"].std() / max(rec["image"].std(), 1e-12)])
        joint = False

    # ---- domains, refinement, scores (ground truth is read only here, to score)
    t0 = time.perf_counter()
    log.info("clustering the %s into %d domains (%s)", "reconstruction" if to_cluster is not emb else "embedding",
             n_domains, method)
    start = _cfg_get(cfg, "cluster.start", "free")
    block_kw = {}
    if joint:
        # One mixture over both modalities: domains shared, the image's log-likelihood times its weight.
        # Started at each modality's own partition of the inputs, then EM in the decoded (fused) space.
        project = image_info["_project"]  # the image's leading principal components (mihd.joint.image_components)
        rec_image = project(rec["image"])
        to_cluster = np.hstack([rec["gene"], rec_image])
        block_kw = {"block_sizes": [rec["gene"].shape[1], rec_image.shape[1]], "block_weights": [1.0, beta]}
        n_init = cluster_options.get("n_init") or (JOINT_STARTS if len(to_cluster) <= 50_000 else 3)
        anchor, image_info["start"] = joint_mixture([features["gene"], project(features["image"])], [1.0, beta],
                                                    [gene_partition, image_info["_image_partition"]], n_init=int(n_init),
                                                    seed=seed, return_info=True)
        labels = joint_mixture([rec["gene"], rec_image], [1.0, beta], [anchor], seed=seed)
        start = "inputs (genes and image)"
    elif start == "inputs" and method == "gmm" and plan is not None:
        # Anchor: the partition of the fusion's own (smoothed) gene inputs, then one EM in the fused space.
        anchor = gene_partition if gene_partition is not None else cluster_embedding(
            features["gene"], n_domains, method="gmm", seed=seed, **cluster_options)
        labels = gmm_from_labels(to_cluster, anchor, seed=seed, **cluster_options)
    else:
        start = "free"
        labels = cluster_embedding(to_cluster, n_domains, method=method, seed=seed, **cluster_options)
    trend = _cfg_get(cfg, "cluster.spatial_trend", "none")
    trend_info = None
    if trend == "linear" and method == "gmm" and has_coords:
        # One EM more from that partition, with a linear gradient over the section shared by every domain.
        labels, trend_info = gmm_spatial_trend(to_cluster, prepared.coords, labels, seed=seed, return_info=True,
                                               **cluster_options, **block_kw)
        log.info("spatial trend: %d EM steps, explains %.0f%% of the within-domain variation; domains %s "
                 "(6-NN coherence %.3f -> %.3f)", trend_info["n_iter"], 100 * trend_info["trend_share"],
                 "kept" if trend_info["kept"] else "not kept, it broke their spatial coherence",
                 trend_info["coherence_start"], trend_info["coherence_trend"])
    cluster_seconds = time.perf_counter() - t0
    log.info("clustered in %.1f s", cluster_seconds)
    label_key, refined_key = f"mihd_{info.name}", f"mihd_{info.name}_refined"
    adata.obs[label_key] = _categorical(labels)
    refine_k = _cfg_get(cfg, "refine.n_neighbors", 6)
    refine_r = _cfg_get(cfg, "refine.radius")
    if has_coords:
        refined = refine_labels(prepared.coords, labels, n_neighbors=None if refine_r else int(refine_k), radius=refine_r)
        adata.obs[refined_key] = _categorical(refined)
    else:
        refined = labels
        adata.obs[refined_key] = adata.obs[label_key]
    # Ground truth is read here, after clustering and refinement, and only to score.
    truth = _truth(cfg, adata, truth_key)
    scores = {
        "before_refinement": score_labels(labels, truth, prepared.coords),
        "after_refinement": score_labels(refined, truth, prepared.coords),
    }

    metrics = {
        "fusion": info.name,
        "needs_coords": info.needs_coords,
        "data": _cfg_get(cfg, "data.name", "custom"),
        "n_spots": int(adata.n_obs),
        "n_domains": n_domains,
        "seed": seed,
        "seeded": ["random", "numpy", "torch", "batch order", "cluster random_state"],
        "device": str(device),
        "scores": scores,
        "annotated": truth is not None,
        "timing_seconds": {
            "prepare": round(prep_seconds, 2),
            "train": train_info.get("train_seconds", 0.0),
            "cluster": round(cluster_seconds, 2),
            "total": None,
        },
        "training": train_info,
        # Process peak so far: exact per run when each run is its own process (mihd evaluate).
        "memory": peak_memory_mib(device),
        "prepared": {k: v for k, v in prepared.meta.items() if k != "params"},
        "modalities": dims,
        "spatial_smoothing": smooth,
        "spatial_neighbors": k_spatial,
        "depth_share": depth,
        "cluster_start": start,
        "image": image_info if image_info is None else {k: v for k, v in image_info.items() if not k.startswith("_")},
        "spatial_trend": {"kind": trend if trend_info is not None else "none", **(trend_info or {})},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
    }
    adata.uns["mihd"] = {
        "params": {"fusion": info.name, "seed": seed, "cluster": method, "n_domains": n_domains, "embedding_key": emb_key,
                   "image_weight": None if image_info is None else image_info["weight"]},
        "scores": {k: {m: float(v) for m, v in d.items()} for k, d in scores.items()},
    }
    metrics["timing_seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    result = RunResult(adata, metrics, run_dir, emb_key, label_key, refined_key)
    if run_dir is not None:
        from ._outputs import write_run

        t0 = time.perf_counter()
        write_run(result, cfg, truth_key=truth_key if truth is not None else None)
        log.info("outputs written to %s in %.1f s", run_dir, time.perf_counter() - t0)
    return result


def _depth_shares(gene_pcs: np.ndarray, adata) -> dict:
    """How much the gene features track sequencing depth (`mihd.metrics.depth_share`): ``of_depth``, the R²
    of log total counts on the gene PCs; ``of_pcs``, the share of the PCs' variance that log depth explains."""
    from ..metrics import depth_share

    totals = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    # too few spots to regress on every component, or a zero total: not defined
    if not (totals > 0).all() or gene_pcs.shape[0] != totals.shape[0] or gene_pcs.shape[0] <= gene_pcs.shape[1] + 1:
        return {"of_depth": None, "of_pcs": None}
    return {of_: round(float(depth_share(gene_pcs, totals, of="depth" if of_ == "of_depth" else "pcs")), 4)
            for of_ in ("of_depth", "of_pcs")}


def _bool_setting(cfg, key: str, default: bool) -> bool:
    """A true/false option; anything else (``"no"``, ``1``) is refused, naming the key."""
    value = _cfg_get(cfg, key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r}; use true or false.")
    return value


IMAGE_WEIGHTS = ("auto",)
# k-means starts of the joint mixture up to 50,000 spots (3 above): its optima are many and close on a few
# hundred spots; 10 starts missed the best one on one seed of five of the synthetic legacy-ST slice.
JOINT_STARTS = 30


def image_weight_setting(cfg):
    """``cluster.image_weight``: ``auto`` (from the modalities' agreement, `mihd.joint.image_weight`) or a
    number in [0, 1] (0: the image is left out; 1: it counts as much as the genes)."""
    value = _cfg_get(cfg, "cluster.image_weight", "auto")
    if value in IMAGE_WEIGHTS:
        return value
    try:
        number = float(value)
        ok = not isinstance(value, bool) and 0.0 <= number <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"cluster.image_weight={value!r}; use auto (derived from how far the image's own domains agree "
                         "with the genes') or a number in [0, 1] (0 leaves the image out, 1 weighs it as the genes).")
    return number


def _weigh_image(cfg, features: dict, n_domains: int, seed: int, gmm_options: dict):
    """The image's weight in the joint mixture and the gene inputs' own partition (the clustering's start).

    Returns the features (without the image when its weight is 0, so the run is the genes-only run
    exactly), the gene partition and the record that goes into ``metrics.json["image"]``.
    """
    from ..cluster import cluster_embedding
    from ..joint import image_components, image_weight

    setting = image_weight_setting(cfg)
    project = image_components(features["image"])
    image_in = project(features["image"])
    gene_partition = cluster_embedding(features["gene"], n_domains, method="gmm", seed=seed, **gmm_options)
    # The weight is a property of the slice, not of the run: both partitions it compares are taken at
    # seed 0, so every seed of a slice weighs the image alike.
    image_partition = cluster_embedding(image_in, n_domains, method="gmm", seed=0, **gmm_options)
    gene_at_0 = gene_partition if seed == 0 else cluster_embedding(features["gene"], n_domains, method="gmm", seed=0,
                                                                   **gmm_options)
    beta, agreement = image_weight(gene_at_0, image_partition)
    if setting != "auto":
        beta = float(setting)
    record = {"setting": setting, "agreement": round(agreement, 4), "weight": round(beta, 4), "used": beta > 0,
              "components": project.n_components, "_image_partition": image_partition, "_project": project}
    log.info("image: its own domains agree with the genes' at AMI %.2f -> weight %.2f%s", agreement, beta,
             "" if beta > 0 else " (left out: the run is the genes-only run)")
    if beta <= 0:
        features = {m: x for m, x in features.items() if m != "image"}
        record["share"] = 0.0
    return features, gene_partition, record


def _modality_weights(cfg, dims: dict, image_info: dict | None) -> dict[str, float]:
    """Reconstruction weights per modality: ``trainer.modality_weights``, the image's raised to its
    joint-mixture weight when that is larger (a counted image must be reconstructed, not dropped)."""
    weights = {m: float(w) for m, w in _to_dict(_cfg_get(cfg, "trainer.modality_weights")).items() if m in dims}
    if image_info is not None and "image" in dims:
        weights["image"] = max(weights.get("image", 1.0), float(image_info["weight"]))
        image_info["loss_weight"] = weights["image"]
    return weights


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device)


def _registered(needs_coords: bool) -> list[str]:
    from ..fusion import list_fusions

    return list_fusions(needs_coords=needs_coords)


def _categorical(labels: np.ndarray):
    import pandas as pd

    return pd.Categorical(np.asarray(labels).astype(str), categories=[str(c) for c in sorted(np.unique(labels))])
