"""The `search:` section of a sweep file: its schema, validation and ranking rule.

A search sweep samples hyperparameters (any dotted trial key) per grid cell (`per: cell`) or once
across the whole grid (`per: sweep`, where the cell is one more choice of the search), optionally
stopping poor trials early with ASHA. `confirm` then reruns the best settings with seeds as
ordinary trials, so the summary compares them with the grid's paired statistics. Nothing here
imports Ray or reads storage: the searches and their confirmation are planned in
orchestrator/sweep/search_plan.py and run on Tune in orchestrator/sweep/search_run.py.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from localist.config import ConfigError, valid_keys
from localist.config_files import nearest, set_dotted

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
CELL_KEY = "cell"  # the search key that picks the grid cell when per: sweep


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Asha(_Strict):
    grace_period: int | None = Field(None, ge=1, description="steps before a trial can be stopped (default eval_every)")
    reduction_factor: float = Field(2.0, gt=1, description="keep 1/reduction_factor of trials at each rung")
    max_t: int | None = Field(None, ge=1, description="steps at which every trial stops (default train.steps)")


class Scheduler(_Strict):
    asha: Asha


class Until(_Strict):
    ci_half_width: float = Field(gt=0, description="target 95% t half-width of a cell's ratio to the baseline")
    max_seeds: int = Field(ge=2, description="a cell gets no more seeds than this")


class Confirm(_Strict):
    top: int = Field(1, ge=1, description="best settings to confirm (per cell when per: cell)")
    seeds: list[int] = Field(min_length=1, description="seeds each confirmed setting runs with")
    until: Until | None = Field(None, description="add seeds to a cell in rounds until its ratio's CI is narrow")


class Search(_Strict):
    algorithm: Literal["grid", "random", "optuna"] = "optuna"
    metric: Literal["eval_loss", "eval_ppl"] = "eval_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1, description="trials per search (grid: repeats of the whole grid)")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once (default: the sweep's max_concurrent)")
    seed: int = Field(0, ge=0, description="the searcher's random state")
    per: Literal["cell", "sweep"] = "cell"
    space: dict[str, Any] = Field(min_length=1)
    scheduler: Scheduler | None = None
    confirm: Confirm | None = None


# --------------------------------------------------------------------------------------------
# validation


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _distribution(key: str, raw: Any, algorithm: str, err) -> tuple[str, Any]:
    """(kind, args) of one space entry such as {loguniform: [1e-4, 1e-2]}, or err(...)."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise err(key, f"must be one distribution such as {{loguniform: [0.0001, 0.01]}}, got {raw!r}")
    kind, args = next(iter(raw.items()))
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise err(key, f"unknown distribution {kind!r}{hint}; use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise err(key, f"choice needs a non-empty list of values, got {args!r}")
        return kind, args
    if algorithm == "grid":
        raise err(key, f"algorithm grid enumerates values: use choice, not {kind}")
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise err(key, f"{kind} needs [low, high], two numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise err(key, f"{kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise err(key, f"loguniform needs low > 0, got {low}")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise err(key, f"int needs integer bounds, got {args!r}")
    return kind, args


def space_error(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: search.space.{key}: {msg}")


def check(search: Search, source: str) -> dict[str, tuple[str, Any]]:
    """Refuse a bad search section with the file and key; returns key -> (distribution, its
    arguments), whose extremes the sweep's validation then builds into every cell."""
    def err(key: str, msg: str) -> ConfigError:
        return space_error(source, key, msg)

    keys = valid_keys()
    parsed = {}
    for key, raw in search.space.items():
        if key == "seed":
            raise err(key, "seeds are not searched: the search trains with grid.seeds[0], confirm with confirm.seeds")
        if key not in keys:
            raise err(key, f"not a trial-config key{nearest(key, keys)}")
        parsed[key] = _distribution(key, raw, search.algorithm, err)
    if search.confirm and len(set(search.confirm.seeds)) != len(search.confirm.seeds):
        raise ConfigError(f"{source}: search.confirm.seeds: duplicate seeds in {search.confirm.seeds}")
    if search.confirm and any(s < 0 for s in search.confirm.seeds):
        raise ConfigError(f"{source}: search.confirm.seeds: seeds must be non-negative")
    until = search.confirm.until if search.confirm else None
    if until and until.max_seeds < len(search.confirm.seeds):
        raise ConfigError(f"{source}: search.confirm.until.max_seeds: {until.max_seeds} is fewer than the "
                          f"{len(search.confirm.seeds)} confirm seeds")
    asha = search.scheduler.asha if search.scheduler else None
    if asha and asha.grace_period and asha.max_t and asha.grace_period > asha.max_t:
        raise ConfigError(f"{source}: search.scheduler.asha.grace_period: {asha.grace_period} exceeds max_t "
                          f"({asha.max_t})")
    return parsed


def sampled(config: dict[str, Any]) -> dict[str, Any]:
    """What a searcher chose in a Tune config: the dotted trial keys and, when searched, the cell."""
    return {k: v for k, v in config.items() if "." in k or k == CELL_KEY}


def with_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a partial trial tree with dotted-key values set."""
    out = copy.deepcopy(tree)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def rank(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Completed trials with a finite metric, best first; stopped, diverged and errored ones never rank."""
    ok = [r for r in rows if r["status"] == "completed" and _number(r.get(metric))]
    return sorted(ok, key=lambda r: r[metric] if mode == "min" else -r[metric])
