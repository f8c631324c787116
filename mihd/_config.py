"""Finding, composing and checking mihd's Hydra configs (shared by ``mihd train`` and ``mihd evaluate``).

Configs come from the ``configs/`` folder shipped inside the package (or the
repository's ``configs/`` in a source checkout), composed with Hydra's compose API.
Every override is checked here, before any data is read and before torch, scanpy or
Lightning is imported: an unknown key (with or without ``+``) or group option is refused
with one line that says what would work.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["config_dir", "compose", "check_config_keys", "check_output_dir", "ConfigError", "DLPFC_DOMAINS",
           "OPTIONAL_KEYS", "FREE_FORM_KEYS", "data_dir"]

# Published layer counts of the 12 DLPFC slices (Maynard et al. 2021): slices 151669-151672
# lack Layer_1/Layer_2. Metadata of the dataset, used for K like every peer does.
DLPFC_DOMAINS = {s: 5 for s in ("151669", "151670", "151671", "151672")}

# Keys the code reads with a default when a config leaves them out (`_cfg_get(cfg, key, default)` in
# mihd.train._runner): the only keys an override may add.
OPTIONAL_KEYS = frozenset({
    "spatial.context_neighbors", "encoder.feature_scaling", "cluster.start", "cluster.image_weight", "trainer.min_steps",
    "encoder.permute_image",
    "data.annotation", "data.annotation_key", "data.fullres_image", "data.bin_size", "data.load_morphology",
    "data.pool",
})
# Free-form option mappings, each checked where it is used against the signature it feeds
# (fusion class, clustering, encoders, synthetic_slice, modalities, submitit) with a message naming the option.
FREE_FORM_KEYS = ("fusion.options", "cluster.options", "encoder.gene_options", "encoder.image_options",
                  "data.generator", "data.pool", "trainer.modality_weights", "launcher.additional_parameters")


class ConfigError(ValueError):
    """A config override or key that cannot work; the message (one line) names it and what would."""

    def __init__(self, message: str, *, override: str | None = None, key: str | None = None):
        super().__init__(message)
        self.override, self.key = override, key


def _dlpfc_n_domains(slice_id) -> int:
    return DLPFC_DOMAINS.get(str(slice_id), 7)


def data_dir() -> str:
    """Where the dataset configs (``data=dlpfc``, ``data=starmap_mpfc``) look for their slices:
    ``$MIHD_DATA_DIR``, else ``<checkout>/../shared/data`` in a source checkout, else ``~/mihd_data``;
    always absolute, so the working folder does not matter."""
    env = os.environ.get("MIHD_DATA_DIR")
    if env:
        return str(Path(env).expanduser().resolve())
    cdir = config_dir()
    base = cdir.parent.parent / "shared" / "data" if cdir.parent.name != "mihd" else Path("~/mihd_data").expanduser()
    return str(base.resolve())


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("mihd_dlpfc_n_domains"):
        OmegaConf.register_new_resolver("mihd_dlpfc_n_domains", _dlpfc_n_domains)
    if not OmegaConf.has_resolver("mihd_data_dir"):
        OmegaConf.register_new_resolver("mihd_data_dir", data_dir)


def config_dir() -> Path:
    """The Hydra config root: inside the installed package, else the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"mihd's configs/ folder was not found next to {here}; reinstall the package.")


@functools.lru_cache(maxsize=None)
def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def task_groups(task: str, cdir: Path | None = None) -> tuple[str, ...]:
    """The config groups of ``task`` (``train`` / ``evaluate``), from its YAML's defaults list."""
    cdir = cdir or config_dir()
    groups = []
    for entry in _yaml(cdir / f"{task}.yaml").get("defaults", []):
        if isinstance(entry, dict):
            groups += [k.lstrip("+~").split("@")[0].split("/")[-1] for k in entry]
    return tuple(groups)


_REGISTER = re.compile(r"@register_fusion\(\s*[\"']([A-Za-z0-9_\-]+)[\"']")


def fusion_names() -> list[str]:
    """Registered fusion names without importing torch: the registry when it is already loaded (it may
    hold fusions registered at run time), else the ``@register_fusion("...")`` lines of mihd/fusion/*.py
    (``tests/test_bad_inputs.py`` checks the two agree)."""
    if "mihd.fusion._registry" in sys.modules:
        from .fusion import list_fusions

        return list_fusions()
    return scan_fusion_names()


def scan_fusion_names() -> list[str]:
    """The names in the ``@register_fusion("...")`` lines of mihd/fusion/*.py (no import)."""
    names = set()
    for path in (Path(__file__).resolve().parent / "fusion").glob("*.py"):
        if not path.stem.startswith("_"):
            names.update(_REGISTER.findall(path.read_text()))
    return sorted(names)


def group_options(group: str, cdir: Path | None = None) -> list[str]:
    """The options of a config group: its YAML files (and, for ``fusion``, every registered fusion)."""
    cdir = cdir or config_dir()
    options = {p.stem for p in (cdir / group).glob("*.yaml")}
    if group == "fusion":
        options |= set(fusion_names())
    return sorted(options)


def _key_paths(node, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "defaults" and not prefix:
                continue
            path = f"{prefix}{k}"
            paths.add(path)
            paths |= _key_paths(v, path + ".")
    return paths


def _free_form(key: str) -> bool:
    return any(key.startswith(p + ".") for p in FREE_FORM_KEYS)


def _suggestion(key: str, paths: set[str]) -> str:
    """`` did you mean `x`?`` from the known key paths (same last part first, then difflib)."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = sorted(p for p in paths if p.rsplit(".", 1)[-1] == leaf and p != key)
    close = same_leaf[:1] or difflib.get_close_matches(key, sorted(paths), n=1, cutoff=0.6)
    if not close:
        by_leaf = {}
        for p in sorted(paths):
            by_leaf.setdefault(p.rsplit(".", 1)[-1], p)
        near = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        close = [by_leaf[near[0]]] if near else []
    if close:
        return f"did you mean `{close[0]}`?"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = sorted(p[len(parent) + 1:] for p in paths if parent and p.startswith(parent + ".") and "." not in p[len(parent) + 1:])
    if siblings:
        return f"the keys of {parent} are: {', '.join(siblings)}."
    return f"the top-level keys are: {', '.join(sorted(p for p in paths if '.' not in p))}."


_OVERRIDE = re.compile(r"^(?P<prefix>~|\+\+|\+)?(?P<key>[^=~+][^=]*?)(?:=(?P<value>.*))?$", re.DOTALL)


def _split_override(override: str):
    m = _OVERRIDE.match(override.strip())
    if m is None:
        raise ConfigError(f"{override!r} is not an override; write key=value or group=option, e.g. trainer.max_epochs=30.",
                          override=override)
    return m["prefix"] or "", m["key"].strip(), m["value"]


def _check_group_choices(task: str, overrides: list[str], cdir: Path) -> tuple[list[str], list[str]]:
    """Split ``overrides`` into group choices (checked: the group and its option exist; ``fusion=<name>``
    of a registered fusion without YAML becomes ``fusion.name=<name>``) and value overrides."""
    groups = task_groups(task, cdir)
    choices, values = [], []
    for o in overrides:
        prefix, key, value = _split_override(o)
        group = key.split("@")[0]
        if prefix == "~" or "." in group or not (group in groups or (cdir / group).is_dir()):
            values.append(o)
            continue
        if group not in groups:
            raise ConfigError(f"{o!r}: {group}= is not an option of mihd {task}; its config groups are "
                              f"{', '.join(g + '=' for g in groups)}.", override=o)
        options = group_options(group, cdir)
        if value in (None, "") or (value not in options and not (value == "null" and group == "experiment")):
            hint = difflib.get_close_matches(str(value), options, n=1)
            raise ConfigError(f"{o!r}: unknown {group} option {value!r}" + (f" (did you mean {group}={hint[0]}?)" if hint else "")
                              + f"; available: {', '.join(options)}.", override=o)
        if group == "fusion" and not (cdir / "fusion" / f"{value}.yaml").is_file():
            # Adding a fusion is one Python file; its config file is optional.
            values += [f"fusion.name={value}", "fusion.options={}"]
            continue
        choices.append(o if prefix == "~" else o[len(prefix):])  # `+data=h5ad` means data=h5ad
    return choices, values


def _check_values(task: str, values: list[str], paths: set[str]) -> list[str]:
    """Refuse unknown keys (with or without ``+``); return the overrides Hydra can apply: keys the
    config has as ``key=value``, the optional and free-form keys it lacks as ``++key=value``."""
    out = []
    for o in values:
        prefix, key, value = _split_override(o)
        if prefix == "~":
            if key not in paths:
                raise ConfigError(f"{o!r}: there is no key {key!r} to delete; {_suggestion(key, paths)}", override=o)
            out.append(o)
        elif value is None:
            raise ConfigError(f"{o!r} has no value; write {key}=<value>.", override=o)
        elif key in paths:
            out.append(f"{key}={value}")
        elif key in OPTIONAL_KEYS or _free_form(key):
            out.append(f"++{key}={value}")
        else:
            raise ConfigError(f"unknown key {key!r} in {o!r}; {_suggestion(key, paths)} "
                              f"(`mihd {task} --cfg` prints every key)", override=o, key=key)
    return out


def one_line(err: Exception) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(msg).split(" Config search path")[0].split("\nConfig search path")[0].split())


def compose(task: str, overrides: list[str] | None = None, *, stamp_run_dir: bool = True):
    """Compose the ``task`` config (``train`` or ``evaluate``) with command-line style overrides.

    Every override is checked first: an unknown key (with or without ``+``) or group option raises
    `ConfigError` naming it, with a suggestion. Only the keys mihd reads when present
    (``OPTIONAL_KEYS``) and entries of option mappings (``FREE_FORM_KEYS``) may be added.
    For ``train`` without a ``run_dir``, one is made from data, fusion, seed and the time
    (unless ``stamp_run_dir=False``). The result is resolved (interpolations filled in).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    _register_resolvers()
    cdir = config_dir()
    if task not in ("train", "evaluate"):
        raise ConfigError(f"task {task!r}: use 'train' or 'evaluate'.")
    choices, values = _check_group_choices(task, [str(o) for o in (overrides or [])], cdir)
    try:
        with initialize_config_dir(config_dir=str(cdir), version_base="1.3", job_name=f"mihd_{task}"):
            base = hydra_compose(config_name=task, overrides=choices)
            values = _check_values(task, values, _key_paths(OmegaConf.to_container(base, resolve=False)))
            cfg = hydra_compose(config_name=task, overrides=choices + values) if values else base
        if task == "train" and stamp_run_dir and cfg.get("run_dir") is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            with open_dict(cfg):
                cfg.run_dir = f"outputs/{cfg.data.name}/{cfg.fusion.name}/seed{cfg.seed}-{stamp}"
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:  # a value Hydra cannot parse or resolve
        raise ConfigError(f"mihd {task} config: {one_line(err)}") from None
    return cfg


@functools.lru_cache(maxsize=None)
def _schema(task: str, cdir: Path) -> frozenset:
    """Every key path any option of ``task``'s groups defines, plus the optional keys."""
    paths = _key_paths(_yaml(cdir / f"{task}.yaml"))
    for group in task_groups(task, cdir):
        paths.add(group)
        for path in (cdir / group).glob("*.yaml"):
            node = _yaml(path)
            # experiments are `# @package _global_`: their keys are top-level ones
            paths |= _key_paths(node) if group == "experiment" else {f"{group}.{p}" for p in _key_paths(node)}
    if task == "train":
        paths |= {"fusion.name", "fusion.options"}
    return frozenset(paths | OPTIONAL_KEYS)


def check_config_keys(cfg, task: str = "train") -> None:
    """Raise `ConfigError` when ``cfg`` (a DictConfig or nested dicts, e.g. built by hand for
    ``train(cfg)``) holds a key no ``task`` config defines, with a suggestion."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    schema = _schema(task, config_dir())
    for key in sorted(_key_paths(dict(node or {}))):
        if key not in schema and not _free_form(key):
            raise ConfigError(f"unknown key {key!r} in the {task} config; {_suggestion(key, set(schema))}")


def check_output_dir(path, key: str) -> Path:
    """Raise `ConfigError` unless ``path`` is, or can be made as, a writable folder (nothing is created)."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a file, not a folder; choose a folder path for {key}.")
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={str(path)!r} cannot be made: {str(probe)!r} is a file; choose another {key}.")
    why = None if os.access(probe, os.W_OK | os.X_OK) else "not writable by this user"
    if why is None:
        # os.access says yes to root everywhere and knows nothing of pseudo file systems (/proc, /sys):
        # make and remove a scratch folder where the outputs would go, so nothing is left behind.
        import tempfile

        try:
            os.rmdir(tempfile.mkdtemp(prefix=".mihd-write-check-", dir=probe))
        except OSError as err:
            why = f"not writable ({err.strerror})"
    if why is not None:
        why = "on a read-only file system" if _read_only(probe) else why
        raise ConfigError(f"{key}={str(path)!r} cannot be written: {str(probe)!r} is {why}; choose a writable {key}.")
    return p


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
