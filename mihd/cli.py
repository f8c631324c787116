"""``mihd`` console script: thin Hydra-composed entry points that call ``train(cfg)``.

Usage::

    mihd train [override ...]       e.g. mihd train fusion=concat seed=1 trainer.max_epochs=50
    mihd train --cfg                print the composed config and exit
    mihd evaluate [override ...]    every fusion x slice x seed of a plan, then a report;
                                    e.g. mihd evaluate 'slices=[dlpfc:151673,dlpfc:151674]' workers=2
    mihd evaluate --plan            check the plan and print it, run nothing
    mihd fusions                    list registered fusions and whether they need coordinates

Configs come from the ``configs/`` folder shipped inside the package (or the
repository's ``configs/`` in a source checkout), composed with Hydra's compose API.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from ._config import compose, config_dir  # noqa: F401  (public: tests and benchmarks compose configs)

log = logging.getLogger("mihd")

USAGE = __doc__.replace("``", "").replace("Usage::", "Usage:")
DEFAULT_EVALUATE_OUT_DIR = "evaluations/default"


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


def _cmd_evaluate(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from .evaluate import evaluate, split_overrides

    plan_only = "--plan" in args or "--dry-run" in args
    args = [a for a in args if a not in ("--plan", "--dry-run")]
    eval_args, train_args = split_overrides(args)
    cfg = compose("evaluate", eval_args)
    if "--cfg" in train_args:
        print(OmegaConf.to_yaml(cfg))
        return 0
    if cfg.out_dir is None:  # the Python API requires it; the command line has a default, and says so
        cfg.out_dir = DEFAULT_EVALUATE_OUT_DIR
        log.info("out_dir not given: using %s", Path(DEFAULT_EVALUATE_OUT_DIR).resolve())
    result = evaluate(cfg, train_args, plan_only=plan_only, command=" ".join(["mihd", "evaluate", *sys.argv[2:]]))
    if plan_only:
        print(result.table())
        return 0
    ok = result.table[result.table["status"] == "ok"]
    print(f"{len(ok)} of {len(result.table)} runs finished; results in {result.plan.out_dir}:")
    for name, path in result.files.items():
        print(f"  {name:<16}{path}")
    if result.n_failed:
        print(f"mihd evaluate: {result.n_failed} run(s) failed; see the summary. Rerun the same command to retry them.",
              file=sys.stderr)
        return 1
    return 0


def _cmd_fusions(args: list[str]) -> int:
    from .fusion import fusion_info, list_fusions

    for name in list_fusions():
        info = fusion_info(name)
        flags = ("needs coords" if info.needs_coords else "") + ("" if info.trainable else " not trained")
        print(f"{name:<20}{flags.strip():<26}{info.summary}")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "fusions": _cmd_fusions}

_KEYS = {
    "train": [
        ("seed=0", "seed of the model, batch order and clustering (recorded in metrics.json)"),
        ("data.n_domains=7", "the number of domains K"),
        ("data.path=PATH", "a Space Ranger / Visium HD / Xenium folder or an .h5ad (with data=visium|visium_hd|xenium|h5ad)"),
        ("data.annotation_key=KEY", "obs column (or table column) with the labels used only to score"),
        ("spatial.n_neighbors=auto", "smoothing neighbourhood: auto (from depth) or a number"),
        ("trainer.max_epochs=60", "training epochs; trainer=fast (3 epochs) | hd (10^5-10^6 cells)"),
        ("cluster.start=inputs", "gmm start of trained fusions: inputs (deterministic) | free"),
        ("run_dir=PATH", "where outputs go (default outputs/<data>/<fusion>/seed<seed>-<time>/)"),
    ],
    "evaluate": [
        ("slices=[dlpfc:151673,...]", "data configs, or dataset:slice"),
        ("fusions=all", "registered fusion names, or all"),
        ("seeds=[0,1,2]", "seeds of every run"),
        ("workers=1", "runs at a time (launcher=local)"),
        ("out_dir=PATH", f"run folders, results.csv, summary.md, figures (default {DEFAULT_EVALUATE_OUT_DIR})"),
        ("experiment=dev_set", "a named plan (configs/experiment/)"),
        ("--plan", "check and print the plan, run nothing"),
    ],
}


def command_help(cmd: str) -> str:
    """``mihd <cmd> --help``: usage, config groups with their options, most used keys. Reads only the
    configs folder (no torch, scanpy or Hydra import), so it answers at once."""
    from ._config import group_options, task_groups

    lines = [f"usage: mihd {cmd} [group=option ...] [key=value ...]", ""]
    lines.append("config groups (group=option):")
    groups = task_groups("train") if cmd == "train" else task_groups("evaluate") + task_groups("train")
    for g in groups:
        lines.append(f"  {g + '=':<12}{' | '.join(group_options(g))}")
    lines += ["", "most used keys:"]
    lines += [f"  {k:<28}{what}" for k, what in _KEYS[cmd]]
    if cmd == "evaluate":
        lines.append("  (any other key=value is a train option for every run, e.g. trainer=fast)")
    lines += ["", f"  --cfg                       print the composed config and exit",
              f"more: README.md, configs/{cmd}.yaml, and `mihd fusions` for the registered strategies."]
    return "\n".join(lines)


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
    if cmd in _KEYS and any(a in ("-h", "--help") for a in rest):
        print(command_help(cmd))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Lightning's start-up banner and tips bury the useful lines (train() quiets them too); keep its warnings.
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
