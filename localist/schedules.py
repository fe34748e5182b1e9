"""How locality grows with depth: one lambda in [0, 1] per layer."""

from __future__ import annotations

from localist.config import LocalityConfig

# The paper's five progressive schedules are polynomials of these powers.
POWER_NAMES = {1: "linear", 2: "quadratic", 3: "cubic", 4: "quartic", 5: "quintic"}
UNIFORM = "uniform"  # every layer at the peak
# The names sweeps give their schedules, in the order reports list them.
SCHEDULE_NAMES = (*POWER_NAMES.values(), UNIFORM)


def polynomial(n_layer: int, peak: float, power: float) -> list[float]:
    """lambda_l = peak * (l / (L-1))^power; a single layer gets the peak."""
    if n_layer == 1:
        return [peak]
    return [peak * (layer / (n_layer - 1)) ** power for layer in range(n_layer)]


def uniform(n_layer: int, peak: float) -> list[float]:
    return [peak] * n_layer


def layer_lambdas(cfg: LocalityConfig, n_layer: int) -> list[float]:
    if cfg.schedule == "uniform":
        return uniform(n_layer, cfg.peak)
    if cfg.schedule == "polynomial":
        return polynomial(n_layer, cfg.peak, cfg.power)
    lambdas = list(cfg.lambdas or [])
    if len(lambdas) != n_layer:
        raise ValueError(f"locality.lambdas: has {len(lambdas)} values but the model has {n_layer} layers")
    return lambdas
