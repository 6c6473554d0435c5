"""DP-SGD in the training loop (issue 16): ``fit(..., dp=dict(...))``.

What is checked: the reported epsilon is the accountant's for the steps taken; with every sample
drawn (q = 1), no noise and a bound no gradient reaches, a DP step is a plain full-batch SGD step;
the noise has the stated scale; runs are seeded and resume exactly (the accountant is in the
checkpoint); settings that do not combine are refused by name.
"""
import math

import numpy as np
import pytest

import gradc as gc
from conftest import logistic_regression
from gradc import privacy
from gradc.train import Trainer


@pytest.fixture(scope="module")
def logreg():
    mod = logistic_regression("dp_logreg", 4)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    Y = (X @ np.array([1.5, -1, 0.5, 0]) + rng.normal(size=2000) * 0.5 > 0).astype(np.float64)
    return mod, {"x": X, "y": Y}


DP = dict(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)


def _fit(mod, data, epochs=3, dp=DP, **kw):
    p = mod.init_params(seed=0)
    kw = dict(dict(batch_size=100, optimizer="sgd", lr=0.5, seed=0, progress=False), **kw)
    hist = gc.fit(mod, p, data, epochs=epochs, dp=dp, **kw)
    return p, hist


def test_epsilon_is_the_accountants_and_the_model_learns(logreg):
    mod, data = logreg
    p, hist = _fit(mod, data, epochs=4, metrics=["loss", "accuracy"], val_data=data)
    q, steps_per_epoch = 100 / 2000, 20
    for e, eps in enumerate(hist["epsilon"]):
        want, _ = privacy.epsilon(q, 1.0, steps_per_epoch * (e + 1), 1e-5)
        assert eps == pytest.approx(want, rel=1e-12)
    assert hist["epsilon"][0] < hist["epsilon"][-1] < 5
    assert hist["val_accuracy"][-1] > 0.85


def test_metrics_on_the_training_data_are_refused_under_dp(logreg):
    """They would print what the training data say without the accountant counting it."""
    mod, data = logreg
    with pytest.raises(ValueError, match="not private.*val_split"):
        _fit(mod, data, epochs=1, metrics=["loss", "accuracy"])


def test_without_noise_and_clipping_a_full_sample_is_plain_sgd(logreg):
    mod, data = logreg
    n = len(data["y"])
    p_dp, _ = _fit(mod, data, epochs=3, batch_size=n,
                   dp=dict(noise_multiplier=0.0, max_grad_norm=1e9, delta=1e-5))
    p = mod.init_params(seed=0)
    gc.fit(mod, p, data, epochs=3, batch_size=n, optimizer="sgd", lr=0.5, seed=0, shuffle=False, progress=False)
    np.testing.assert_allclose(p_dp.flat, p.flat, rtol=1e-12, atol=1e-15)


def test_the_noise_has_the_stated_scale(logreg):
    """One step from the same parameters, twice with noise and once without: the difference of the
    updates over lr is the noise sum, whose std is noise_multiplier * max_grad_norm / (q N)."""
    mod, data = logreg
    n = len(data["y"])
    sigma, bound = 3.0, 0.5
    diffs = []
    for seed in range(40):
        for noise in (sigma, 0.0):
            p = mod.init_params(seed=0)
            t = Trainer(mod, p, optimizer="sgd", lr=1.0, batch_size=n, seed=seed, progress=False,
                        dp=dict(noise_multiplier=noise, max_grad_norm=bound, delta=1e-5))
            t.fit(data, epochs=1)
            if noise:
                noisy = p.flat.copy()
            else:
                diffs.append(p.flat - noisy)
    d = np.concatenate(diffs)
    assert np.std(d) == pytest.approx(sigma * bound / n, rel=0.15)
    assert abs(np.mean(d)) < 4 * sigma * bound / n / math.sqrt(len(d))


def test_seeded_and_resumable(logreg, tmp_path):
    mod, data = logreg
    p1, h1 = _fit(mod, data, epochs=4)
    p2, h2 = _fit(mod, data, epochs=4)
    assert np.array_equal(p1.flat, p2.flat) and h1["loss"] == h2["loss"]
    ck = tmp_path / "dp.npz"
    p3 = mod.init_params(seed=0)
    gc.fit(mod, p3, data, epochs=2, batch_size=100, optimizer="sgd", lr=0.5, seed=0, dp=DP, checkpoint=str(ck),
           progress=False)
    p4 = mod.init_params(seed=0)
    h4 = gc.fit(mod, p4, data, epochs=4, batch_size=100, optimizer="sgd", lr=0.5, seed=0, dp=DP, resume=str(ck),
                progress=False)
    assert np.array_equal(p4.flat, p1.flat)
    assert h4["epsilon"] == h1["epsilon"]
    # a private run does not resume from a checkpoint of a non-private one, nor with other dp settings
    gc.fit(mod, mod.init_params(seed=0), data, epochs=1, batch_size=100, optimizer="sgd", lr=0.5, seed=0,
           checkpoint=str(tmp_path / "plain.npz"), progress=False)
    with pytest.raises(ValueError, match="DP-SGD accountant"):
        gc.fit(mod, mod.init_params(seed=0), data, epochs=2, batch_size=100, optimizer="sgd", lr=0.5, seed=0, dp=DP,
               resume=str(tmp_path / "plain.npz"), progress=False)
    with pytest.raises(ValueError, match="written with dp"):
        gc.fit(mod, mod.init_params(seed=0), data, epochs=3, batch_size=100, optimizer="sgd", lr=0.5, seed=0,
               dp=dict(DP, noise_multiplier=2.0), resume=str(ck), progress=False)


def test_settings_that_do_not_combine_are_refused(logreg):
    mod, data = logreg
    p = mod.init_params(seed=0)
    cases = [
        (dict(dp=dict(noise_multiplier=1.0, max_grad_norm=1.0)), "missing 'delta'"),
        (dict(dp=dict(DP, sigma=1.0)), "unknown setting 'sigma'"),
        (dict(dp=dict(DP, max_grad_norm=0)), "max_grad_norm must be > 0"),
        (dict(dp=dict(DP, noise_multiplier=-1)), "noise_multiplier must be >= 0"),
        (dict(dp=dict(DP, delta=1.0)), "delta must be > 0.0 and < 1.0"),
        (dict(dp=DP, clip_grad_norm=1.0), "dp does not combine with clip_grad_norm"),
        (dict(dp=DP, optimizer="lbfgs"), "dp does not combine with an optimizer that re-evaluates"),
        (dict(dp=[1, 2]), "dp must be a dict"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            gc.fit(mod, p, data, epochs=1, progress=False, **kw)
    with pytest.raises(ValueError, match="dp does not combine with sample_weight"):
        gc.fit(mod, p, data, epochs=1, dp=DP, sample_weight=np.ones(len(data["y"])), progress=False)


def test_no_noise_spends_infinite_epsilon(logreg):
    mod, data = logreg
    _, hist = _fit(mod, data, epochs=1, dp=dict(noise_multiplier=0.0, max_grad_norm=1.0, delta=1e-5))
    assert hist["epsilon"] == [math.inf]
