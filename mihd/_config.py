"""Finding and composing mihd's Hydra configs (shared by ``mihd train`` and ``mihd evaluate``).

Configs come from the ``configs/`` folder shipped inside the package (or the
repository's ``configs/`` in a source checkout), composed with Hydra's compose API.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["config_dir", "compose", "DLPFC_DOMAINS"]

# Published layer counts of the 12 DLPFC slices (Maynard et al. 2021): slices 151669-151672
# lack Layer_1/Layer_2. Metadata of the dataset, used for K like every peer does.
DLPFC_DOMAINS = {s: 5 for s in ("151669", "151670", "151671", "151672")}


def _dlpfc_n_domains(slice_id) -> int:
    return DLPFC_DOMAINS.get(str(slice_id), 7)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("mihd_dlpfc_n_domains"):
        OmegaConf.register_new_resolver("mihd_dlpfc_n_domains", _dlpfc_n_domains)


def config_dir() -> Path:
    """The Hydra config root: inside the installed package, else the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"mihd's configs/ folder was not found next to {here}; reinstall the package.")


def _rewrite_fusion_override(overrides: list[str], cdir: Path) -> list[str]:
    """``fusion=<name>`` for a registered fusion that ships no YAML becomes ``fusion.name=<name>``.

    Adding a fusion is one Python file; its config file is optional.
    """
    from .fusion import fusion_info

    out = []
    for o in overrides:
        if o.startswith("fusion="):
            name = o.split("=", 1)[1]
            fusion_info(name)  # unknown -> KeyError listing the registered fusions
            if not (cdir / "fusion" / f"{name}.yaml").is_file():
                out += [f"fusion.name={name}", "fusion.options={}"]
                continue
        out.append(o)
    return out


def compose(task: str, overrides: list[str] | None = None, *, stamp_run_dir: bool = True):
    """Compose the ``task`` config (``train`` or ``evaluate``) with command-line style overrides.

    For ``train`` without a ``run_dir``, one is made from data, fusion, seed and the time
    (unless ``stamp_run_dir=False``). The result is resolved (interpolations filled in).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    _register_resolvers()
    cdir = config_dir()
    overrides = _rewrite_fusion_override(list(overrides or []), cdir)
    with initialize_config_dir(config_dir=str(cdir), version_base="1.3", job_name=f"mihd_{task}"):
        cfg = hydra_compose(config_name=task, overrides=overrides)
    if task == "train" and stamp_run_dir and cfg.get("run_dir") is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with open_dict(cfg):
            cfg.run_dir = f"outputs/{cfg.data.name}/{cfg.fusion.name}/seed{cfg.seed}-{stamp}"
    OmegaConf.resolve(cfg)
    return cfg
