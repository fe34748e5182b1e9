"""Trial configuration: one validated tree whose dotted keys (``locality.peak``) are a stable contract.

Sweep files, ``--set`` overrides and the Parquet column names all use these dotted keys, so
renaming a field here is a breaking change for users' sweep files and for later analysis.
"""

from __future__ import annotations

import difflib
import re
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

BUILTIN_CORPORA = ("kjv", "pydoc")


class ConfigError(ValueError):
    """A user error in a config file or override; the CLI prints it and exits with code 2."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("tiny", description="'tiny' (built from this section), a hub name or a local directory")
    n_layer: int = Field(4, ge=1, description="tiny only: transformer blocks")
    n_embd: int = Field(128, ge=8, description="tiny only: hidden size")
    n_head: int = Field(4, ge=1, description="tiny only: attention heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="tiny only: residual/embedding/attention dropout")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.name == "tiny" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} is not divisible by n_head ({self.n_head})")
        return self


class DataConfig(_Section):
    corpus: str = Field("kjv", description="'kjv', 'pydoc', a text file or folder, or 'hf:NAME[/CONFIG]'")
    max_chars: int | None = Field(1_500_000, ge=1000, description="use only the first N characters (None = all)")
    seq_len: int = Field(128, ge=8, description="tokens per training sequence")
    eval_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="tail of the text held out for evaluation")
    eval_sequences: int = Field(64, ge=1, description="held-out sequences scored at each evaluation")
    vocab_size: int = Field(4096, ge=300, description="tiny only: byte-level BPE vocabulary trained on the corpus")
    text_column: str = Field("text", description="hf datasets only: the column holding the text")
    cache_dir: str | None = Field(None, description="tokenised-corpus cache (default $LOCALIST_CACHE or ~/.cache/localist)")

    @model_validator(mode="after")
    def _corpus_exists(self, info: ValidationInfo) -> "DataConfig":
        if (info.context or {}).get("check_paths") is False:  # reading back a validated sweep
            return self
        c = self.corpus
        if c not in BUILTIN_CORPORA and not c.startswith("hf:") and not Path(os.path.expanduser(c)).exists():
            raise ValueError(
                f"corpus: {c!r} is not a built-in corpus ({', '.join(BUILTIN_CORPORA)}), not 'hf:NAME', "
                "and no such file or folder exists"
            )
        return self


class TrainConfig(_Section):
    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(20, ge=0, description="linear warm-up, then cosine decay to 10% of lr")
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm (0 = off)")
    eval_every: int = Field(50, ge=1, description="evaluate (with attention statistics) every N steps and at the end")
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0 = none; a sweep sets it)")
    log_every: int = Field(10, ge=1, description="print a progress line every N steps")
    precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a capable GPU, else fp32")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = leave as is)")
    save_model: bool = Field(False, description="write the final model and tokenizer to OUT/model (Hugging Face folder)")
    compile: Literal["auto", "true", "false"] = Field(
        "auto", description="torch.compile the training forward and loss: auto = on for CUDA, off on CPU")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, v: Any) -> Any:
        """Old sweep files say true/false: keep accepting booleans (and yes/no/on/off from --set)."""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str) and v.strip().lower() in ("yes", "on", "1", "no", "off", "0"):
            return "true" if v.strip().lower() in ("yes", "on", "1") else "false"
        return v.strip().lower() if isinstance(v, str) else v

    def compiled_on(self, device_type: str) -> bool:
        """Whether the trainer compiles on this device ('cuda', 'cpu', ...)."""
        return self.compile == "true" or (self.compile == "auto" and device_type == "cuda")


class LocalityConfig(_Section):
    peak: float = Field(1.0, ge=0.0, le=1.0, description="lambda_max, the locality of the deepest layer")
    schedule: Literal["uniform", "polynomial", "list"] = Field("polynomial", description="how lambda grows with depth")
    power: float = Field(5.0, ge=0.0, description="polynomial: lambda_l = peak * (l/(L-1))^power")
    lambdas: list[float] | None = Field(None, description="list: one lambda per layer, each in [0, 1]")
    partition: Literal["semantic", "sentence", "window"] = Field("semantic", description="what counts as in-block")
    window: int = Field(32, ge=1, description="window: key j is in-block for query i when i - j < window")
    min_len: int = Field(8, ge=1, description="semantic: shortest block in tokens")
    max_len: int = Field(64, ge=2, description="semantic: longest block in tokens")
    mechanism: Literal["bias", "penalty"] = Field("bias", description="logit bias, or a loss penalty on out-of-block mass")
    penalty_weight: float = Field(1.0, ge=0.0, description="penalty: weight of the out-of-block mass term")

    @model_validator(mode="after")
    def _consistent(self) -> "LocalityConfig":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len: {self.min_len} exceeds max_len ({self.max_len})")
        if self.schedule == "list":
            if not self.lambdas:
                raise ValueError("lambdas: schedule 'list' needs one lambda per layer")
            bad = [x for x in self.lambdas if not 0.0 <= x <= 1.0]
            if bad:
                raise ValueError(f"lambdas: every lambda must lie in [0, 1]; got {bad}")
        return self

    @property
    def is_off(self) -> bool:
        """True when every layer's lambda is 0, whatever the depth: plain GPT-2."""
        if self.schedule == "list":
            return all(x == 0 for x in self.lambdas or [])
        return self.peak == 0.0


class TrialConfig(_Section):
    seed: int = Field(0, ge=0)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    locality: LocalityConfig = LocalityConfig()

    def canonical(self) -> "TrialConfig":
        """The same trial with settings that cannot change the result normalised away.

        With every lambda at 0 the schedule and mechanism cannot change training, so such trials
        compare equal when they share the partitioner (which still decides the measured in-block
        mass); the sweep uses this to run the distributed baseline once per seed.
        """
        if not self.locality.is_off:
            return self
        loc = self.locality  # the partitioner still decides the reported in-block mass
        return self.model_copy(update={"locality": LocalityConfig(
            schedule="uniform", peak=0.0, partition=loc.partition, window=loc.window, min_len=loc.min_len,
            max_len=loc.max_len)})

    def flat(self) -> dict[str, Any]:
        return flatten(self.model_dump())


# ---------------------------------------------------------------------------------------------
# dotted keys, overrides and error messages


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def valid_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += valid_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def nearest(key: str, candidates: list[str]) -> str:
    """' (did you mean 'x'?)' for a mistyped or misplaced key, or ''.

    A key whose last part is exactly some candidate's last part is taken to be in the wrong
    section (`seeds` -> `grid.seeds`, `locality.steps` -> `train.steps`); otherwise the closest
    spelling of the whole key, then of its last part.
    """
    leaf = key.rsplit(".", 1)[-1]
    leaf_map: dict[str, str] = {}
    for c in candidates:
        leaf_map.setdefault(c.rsplit(".", 1)[-1], c)
    match = [leaf_map[leaf]] if leaf in leaf_map and leaf_map[leaf] != key else []
    match = match or difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        close = difflib.get_close_matches(leaf, list(leaf_map), n=1, cutoff=0.6)
        match = [leaf_map[close[0]]] if close else []
    return f" (did you mean '{match[0]}'?)" if match else ""


# Names users reach for that the schema spells differently: the paper's schedule names.
SCHEDULE_POWERS = {"linear": 1, "quadratic": 2, "cubic": 3, "quartic": 4, "quintic": 5}


def value_hint(path: str, got: Any, source: str = "") -> str:
    """'; ...' pointing from a known wrong value to the right spelling, or ''."""
    name = got.lower() if isinstance(got, str) else None
    if path.endswith("schedule") and name in SCHEDULE_POWERS:
        power = SCHEDULE_POWERS[name]
        if source.endswith("--set"):
            return f"; the {name} schedule is --set locality.schedule=polynomial --set locality.power={power}"
        return f"; the {name} schedule is schedule: polynomial, power: {power}"
    return ""


def warnings_for(cfg: "TrialConfig") -> list[str]:
    """Legal but probably unintended settings, worth a line on stderr before compute starts."""
    t = cfg.train
    out = []
    if t.warmup_steps >= t.steps:
        out.append(f"train.warmup_steps ({t.warmup_steps}) is not shorter than train.steps ({t.steps}): "
                   "the learning rate is still warming up when training ends")
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{p}' is not a section")
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def format_validation_error(err: ValidationError, source: str, prefix: str = "",
                            keys: list[str] | None = None) -> str:
    """One line per problem: 'FILE: key.path: message', with a suggestion for unknown keys."""
    keys = keys if keys is not None else valid_keys()
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        path = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: {path}: unknown key{nearest(loc, keys)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            field = re.match(r"^([a-z_]+): ", msg)
            if field and e["type"] == "value_error":  # a section validator naming its field
                path = f"{path}.{field.group(1)}" if loc else f"{prefix}{field.group(1)}"
                msg = msg[field.end():]
            got = e.get("input")
            shown = "" if isinstance(got, dict) or e["type"].startswith("value_error") else f" (got {got!r})"
            lines.append(f"{source}: {path}: {msg}{shown}{value_hint(path, got, source)}")
    return "\n".join(lines)


def build(tree: dict[str, Any], source: str = "<config>", prefix: str = "", check_paths: bool = True) -> TrialConfig:
    """check_paths=False skips checks that depend on the current folder (a saved sweep's corpus
    path is relative to where it was started, not to where `status` is asked)."""
    try:
        return TrialConfig.model_validate(tree, context={"check_paths": check_paths})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, prefix)) from None


def parse_value(text: str) -> Any:
    """'0.5' -> 0.5, 'true' -> True, '[1, 2]' -> [1, 2], 'gpt2' -> 'gpt2' (YAML scalars)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    keys = valid_keys()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: '{item}' is not KEY=VALUE")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in keys:
            raise ConfigError(f"{source}: {key}: unknown key{nearest(key, keys)}")
        set_dotted(tree, key, _check_value(key, parse_value(value), source))
    return tree


def _check_value(key: str, value: Any, source: str) -> Any:
    """One --set value against its field (type, bounds, field validators), so the error names
    --set; checks that involve other keys (min_len <= max_len) come later with the whole config."""
    model: type[BaseModel] = TrialConfig
    *sections, name = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    try:
        model.__pydantic_validator__.validate_assignment(model.model_construct(), name, value)
    except ValidationError as err:
        mine = [e for e in err.errors() if tuple(e["loc"][:1]) == (name,)]  # not the section's own checks
        if mine:
            raise ConfigError(f"{source}: {key}: {mine[0]['msg']} (got {value!r}){value_hint(key, value, source)}") \
                from None
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file, with file-named errors for missing files and syntax errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        data = yaml.load(p.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        kind = "YAML error" if isinstance(err, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise ConfigError(f"{p}: {kind}{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load(path: str | None = None, overrides: list[str] | None = None) -> TrialConfig:
    tree = load_yaml(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    return build(tree, str(path) if path else "--set")
