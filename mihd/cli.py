"""``mihd`` console script: thin Hydra-composed entry points that call ``train(cfg)``.

Usage::

    mihd train [override ...]       e.g. mihd train fusion=concat seed=1 trainer.max_epochs=50
    mihd train --cfg                print the composed config and exit
    mihd fusions                    list registered fusions and whether they need coordinates

Configs come from the ``configs/`` folder shipped inside the package (or the
repository's ``configs/`` in a source checkout), composed with Hydra's compose API.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
import time
from pathlib import Path

log = logging.getLogger("mihd")

USAGE = __doc__


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


def compose(task: str, overrides: list[str] | None = None):
    """Compose the ``task`` config (``train``) with command-line style overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    cdir = config_dir()
    overrides = _rewrite_fusion_override(list(overrides or []), cdir)
    with initialize_config_dir(config_dir=str(cdir), version_base="1.3", job_name=f"mihd_{task}"):
        cfg = hydra_compose(config_name=task, overrides=overrides)
    if task == "train" and cfg.get("run_dir") is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with open_dict(cfg):
            cfg.run_dir = f"outputs/{cfg.data.name}/{cfg.fusion.name}/seed{cfg.seed}-{stamp}"
    OmegaConf.resolve(cfg)
    return cfg


def _cmd_train(args: list[str]) -> int:
    from omegaconf import OmegaConf

    if "--cfg" in args:
        print(OmegaConf.to_yaml(compose("train", [a for a in args if a != "--cfg"])))
        return 0
    cfg = compose("train", args)
    from .train import train
    from .train._outputs import summary_table

    result = train(cfg)
    print(summary_table(result.metrics))
    print(f"outputs: {result.run_dir}")
    return 0


def _cmd_fusions(args: list[str]) -> int:
    from .fusion import fusion_info, list_fusions

    for name in list_fusions():
        info = fusion_info(name)
        flags = ("needs coords" if info.needs_coords else "") + ("" if info.trainable else " not trained")
        print(f"{name:<20}{flags.strip():<26}{info.summary}")
    return 0


COMMANDS = {"train": _cmd_train, "fusions": _cmd_fusions}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mihd`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"mihd: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Lightning's start-up banner and tips bury the useful lines; keep its warnings.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return COMMANDS[cmd](rest)
    except (
        KeyError, ValueError, TypeError, OSError, ImportError, RuntimeError, HydraException, OmegaConfBaseException
    ) as err:
        # Configuration and data errors are for people: one clear line, no traceback
        # (MIHD_DEBUG=1 shows it, for when the error is a bug of ours).
        if os.environ.get("MIHD_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"mihd {cmd}: error: {msg}\n(set MIHD_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
