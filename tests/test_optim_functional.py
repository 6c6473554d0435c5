"""gradc.optim's layout: the registry, and each functional core equal, bit for bit, to its class's step.

The classes call the functional cores, so these pin down that a caller of ``gradc.optim.adam(...)``
gets exactly what ``Adam.step`` does (torch.optim's functional API beside its classes).
"""
import numpy as np
import pytest

import gradc.optim as optim
from gradc.optim import adagrad, adam, adamw, rmsprop, sgd


def test_the_registry_lists_every_optimizer_in_torchs_order():
    assert optim.available() == ("sgd", "adam", "adamw", "rmsprop", "adagrad", "lbfgs")
    assert optim.OPTIMIZERS["adamw"] is optim.AdamW
    assert all(issubclass(c, optim.Optimizer) for c in optim.OPTIMIZERS.values())


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    p = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    grads = [{k: rng.normal(size=v.shape) for k, v in p.items()} for _ in range(4)]
    return p, grads


def _zeros(p):
    return [np.zeros_like(v) for v in p.values()]


@pytest.mark.parametrize("name,kw", [
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("adamw", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5, centered=True, weight_decay=0.01)),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, eps=1e-10, weight_decay=0.01)),
])
def test_the_functional_core_equals_the_class_step_bit_for_bit(name, kw):
    p1, grads = _problem()
    p2 = {k: v.copy() for k, v in p1.items()}
    opt = optim.OPTIMIZERS[name](p1, **kw)
    ps, n = list(p2.values()), len(p2)
    if name == "sgd":
        bufs = [None] * n
    elif name in ("adam", "adamw"):
        m, v, vmax = _zeros(p2), _zeros(p2), _zeros(p2)
        f = adam if name == "adam" else adamw
        b1, b2 = kw["betas"]
        fkw = dict(lr=kw["lr"], beta1=b1, beta2=b2, eps=kw["eps"], weight_decay=kw["weight_decay"],
                   amsgrad=kw.get("amsgrad", False), maximize=kw.get("maximize", False))
    elif name == "rmsprop":
        sq, ga, mb = _zeros(p2), _zeros(p2), _zeros(p2)
    else:
        sums = _zeros(p2)
    for t, g in enumerate(grads, start=1):
        opt.step(g)
        gs = [g[k] for k in p2]
        if name == "sgd":
            sgd(ps, gs, bufs, **kw)
        elif name in ("adam", "adamw"):
            f(ps, gs, m, v, vmax, [t] * n, **fkw)
        elif name == "rmsprop":
            rmsprop(ps, gs, sq, ga, mb, **kw)
        else:
            adagrad(ps, gs, sums, [t] * n, **kw)
    for k in p1:
        np.testing.assert_array_equal(p2[k], p1[k])
