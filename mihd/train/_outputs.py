"""The run folder: AnnData, metrics.json, resolved config, domain map, console summary."""

from __future__ import annotations

import logging
from pathlib import Path

from .._io import atomic_write, write_json, write_text

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("ari", "nmi", "ami", "homogeneity", "completeness", "chaos", "pas")


def _config_yaml(cfg) -> str:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # plain dicts from notebooks
        import json

        return json.dumps(cfg, indent=2, default=str)


def _config_dict(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def summary_table(metrics: dict) -> str:
    """A short fixed-width table of scores before / after refinement."""
    rows = metrics["scores"]
    cols = [c for c in SCORE_COLUMNS if c in rows["after_refinement"]]
    head = f"{'':<20}" + "".join(f"{c:>13}" for c in cols)
    lines = [f"mihd train  fusion={metrics['fusion']}  data={metrics['data']}  seed={metrics['seed']}  "
             f"K={metrics['n_domains']}  spots={metrics['n_spots']}", head]
    for stage in ("before_refinement", "after_refinement"):
        lines.append(f"{stage:<20}" + "".join(f"{rows[stage][c]:>13.3f}" for c in cols))
    image = metrics.get("image")
    if image:
        from ..joint import AGREEMENT_RANGE

        why = (f"set by cluster.image_weight={image['setting']}" if image["setting"] != "auto"
               else f"its own domains agree with the genes' at AMI {image['agreement']:.2f}")
        used = f"share of the embedding {image['share']:.2f}" if image["weight"] > 0 else (
            "left out" + (f": below {AGREEMENT_RANGE[0]}" if image["setting"] == "auto" else ""))
        lines.append(f"image: weight {image['weight']:.2f} ({why}; {used})")
    t = metrics["timing_seconds"]
    lines.append(f"time: prepare {t['prepare']} s, train {t['train']} s, cluster {t['cluster']} s, total {t['total']} s")
    return "\n".join(lines)


def domain_figure(result, cfg, *, truth_key: str | None):
    """``domains.png``: domains, refined domains and the ground truth, each titled with its ARI / NMI.

    With a ground truth, every domain takes the colour of the truth label it overlaps most
    (unmatched domains extra colours); without one, the refined domains take the colours of
    the domains they came from.
    """
    from ..pl import spatial_domains
    from ._runner import _unannotated_labels

    scores = result.metrics["scores"]

    def title(name: str, stage: str) -> str:
        s = scores.get(stage, {})
        if not truth_key or s.get("ari") is None:
            return name
        return f"{name}: ARI {s['ari']:.3f}, NMI {s['nmi']:.3f}"

    keys = [result.label_key, result.refined_key] + ([truth_key] if truth_key else [])
    titles = [title("domains", "before_refinement"), title("refined domains", "after_refinement")]
    titles += ["ground truth"] if truth_key else []
    m = result.metrics
    return spatial_domains(
        result.adata, keys, titles=titles, match_to=truth_key or result.label_key,
        unannotated=_unannotated_labels(cfg),
        suptitle=f"{m['fusion']} on {m['data']}, seed {m['seed']}, K = {m['n_domains']}" + (
            ", colours matched to the ground truth" if truth_key else ""),
    )


def write_run(result, cfg, *, truth_key: str | None) -> Path:
    """Write every output of one run into ``result.run_dir``, each file atomically."""
    run_dir = Path(result.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    adata = result.adata
    write_text(run_dir / "config.yaml", _config_yaml(cfg))
    if "spatial" in adata.obsm:
        fig = domain_figure(result, cfg, truth_key=truth_key)
        atomic_write(run_dir / "domains.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        import matplotlib.pyplot as plt

        plt.close(fig)
    # h5ad cannot store nested dicts with None; keep uns JSON-safe. Writing turns string columns into
    # categoricals (as anndata always does) without its "... storing 'x' as categorical" line per column.
    import logging

    from anndata.logging import anndata_logger

    level = anndata_logger.level
    anndata_logger.setLevel(logging.WARNING)
    try:
        atomic_write(run_dir / "adata.h5ad", lambda tmp: adata.write_h5ad(tmp))
    finally:
        anndata_logger.setLevel(level)
    result.metrics["outputs"] = {
        "adata": str(run_dir / "adata.h5ad"),
        "config": str(run_dir / "config.yaml"),
        "domains_png": str(run_dir / "domains.png") if "spatial" in adata.obsm else None,
    }
    result.metrics["config"] = _config_dict(cfg)
    write_json(run_dir / "metrics.json", result.metrics)  # last: its presence marks a finished run
    return run_dir
