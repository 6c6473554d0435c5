"""Random batches for a compiled module, and a relative error, shared by the tests that compare two
builds of one model (C against CUDA, one thread against several).

Uses the module's metadata beyond the contract: each int32 input's index bounds, each dropout
mask's rate. Example::

    data = random_batch(mod, 70, np.random.default_rng(0))
    assert rel(g2["W1"], g1["W1"]) <= 1e-12
"""
import numpy as np


def random_batch(mod, n, rng, dtype=None):
    """Every input and target of ``mod`` for ``n`` samples: real values in [0, 1), int32 ids within
    the range they index (0 or 1 when they index nothing), dropout masks drawn at their rate."""
    c = mod._compiled
    dtype = dtype or c.dtype
    out = {}
    for a in c.meta["inputs"] + c.meta["targets"]:
        shape = (n, *a["shape"])
        if a["dtype"] == "int32":
            bounds = [b for b in c.int_bounds.get(a["name"], []) if b]
            out[a["name"]] = rng.integers(0, min(bounds) if bounds else 2, shape).astype(np.int32)
        elif "dropout" in a:
            keep = 1 - a["dropout"]
            out[a["name"]] = ((rng.random(shape) < keep) / keep).astype(dtype)
        else:
            out[a["name"]] = rng.uniform(0, 1, shape).astype(dtype)
    return out


def rel(a, b):
    """max |a - b| / max(1, max |b|), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
