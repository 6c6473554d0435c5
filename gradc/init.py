"""Parameter initializers.

An initializer is a small JSON-able spec, so that the generated module can
draw initial parameters without SymPy and the spec can enter the cache key.

Example::

    W = m.param("W", (16, 2), init=gc.init.uniform(-1, 1))
    b = m.param("b", 16, init=0)
"""
import math

import numpy as np


def constant(value):
    """Every element equal to ``value``: ``init=gc.init.constant(0.1)`` (or just ``init=0.1``)."""
    return {"kind": "constant", "value": float(value)}


def zeros():
    """All zeros: ``init=gc.init.zeros()``."""
    return constant(0.0)


def uniform(low=-1.0, high=1.0):
    """U(low, high): ``init=gc.init.uniform(-1, 1)``."""
    return {"kind": "uniform", "low": float(low), "high": float(high)}


def normal(mean=0.0, std=1.0):
    """N(mean, std^2): ``init=gc.init.normal(0, 0.1)``."""
    return {"kind": "normal", "mean": float(mean), "std": float(std)}


def linear(fan_in=None):
    """PyTorch ``nn.Linear``'s and ``nn.Conv2d``'s default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    ``fan_in`` defaults to the product of the parameter's trailing dimensions (a
    weight stored as (fan_out, fan_in), or a kernel as (out, in, kh, kw)); give it for a bias:
    ``m.param("b", 16, init=gc.init.linear(fan_in=2))``.
    """
    return {"kind": "linear", "fan_in": None if fan_in is None else int(fan_in)}


def xavier_uniform():
    """Glorot: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), for a weight (fan_out, fan_in, ...):
    as PyTorch, both fans count the trailing dimensions of a kernel (its receptive field)."""
    return {"kind": "xavier_uniform"}


def as_spec(init):
    """Normalize what a user passed as ``init=`` into a spec dict."""
    if init is None:
        return zeros()
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return constant(init)
    if isinstance(init, dict) and init.get("kind") in _DRAW:
        return dict(init)
    raise TypeError(f"unknown initializer {init!r}: use a number or one of gradc.init.*")


def draw(spec, shape, rng, dtype):
    """Draw one parameter's initial values from ``spec`` with numpy's ``rng``."""
    return np.asarray(_DRAW[spec["kind"]](spec, tuple(shape), rng), dtype=dtype).reshape(shape)


def _fan_in(shape):
    """As PyTorch: the product of every dimension but the first (a scalar or vector: its last)."""
    if len(shape) < 2:
        return shape[-1] if shape else 1
    n = 1
    for s in shape[1:]:
        n *= s
    return n


def _linear(spec, shape, rng):
    fan = spec["fan_in"] or _fan_in(shape)
    a = 1.0 / math.sqrt(fan)
    return rng.uniform(-a, a, size=shape)


def _xavier(spec, shape, rng):
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    fan_out = shape[0] * receptive if shape else 1
    a = math.sqrt(6.0 / (_fan_in(shape) + fan_out))
    return rng.uniform(-a, a, size=shape)


_DRAW = {
    "constant": lambda s, shape, rng: np.full(shape, s["value"]),
    "uniform": lambda s, shape, rng: rng.uniform(s["low"], s["high"], size=shape),
    "normal": lambda s, shape, rng: rng.normal(s["mean"], s["std"], size=shape),
    "linear": _linear,
    "xavier_uniform": _xavier,
}
