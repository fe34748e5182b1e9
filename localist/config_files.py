"""Trial configs from YAML files and ``--set KEY=VALUE`` overrides, with errors that name the
file (or --set), the dotted key and the problem, plus a suggestion for a mistyped key or a
known wrong value. The schema itself is localist/config.py.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from localist.config import BUILTIN_CORPORA, ConfigError, TrialConfig, valid_keys


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


def build(tree: dict[str, Any], source: str = "<config>", prefix: str = "") -> TrialConfig:
    """A TrialConfig from a (partial) tree, or one ConfigError with a line per problem. Files the
    config names are not looked at: see check_files."""
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, prefix)) from None


def check_files(cfg: TrialConfig, source: str) -> None:
    """Refuse a config whose corpus file or folder does not exist (relative to the current folder).

    Done where a config is loaded to run, not in the schema: a saved sweep's corpus path is
    relative to where it was started, not to where `status` or `collect` is asked."""
    c = cfg.data.corpus
    if cfg.data.is_path and not Path(os.path.expanduser(c)).exists():
        raise ConfigError(f"{source}: data.corpus: {c!r} is not a built-in corpus ({', '.join(BUILTIN_CORPORA)}), "
                          "not 'hf:NAME', and no such file or folder exists")


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
    """The trial config of `localist train`: a file (or the defaults) with --set overrides, its
    corpus checked to exist."""
    tree = load_yaml(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    source = str(path) if path else "--set"
    cfg = build(tree, source)
    check_files(cfg, source)
    return cfg
