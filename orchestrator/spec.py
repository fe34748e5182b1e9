"""The sweep file: schema, validation with file-and-key errors, and grid expansion with dedup.

Everything here runs before Ray starts or anything is written, so a typo costs nothing. Whether
the corpus files the trials name exist is checked apart (check_files), by the commands that
start or resume a sweep: a saved sweep's relative paths need not resolve where `status` runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from localist.config import ConfigError, TrialConfig, flatten, valid_keys
from localist.config_files import build, check_files as check_config_files, deep_merge, format_validation_error, \
    load_yaml, nearest
from localist import io
from orchestrator import layout, search as search_section

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SPEC_KEYS = ["name", "description", "base", "grid", "comparators", "resources", "max_concurrent", "storage",
             "retries", "checkpoint_every", "keep_checkpoints", "save_model", "search", "tracking", "pretrain"]


# The `tracking:` section (orchestrator/sweep/tracking.py turns it into Tune callbacks).

class MLflow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = None  # default: SQLite, <sweep>/mlflow.db (local storage only)
    experiment: str | None = None  # default: the sweep's name
    tags: dict[str, str] = {}


class Wandb(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = None  # default: the sweep's name
    group: str | None = None
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; default offline unless W&B is set up


class Tracking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mlflow: MLflow | None = None
    wandb: Wandb | None = None


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0, description="CPUs per trial, per worker of a multi-worker trial (also its torch threads)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial, per worker of a multi-worker trial; fractions pack "
                                              "several single-worker trials on one GPU")
    workers: int = Field(1, ge=1, description="data-parallel workers per trial (train.workers of every trial that "
                                              "sets none); above 1 a trial runs on Ray Train")
    span_nodes: bool = Field(True, description="a multi-worker trial may place its workers on several nodes "
                                               "(false: all on one node)")


class Pretrain(BaseModel):
    """`pretrain:`: a base trained once without locality (its own corpus allowed), which every
    trial of the sweep then fine-tunes, tokenizer included (the paper's regime: web text, then a book)."""
    model_config = ConfigDict(extra="forbid")
    model: dict[str, Any] = Field(default_factory=dict, description="the base's shape (a tiny GPT-2's keys)")
    data: dict[str, Any] = Field(default_factory=dict, description="its corpus, context and vocabulary")
    train: dict[str, Any] = Field(default_factory=dict, description="its steps, batch and learning rate")
    seed: int = Field(0, ge=0, description="the base's seed (one base for every trial)")
    per_seed: bool = Field(False, description="one base per grid seed, pretrained with that seed")

    @model_validator(mode="before")
    @classmethod
    def _no_locality(cls, data: Any) -> Any:
        if isinstance(data, dict) and "locality" in data:
            raise ValueError("locality: a base is pretrained without locality; the grid's locality applies "
                             "when each trial fine-tunes it")
        return data


# What a fine-tuning trial of a sweep with `pretrain:` may set under model: (the rest is the base's)
FINE_TUNE_MODEL_KEYS = ("dropout", "attn_dropout")
# Settings that cannot change a pretrained base's weights: left out of its content hash
PRETRAIN_UNHASHED = ("train.checkpoint_every", "train.log_every", "train.eval_every", "train.eval_at_start",
                     "train.save_model", "data.cache_dir", "seed")
PRETRAIN_ID = "pretrain"  # the stage's one comparator: its trials are pretrain__s<seed>


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, Any]
    comparators: dict[str, dict[str, Any]] = Field(default_factory=dict)
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, ge=1)
    storage: str = "./results"
    retries: int = Field(2, ge=0)
    checkpoint_every: int = Field(0, ge=0, description="steps between trial checkpoints (0 = none)")
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints kept per running trial (a finished trial keeps none)")
    save_model: bool = Field(False, description="each run writes its final model as a Hugging Face folder")
    search: search_section.Search | None = Field(None, description="sample settings, then confirm the best")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow / W&B runs (orchestrator/sweep/tracking.py)")
    pretrain: Pretrain | None = Field(None, description="pretrain a base once (no locality); every trial fine-tunes it")
    _stage: Any = PrivateAttr(None)  # pretrain_stage(self), worked out once

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        return v

    @property
    def axes(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {k: v for k, v in self.grid.items() if k != "seeds"}

    @property
    def seeds(self) -> list[int]:
        return list(self.grid["seeds"])

    @property
    def storage_uri(self) -> str:
        """The storage; a relative local path is made absolute here, because Ray workers do not
        share the driver's working directory."""
        return self.storage if "://" in self.storage else os.path.abspath(os.path.expanduser(self.storage))

    @property
    def uri(self) -> str:
        """Where the sweep lives: <storage>/<name>."""
        return io.join(self.storage_uri, self.name)


@dataclass
class Trial:
    """One grid cell x seed (or comparator x seed) and the run that produces its result."""

    trial_id: str
    coords: dict[str, str]  # axis -> preset name; empty for comparators
    comparator: str | None
    seed: int
    config: TrialConfig
    run_id: str = ""  # the trial whose run stands for this one (itself unless deduplicated)
    rank: int = 0  # confirm trials: the rank of their searched setting (1 = best)
    key: str = field(default="", repr=False)
    where: str = field(default="", repr=False)  # the sweep-file keys it is made from, for error messages


def _top_level_hints() -> list[str]:
    """Where a key misplaced at the sweep's top level belongs: its own keys first, then
    `grid.seeds`, then every trial-config section and key under `base`."""
    trial = [k for k in valid_keys() if k != "seed"]  # a sweep's seeds come from grid.seeds
    sections = sorted({k.split(".")[0] for k in trial})
    return SPEC_KEYS + ["grid.seeds"] + [f"base.{k}" for k in sections + trial]


def _err(source: str, path: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {msg}")


def _check_overrides(tree: Any, source: str, path: str) -> None:
    """Every key of a partial trial config must exist in the trial config."""
    if not isinstance(tree, dict):
        raise _err(source, path, f"must be a mapping of trial-config keys, got {type(tree).__name__}")
    keys = valid_keys()
    for k in flatten(tree):
        if k not in keys:
            raise _err(source, f"{path}.{k}", f"not a trial-config key{nearest(k, keys)}")


def _check_name(source: str, path: str, name: Any) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name) or "__" in name:
        raise _err(source, path, f"preset name {name!r} must be letters, digits, '.', '_' or '-' without '__'")


def validate(raw: dict[str, Any], source: str) -> SweepSpec:
    """A SweepSpec from parsed YAML, or one ConfigError naming the file, key path and problem."""
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, keys=_top_level_hints())) from None
    _check_overrides(spec.base, source, "base")
    if "seeds" not in spec.grid:
        raise _err(source, "grid.seeds", "missing: list the seeds, e.g. seeds: [1, 2, 3]")
    seeds = spec.grid["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise _err(source, "grid.seeds", "must be a non-empty list of integers")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise _err(source, f"grid.seeds[{i}]", f"{s!r} is not a non-negative integer")
    if len(set(seeds)) != len(seeds):
        raise _err(source, "grid.seeds", f"duplicate seeds in {seeds}")
    if not spec.axes and not spec.comparators:
        raise _err(source, "grid", "no axes and no comparators: nothing to run")
    for axis, presets in spec.axes.items():
        _check_name(source, f"grid.{axis}", axis)
        if not isinstance(presets, dict) or not presets:
            raise _err(source, f"grid.{axis}", "an axis must map at least one preset name to overrides")
        for name, over in presets.items():
            _check_name(source, f"grid.{axis}.{name}", name)
            _check_overrides(over or {}, source, f"grid.{axis}.{name}")
    for name, over in spec.comparators.items():
        _check_name(source, f"comparators.{name}", name)
        _check_overrides(over or {}, source, f"comparators.{name}")
    _check_storage(spec.storage, source)
    if spec.pretrain:
        _check_overrides({"model": spec.pretrain.model, "data": spec.pretrain.data, "train": spec.pretrain.train},
                         source, "pretrain")
        _check_pretrain(spec, source)
    if spec.search:
        _check_search_values(spec, search_section.check(spec.search, source), source)
    return spec


def _check_search_values(spec: SweepSpec, parsed: dict, source: str) -> None:
    """Build every cell at the search space's extremes, so a value the trial config refuses
    (lr <= 0, a bad power) fails now, not inside Ray."""
    for cell in cells(spec):
        for key, (_, args) in parsed.items():
            for value in args:  # the bounds, or every choice
                tree = search_section.with_values(cell.tree, {key: value})
                try:
                    make_trial(spec, cell, spec.seeds[0], source, tree=tree)
                except ConfigError as e:
                    raise search_section.space_error(source, key, f"the value {value!r} makes an invalid trial: {e}") from None


def _check_storage(uri: str, source: str) -> None:
    import pyarrow.fs as pafs

    if "://" in uri and not uri.startswith("file://"):
        try:
            pafs.FileSystem.from_uri(uri)
        except Exception as e:  # pyarrow raises several types for bad URIs
            raise _err(source, "storage", f"cannot use {uri!r}: {e}") from None
        return
    path = Path(os.path.expanduser(uri.removeprefix("file://"))).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise _err(source, "storage", f"{path} is not writable ({probe} is not a directory)")
    try:  # an unnamed temporary file: proves we can write, leaves nothing behind
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise _err(source, "storage", f"{path} is not writable ({probe}: {e.strerror})") from None


def load_saved(sweep_uri: str) -> SweepSpec:
    """The spec a sweep was started with, from its storage (layout.spec_file)."""
    f = layout.spec_file(sweep_uri)
    if not io.exists(f):
        raise ConfigError(f"{sweep_uri}: not a sweep (no {f.rsplit('/', 1)[-1]}); give the folder <storage>/<sweep name>")
    return validate(yaml.safe_load(io.read_text(f)), f)


def load(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SweepSpec:
    raw = load_yaml(path)
    if overrides:
        raw = deep_merge(raw, overrides)
    return validate(raw, str(path))


@dataclass
class Cell:
    """One grid cell or comparator: its name, coordinates and merged (partial) trial tree."""

    name: str
    coords: dict[str, str]
    comparator: str | None
    tree: dict[str, Any]
    where: str  # the sweep-file keys it is made from, for error messages


def cells(spec: SweepSpec) -> list[Cell]:
    """Every grid cell in grid order, then every comparator."""
    axes = spec.axes
    combos: list[list[tuple[str, str]]] = [[]]
    for axis, presets in axes.items():
        combos = [c + [(axis, p)] for c in combos for p in presets]
    out = []
    for combo in combos if axes else []:
        coords = dict(combo)
        tree = copy.deepcopy(spec.base)  # never write into the spec itself
        for axis, preset in coords.items():
            tree = deep_merge(tree, axes[axis][preset] or {})
        where = "grid." + " + grid.".join(f"{a}.{p}" for a, p in coords.items()) if coords else "base"
        out.append(Cell("__".join(coords.values()), coords, None, tree, where))
    for name, over in spec.comparators.items():
        out.append(Cell(name, {}, name, deep_merge(copy.deepcopy(spec.base), over or {}), f"comparators.{name}"))
    return out


def sweep_keys(spec: SweepSpec, tree: dict[str, Any], source: str = "<sweep>", base: bool = True) -> dict[str, Any]:
    """A (partial) trial tree with what the sweep sets in every trial, search trials included: its
    checkpoint_every (the sweep's wins), resources.workers as train.workers where the trial names none,
    and with `pretrain:` (unless base is False) the pretrained base of its seed as model.name."""
    train = tree.setdefault("train", {})
    if spec.checkpoint_every:
        train["checkpoint_every"] = spec.checkpoint_every
    train.setdefault("workers", spec.resources.workers)
    stage = pretrain_stage(spec, source) if base else None
    if stage:  # its shape too, so the trial's recorded config says what it trained
        shape = stage.config.model
        model = tree.setdefault("model", {})
        model.update(name=stage.base(tree.get("seed", spec.seeds[0])), n_layer=shape.n_layer, n_embd=shape.n_embd,
                     n_head=shape.n_head)
        tree.setdefault("data", {})["vocab_size"] = stage.config.data.vocab_size
    return tree


def check_workers(spec: SweepSpec, cfg: TrialConfig, source: str, where: str) -> None:
    """A multi-worker trial runs one DDP worker per whole GPU (two NCCL ranks cannot share one)."""
    gpu = spec.resources.gpu
    if cfg.train.workers > 1 and gpu not in (0, 1):
        raise _err(source, "resources.gpu", f"{gpu:g} GPU per worker, but the trial made from {where} has "
                   f"{cfg.train.workers} workers: a data-parallel worker takes one whole GPU (gpu: 1) or none (gpu: 0)")


@dataclass
class PretrainStage:
    """The pretraining stage of a sweep with `pretrain:`: its own small sweep (one comparator,
    ``pretrain``, at each base seed) in <storage>/pretrained/<key>/, where key is a content hash of
    the base's config, so every sweep naming the same base, in that storage, trains it once."""

    key: str
    spec: SweepSpec  # the stage as a sweep (its uri: the folder above)
    seeds: list[int]
    config: TrialConfig  # at the first seed

    def base(self, seed: int) -> str:
        """The saved base (a Hugging Face folder) a grid trial at this seed fine-tunes."""
        from localist.model import MODEL_DIR  # (here: localist.model imports torch)

        s = seed if seed in self.seeds else self.seeds[0]
        return os.path.join(layout.trial_dir(self.spec.uri, f"{PRETRAIN_ID}__s{s}"), MODEL_DIR)


def pretrain_stage(spec: SweepSpec, source: str = "<sweep>") -> PretrainStage | None:
    """The sweep's pretraining stage, or None without `pretrain:`. Refuses a base config the trial
    config refuses (ConfigError naming `pretrain.<key>`)."""
    if spec.pretrain is None:
        return None
    if spec._stage is not None:
        return spec._stage
    p = spec.pretrain
    tree = sweep_keys(spec, copy.deepcopy({"model": p.model, "data": p.data, "train": p.train}), base=False)
    tree["locality"] = {"peak": 0.0}
    tree["train"].update(save_model=True, eval_at_start=False)  # (a base's own step 0 says nothing)
    seeds = list(spec.seeds) if p.per_seed else [p.seed]
    try:
        cfg = build({**tree, "seed": seeds[0]}, source, prefix="pretrain.")
    except ConfigError as e:
        raise ConfigError(f"{e} (the pretrain: section)") from None
    hashed = {k: v for k, v in cfg.flat().items() if k not in PRETRAIN_UNHASHED}
    key = hashlib.sha256(json.dumps({"config": hashed, "seeds": seeds}, sort_keys=True).encode()).hexdigest()[:12]
    stage = SweepSpec(name=key, description=f"pretraining of the base of {spec.name}", base=tree,
                      grid={"seeds": seeds}, comparators={PRETRAIN_ID: {}}, resources=spec.resources,
                      retries=spec.retries, checkpoint_every=spec.checkpoint_every, save_model=True,
                      storage=layout.pretrained_storage(spec.storage_uri))
    spec._stage = PretrainStage(key, stage, seeds, cfg)
    return spec._stage


def _check_pretrain(spec: SweepSpec, source: str) -> None:
    """A base the trials can load (local or shared storage) and fine-tuning trials that leave its
    shape alone."""
    if "://" in spec.storage and not spec.storage.startswith("file://"):
        raise _err(source, "pretrain", f"needs local or shared-filesystem storage (the trials load the base "
                   f"from its folder); {spec.storage!r} is not (pretrain locally, then name the folder as model.name)")
    pretrain_stage(spec, source)
    overrides = {"base": spec.base, **{f"grid.{a}.{p}": o for a, ps in spec.axes.items() for p, o in ps.items()},
                 **{f"comparators.{c}": o for c, o in spec.comparators.items()}}
    for where, over in overrides.items():
        for k in ((over or {}).get("model") or {}):
            if k not in FINE_TUNE_MODEL_KEYS:
                raise _err(source, f"{where}.model.{k}", "with pretrain:, every trial fine-tunes the pretrained "
                           "base, so its model is the base's (set it under pretrain.model); a trial may set only "
                           f"{', '.join('model.' + m for m in FINE_TUNE_MODEL_KEYS)}")
    for cell in cells(spec):
        make_trial(spec, cell, spec.seeds[0], source)  # a context longer than the base's, say


def make_trial(spec: SweepSpec, cell: Cell, seed: int, source: str, tree: dict[str, Any] | None = None,
               trial_id: str | None = None) -> Trial:
    """The trial of a cell at a seed; `tree` replaces the cell's tree (a search adds sampled values).
    With `pretrain:` it fine-tunes the base of its seed (pretrain_stage)."""
    tree = copy.deepcopy(cell.tree if tree is None else tree)
    tree["seed"] = seed
    tree = sweep_keys(spec, tree, source)
    if spec.save_model:
        tree["train"]["save_model"] = True
    stage = pretrain_stage(spec, source)
    try:
        cfg = build(tree, source, prefix="")
    except ConfigError as e:
        raise ConfigError(f"{e} (in the trial made from {cell.where}, seed {seed})") from None
    context = stage.config.data.seq_len if stage else None
    if context and cfg.data.seq_len > context:
        raise _err(source, f"{cell.where}: data.seq_len", f"{cfg.data.seq_len} exceeds the pretrained base's "
                   f"context (pretrain.data.seq_len: {context}); set base.data.seq_len to at most that")
    check_workers(spec, cfg, source, cell.where)
    return Trial(trial_id or f"{cell.name}__s{seed}", dict(cell.coords), cell.comparator, seed, cfg,
                 where=cell.where)


def expand(spec: SweepSpec, source: str = "<sweep>") -> list[Trial]:
    """Every grid cell x seed, then every comparator x seed, with duplicates resolved."""
    sweep_cells = cells(spec)
    return finalise([make_trial(spec, c, seed, source) for seed in spec.seeds for c in sweep_cells], source)


def check_files(trials: list[Trial], source: str) -> None:
    """Refuse, before Ray starts or anything is written, the first trial whose corpus file or
    folder does not exist from the current folder (`sweep run`, `resume`, `submit`)."""
    for t in trials:
        try:
            check_config_files(t.config, source)
        except ConfigError as e:
            raise ConfigError(f"{e} (in the trial made from {t.where}, seed {t.seed})") from None


def finalise(trials: list[Trial], source: str) -> list[Trial]:
    """Refuse colliding trial ids and bad lambda lists, then resolve duplicates.

    Trials whose canonical configs are equal (e.g. peak 0 under every schedule) share one run:
    the first in order runs, the others record it as their run_id.
    """
    seen: dict[str, Trial] = {}
    for t in trials:
        if t.trial_id in seen:
            raise ConfigError(f"{source}: comparators.{t.comparator or ''}: trial id {t.trial_id!r} is also made by "
                              "the grid; rename the comparator or the preset")
        seen[t.trial_id] = t
        n_layer = t.config.model.n_layer if t.config.model.name == "tiny" else None
        lambdas = t.config.locality.lambdas
        if t.config.locality.schedule == "list" and n_layer and len(lambdas or []) != n_layer:
            raise ConfigError(f"{source}: locality.lambdas: {len(lambdas or [])} values for {n_layer} layers "
                              f"(in trial {t.trial_id})")
    first: dict[str, str] = {}
    for t in trials:
        t.key = json.dumps(t.config.canonical().model_dump(), sort_keys=True)
        t.run_id = first.setdefault(t.key, t.trial_id)
    return trials


def runs(trials: list[Trial]) -> dict[str, TrialConfig]:
    """The trials that actually execute, in order: run_id -> config."""
    return {t.trial_id: t.config for t in trials if t.run_id == t.trial_id}
