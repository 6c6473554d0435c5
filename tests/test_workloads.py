"""The shared workloads, where ../shared/workloads is present: gradc reaches the peers' numbers."""
import os

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES, ROOT

W = os.path.join(os.path.dirname(ROOT), "shared", "workloads")


@pytest.mark.skipif(not os.path.exists(os.path.join(W, "w1_moons.npz")), reason="shared workloads not present")
def test_w1_moons_reaches_the_peers_loss_and_full_accuracy_after_100_sgd_steps():
    d = np.load(os.path.join(W, "w1_moons.npz"))
    m = gradc.load(os.path.join(EXAMPLES, "moons", "model.py"))
    p = m.init_params()
    for k in p:   # the workload stores dense weights as (fan_in, fan_out)
        v = d["init_" + k]
        p[k][...] = v.T if v.ndim == 2 else v
    X, y = d["X"], d["y"]
    for k in range(100):
        _, g = m.loss_and_grad(p, x=X, y=y)
        for n in p:
            p[n] -= (1.0 - 0.9 * k / 100) * g[n]
    assert m.loss(p, x=X, y=y) == pytest.approx(0.0107, abs=5e-5)
    assert np.mean((m.forward(p, x=X)["score"] > 0) == (y > 0)) == 1.0


def test_moons_example_trains_to_full_accuracy():
    import importlib.util
    spec = importlib.util.spec_from_file_location("moons_train", os.path.join(EXAMPLES, "moons", "train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([]) == 1.0
