"""The evaluation plan: expand slices x encoders x clusterings x seeds x fusions into runs,
and check every run before any starts.

Each planned run is a complete, resolved ``train`` config. Its key is a hash of that
config (minus where outputs and caches go), so a rerun recognises finished runs, and a
changed option makes a new run instead of silently reusing an old one.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["PlannedRun", "Plan", "PlanError", "build_plan", "config_key", "split_overrides", "EVALUATE_KEYS"]

# Top-level keys of configs/evaluate.yaml; any other `key=value` argument is a train option
# applied to every run.
EVALUATE_KEYS = frozenset(
    {"slices", "fusions", "encoders", "clusters", "seeds", "variants", "overrides", "out_dir", "cache_dir",
     "plot_slice", "retry_failed", "launcher", "experiment"}
)
# Options that say where things go, not what is computed: not part of a run's identity.
_VOLATILE = ("run_dir", "overwrite", "cache_dir", "trainer.progress_bar")


class PlanError(ValueError):
    """The plan cannot run; ``problems`` lists every reason, each naming the slice / fusion / option."""

    def __init__(self, problems: list[str]):
        self.problems = list(dict.fromkeys(problems))  # de-duplicated, in order
        n = len(self.problems)
        if n == 1:  # one line, like every other mihd error
            super().__init__(f"the evaluation plan has 1 problem; nothing was run: {self.problems[0]}")
            return
        super().__init__(
            f"the evaluation plan has {n} problems; nothing was run:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: a resolved train config and where its outputs go."""

    run_id: str
    key: str
    slice: str
    fusion: str
    encoder: str
    cluster: str
    seed: int
    config: dict = field(repr=False, compare=False)
    variant: str = "default"

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run_dir"])

    def status(self) -> str:
        """``done`` (metrics.json written), ``failed`` (error.json, no metrics) or ``todo``."""
        if (self.run_dir / "metrics.json").is_file():
            return "done"
        if (self.run_dir / "error.json").is_file():
            return "failed"
        return "todo"

    def describe(self) -> dict:
        return {k: getattr(self, k) for k in ("run_id", "key", "slice", "fusion", "encoder", "cluster", "variant", "seed")}


@dataclass
class Plan:
    """Every run of an evaluation, in execution order, plus what was found about each slice."""

    runs: list[PlannedRun]
    out_dir: Path
    slices: dict[str, dict]

    def table(self) -> str:
        """A fixed-width listing of the runs and their status (for ``mihd evaluate --plan``)."""
        w = max([16] + [len(r.slice) + 2 for r in self.runs])  # e.g. dlpfc_pooled_151673
        head = f"{'#':>4}  {'slice':<{w}}{'fusion':<18}{'encoder':<12}{'cluster':<10}{'variant':<12}{'seed':>5}  {'key':<14}status"
        lines = [head]
        for i, r in enumerate(self.runs, 1):
            lines.append(
                f"{i:>4}  {r.slice:<{w}}{r.fusion:<18}{r.encoder:<12}{r.cluster:<10}{r.variant:<12}{r.seed:>5}  "
                f"{r.key:<14}{r.status()}"
            )
        counts = {s: sum(r.status() == s for r in self.runs) for s in ("done", "failed", "todo")}
        lines.append(
            f"{len(self.runs)} runs: {counts['done']} done, {counts['failed']} failed, {counts['todo']} to run; "
            f"outputs in {self.out_dir}"
        )
        return "\n".join(lines)


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Split command-line overrides into evaluate options and train options for every run."""
    evaluate, train = [], []
    for a in args:
        if a.startswith("workers="):  # shortcut for launcher.workers
            a = "launcher." + a
        key = a.split("=", 1)[0].lstrip("+~").split(".", 1)[0].split("@", 1)[0]
        (evaluate if key in EVALUATE_KEYS else train).append(a)
    return evaluate, train


def config_key(config: dict) -> str:
    """Hash of a resolved train config, ignoring where outputs and caches go."""
    cfg = copy.deepcopy(config)
    for dotted in _VOLATILE:
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip("-") or "x"


def _as_list(value, what: str, problems: list[str]) -> list:
    if value is None:
        problems.append(f"{what} is empty; give a list, e.g. {what}=[...].")
        return []
    if isinstance(value, (str, int)):
        return [value]
    return list(value)


def _slice_overrides(entry) -> list[str]:
    """``name`` -> data=name; ``dataset:slice`` -> data=dataset data.slice=slice;
    a mapping -> data=<its data key> plus data.<k>=<v> for the rest."""
    if isinstance(entry, dict):
        entry = dict(entry)
        out = [f"data={entry.pop('data', 'visium')}"]
        return out + [f"data.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in _flatten(entry)]
    text = str(entry)
    if ":" in text:
        dataset, slice_id = text.split(":", 1)
        return [f"data={dataset}", f"data.slice='{slice_id}'"]
    return [f"data={text}"]


def _flatten(mapping: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested mappings as dotted keys: ``{generator: {seed: 1}}`` -> ``[("generator.seed", 1)]``."""
    out = []
    for k, v in mapping.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _train_overrides(eval_cfg, extra: list[str]) -> list[str]:
    listed = [str(o) for o in (eval_cfg.get("overrides") or [])]
    bad = [o for o in listed + list(extra) if o.split("=", 1)[0].lstrip("+~") in ("run_dir", "overwrite")]
    if bad:
        raise PlanError([f"{bad[0]!r}: mihd evaluate chooses each run's folder under out_dir; set out_dir instead."])
    return listed + list(extra)


def build_plan(eval_cfg, train_overrides: list[str] = ()) -> Plan:
    """Expand and check the plan of an ``evaluate`` config; raise `PlanError` listing every problem.

    Parameters
    ----------
    eval_cfg
        The composed ``evaluate`` config (``configs/evaluate.yaml``).
    train_overrides
        Train options (``key=value``) applied to every run, after ``eval_cfg.overrides``.
    """
    from omegaconf import DictConfig, OmegaConf

    from .._config import ConfigError, compose, one_line

    if isinstance(eval_cfg, DictConfig):
        eval_cfg = OmegaConf.to_container(eval_cfg, resolve=True)
    problems: list[str] = []
    base = _train_overrides(eval_cfg, list(train_overrides))
    if not eval_cfg.get("out_dir"):
        raise PlanError(["out_dir is not set; give out_dir=PATH (where run folders and the report go)."])
    out_dir = Path(str(eval_cfg["out_dir"])).expanduser()
    cache_dir = eval_cfg.get("cache_dir") or str(out_dir / "cache")
    first_slice = next(iter(_as_list(eval_cfg.get("slices"), "slices", [])), None)
    if base and first_slice is not None:
        # A typo in a train option of every run: one line, at once, before torch loads and any data is read.
        try:
            compose("train", [*_slice_overrides(first_slice), *base], stamp_run_dir=False)
        except ConfigError as err:
            if err.override in base:
                top = str(err.key or "").split(".")[0]
                near = difflib.get_close_matches(top, sorted(EVALUATE_KEYS), n=1, cutoff=0.75) if err.key else []
                msg = (f"unknown key {err.key!r} in {err.override!r}; did you mean `{near[0]}` (an evaluate option)?"
                       if near else one_line(err))
                raise PlanError([msg]) from None

    from .. import NEEDS_COORDS_FUSIONS  # the registry's one answer, derived from forward signatures
    from ..fusion import list_fusions
    from ..train import check_config, validate_config

    fusions = eval_cfg.get("fusions", "all")
    if fusions in ("all", None):
        fusions = list_fusions()
    fusions = _as_list(fusions, "fusions", problems)
    registered = list_fusions()
    for f in fusions:
        if f not in registered:
            near = difflib.get_close_matches(str(f), registered, n=1)
            problems.append(f"fusions: {f!r} is not a registered fusion" + (f" (did you mean {near[0]}?)" if near else "")
                            + f"; registered: {', '.join(registered)}.")
    fusions = [f for f in dict.fromkeys(map(str, fusions)) if f in registered]
    encoders = [str(e) for e in _as_list(eval_cfg.get("encoders"), "encoders", problems)]
    clusters = [str(c) for c in _as_list(eval_cfg.get("clusters"), "clusters", problems)]
    seeds = []
    for s in _as_list(eval_cfg.get("seeds"), "seeds", problems):
        try:
            seeds.append(int(s))
        except (TypeError, ValueError):
            problems.append(f"seeds: {s!r} is not a whole number.")
    slice_entries = _as_list(eval_cfg.get("slices"), "slices", problems)
    variants = _variants(eval_cfg.get("variants"), problems)

    runs: list[PlannedRun] = []
    slices: dict[str, dict] = {}
    seen: set[str] = set()
    named: dict[str, tuple] = {}  # slice name -> (entry, path): two different slices must not share a name
    # Seeds vary fastest after fusions (below): an interrupted plan has whole seeds done.
    for entry, (variant, (variant_ovr, variant_fusions)), encoder, cluster in itertools.product(
        slice_entries, variants.items(), encoders, clusters
    ):
        slice_ovr = _slice_overrides(entry)
        composed = {}
        where = f"slice {entry!r}, encoder {encoder!r}, cluster {cluster!r}" + (
            f", variant {variant!r}" if variant != "default" else "")
        for fusion in fusions if variant_fusions is None else [f for f in fusions if f in variant_fusions]:
            try:
                cfg = compose(
                    "train",
                    [*slice_ovr, f"encoder={encoder}", f"cluster={cluster}", f"fusion={fusion}", *base,
                     *variant_ovr, "trainer.progress_bar=false"],
                    stamp_run_dir=False,
                )
            except Exception as err:  # Hydra / OmegaConf: a config name or override is wrong
                if getattr(err, "override", None) in base:  # a train option of every run: say it once, alone
                    raise PlanError([one_line(err)]) from None
                problems.append(f"{where}: {one_line(err)}")
                break  # the same for every fusion: say it once
            try:
                check_config(cfg)
            except Exception as err:  # keys and values, the same for every fusion: say it once
                problems.append(f"{where}: {one_line(err)}")
                break
            try:
                validate_config(cfg)
            except Exception as err:  # our own option checks, naming the option
                problems.append(f"{where}, fusion {fusion!r}: {one_line(err)}")
                continue
            composed[fusion] = OmegaConf.to_container(cfg, resolve=True)
            composed[fusion]["cache_dir"] = str(cache_dir)
        if not composed:
            continue
        data_cfg = next(iter(composed.values()))["data"]
        name = str(data_cfg.get("name") or entry)
        same_name = named.setdefault(name, (entry, data_cfg.get("path")))
        if same_name[1] != data_cfg.get("path"):
            problems.append(
                f"slices {same_name[0]!r} and {entry!r} are both named {name!r} (their results would mix); give "
                f"each slice its own name, e.g. {{data: {data_cfg.get('name') or 'h5ad'}, path: ..., name: slice_b}}."
            )
            continue
        info = slices.get(name) or _inspect(data_cfg)
        slices[name] = info
        problems += [f"slice {name!r}: {p}" for p in info["problems"]]
        for fusion, cfg in composed.items():
            if fusion in NEEDS_COORDS_FUSIONS and not info["has_coords"]:
                problems.append(
                    f"slice {name!r} ({info['path']}) has no spatial coordinates (obsm['spatial']), but fusion "
                    f"{fusion!r} needs them; drop it from fusions or use a slice with coordinates "
                    f"(fusions that need coordinates: {', '.join(sorted(NEEDS_COORDS_FUSIONS))})."
                )
        for seed in seeds:
            for fusion, cfg in composed.items():
                run_cfg = copy.deepcopy(cfg)
                run_cfg["seed"] = seed
                key = config_key(run_cfg)
                if key in seen:
                    continue
                seen.add(key)
                parts = (name, fusion, encoder, cluster) + ((variant,) if variant != "default" else ())
                run_id = "__".join(_slug(x) for x in (*parts, f"seed{seed}", key[:8]))
                run_cfg["run_dir"] = str(out_dir / "runs" / run_id)
                run_cfg["overwrite"] = False
                runs.append(PlannedRun(run_id, key, name, fusion, encoder, cluster, seed, run_cfg, variant))
    if not runs and not problems:
        problems.append("the plan is empty: no slice, fusion, encoder, cluster or seed was given.")
    if problems:
        raise PlanError(problems)
    return Plan(runs, out_dir, slices)


def _variants(value, problems: list[str]) -> dict[str, tuple[list[str], set[str] | None]]:
    """``variants``: named sets of train overrides, each a separate method in the report.

    ``null`` / ``[]`` -> just ``default``. Entries: the string ``default`` (no overrides) or
    ``{name: raw, overrides: [spatial.smooth_inputs=false], fusions: [genes_only]}``, where the
    optional ``fusions`` limits the variant to those of the plan's fusions (e.g. one baseline row).
    Returns name -> (overrides, fusions or None for all).
    """
    from ..fusion import list_fusions

    out: dict[str, tuple[list[str], set[str] | None]] = {}
    for v in value or ["default"]:
        if v == "default":
            out["default"] = ([], None)
        elif isinstance(v, dict) and v.get("name") and set(v) <= {"name", "overrides", "fusions"}:
            only = v.get("fusions")
            if only is not None:
                only = {str(f) for f in ([only] if isinstance(only, str) else only)}
                unknown = sorted(only - set(list_fusions()))
                if unknown:
                    problems.append(f"variants: {v['name']!r} names unknown fusions {unknown}; registered: {', '.join(list_fusions())}.")
            out[str(v["name"])] = ([str(o) for o in (v.get("overrides") or [])], only)
        else:
            problems.append(
                f"variants: {v!r} is not 'default' or {{name: <label>, overrides: [key=value, ...], fusions: [optional]}}."
            )
    return out


def _inspect(data_cfg: dict) -> dict:
    from ..data import inspect_slice

    if data_cfg.get("path") is None:  # the bundled example
        return {"path": "bundled example", "kind": "visium", "has_coords": True, "has_image": True, "problems": []}
    kwargs = {"bin_size": int(data_cfg["bin_size"])} if data_cfg.get("bin_size") is not None else {}
    info = inspect_slice(data_cfg["path"], annotation=data_cfg.get("annotation"), **kwargs)
    if data_cfg.get("pool") not in (None, False):  # data.pool: mihd.data.pool_spots, on a Visium hex grid only
        from ..data._pool import pool_options

        try:
            pool_options(data_cfg["pool"])
        except ValueError as err:
            info["problems"].append(str(err))
        if info["kind"] in ("visium_hd", "xenium"):
            info["problems"].append(f"data.pool needs a Visium hexagonal spot grid; {info['path']} is {info['kind']} data.")
    if data_cfg.get("root") and not Path(str(data_cfg["path"])).expanduser().exists():
        info["problems"] = [p + f" (data.root={data_cfg['root']}; set MIHD_DATA_DIR to the folder that holds it, "
                            "or data.root=...)" for p in info["problems"]]
    return info
