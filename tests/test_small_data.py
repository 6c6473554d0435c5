"""Tools for small data (issue 16): Monte Carlo dropout in ``predict`` and ``lr_find``.

MC dropout: the spread of a dropout model's outputs over seeded masks is wider far from the
training data than on it, and the same seed gives the same bits. ``lr_find``: the user's
parameters stay bit-identical, its suggestion trains a convex model, a diverging sweep stops
early, and the plot is drawn (or skipped with a message without matplotlib).
"""
import sys

import numpy as np
import pytest

import gradc as gc
from gradc.train import Trainer


# ---- Monte Carlo dropout ------------------------------------------------------------

@pytest.fixture(scope="module")
def moons():
    """A moons MLP 2-32-32-1 with dropout 0.2 on both hidden layers, trained briefly with fit."""
    from sklearn.datasets import make_moons
    m = gc.Model("small_data_moons")
    x, y = m.input("x", 2), m.target("y")
    W1, b1 = m.param("W1", (32, 2), init=gc.init.linear()), m.param("b1", 32, init=0)
    W2, b2 = m.param("W2", (32, 32), init=gc.init.linear()), m.param("b2", 32, init=0)
    W3, b3 = m.param("W3", (1, 32), init=gc.init.linear()), m.param("b3", 1, init=0)
    h1 = gc.dropout(gc.relu(W1 @ x + b1), 0.2)
    h2 = gc.dropout(gc.relu(W2 @ h1 + b2), 0.2)
    score = m.output("score", (W3 @ h2 + b3)[0])
    m.loss(gc.bce_with_logits(score, y))
    mod = gc.compile_model(m)
    X, Y = make_moons(200, noise=0.1, random_state=0)
    p = mod.init_params(seed=0)
    gc.fit(mod, p, {"x": X, "y": Y.astype(float)}, epochs=60, batch_size=32, optimizer="adam", lr=1e-2, seed=0)
    return mod, p, X, Y


def _far():
    """150 points on circles of radius 5, 7.5 and 10 around the origin: far from the moons."""
    ang = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    return np.concatenate([r * np.stack([np.cos(ang), np.sin(ang)], 1) for r in (5, 7.5, 10)])


def test_the_briefly_trained_moons_model_fits_its_data(moons):
    mod, p, X, Y = moons
    assert np.mean((gc.predict(mod, p, {"x": X})["score"] > 0) == Y) >= 0.97


def test_mc_dropout_spread_is_wider_far_from_the_training_data(moons):
    mod, p, X, _ = moons
    _, on = gc.predict(mod, p, {"x": X}, mc_samples=100, seed=0)
    _, far = gc.predict(mod, p, {"x": _far()}, mc_samples=100, seed=0)
    on, far = on["score"], far["score"]
    assert np.all(on > 0) and np.all(far > 0)
    # the README quotes this ratio ("more than 10 times")
    assert np.median(far) > 10 * np.median(on)
    assert far.min() > np.median(on)          # every far point, not just most


def test_mc_dropout_same_seed_same_bits_and_another_seed_other_masks(moons):
    mod, p, X, _ = moons
    m1, s1 = gc.predict(mod, p, {"x": X}, mc_samples=20, seed=7)
    m2, s2 = gc.predict(mod, p, {"x": X}, mc_samples=20, seed=7)
    m3, s3 = gc.predict(mod, p, {"x": X}, mc_samples=20, seed=8)
    assert np.array_equal(m1["score"], m2["score"]) and np.array_equal(s1["score"], s2["score"])
    assert not np.array_equal(s1["score"], s3["score"])
    # a Generator as the seed is advanced: two calls draw other masks
    rng = np.random.default_rng(7)
    _, a = gc.predict(mod, p, {"x": X}, mc_samples=20, seed=rng)
    _, b = gc.predict(mod, p, {"x": X}, mc_samples=20, seed=rng)
    assert np.array_equal(a["score"], s1["score"]) and not np.array_equal(a["score"], b["score"])


def test_mc_dropout_mean_and_std_are_those_of_the_sampled_passes(moons):
    mod, p, X, _ = moons
    rng = np.random.default_rng(3)
    passes = np.stack([mod.forward(p, dropout_rng=rng, x=X)["score"] for _ in range(5)])
    mean, std = gc.predict(mod, p, {"x": X}, mc_samples=5, seed=3)
    np.testing.assert_allclose(mean["score"], passes.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std["score"], passes.std(0), rtol=1e-9, atol=1e-12)


def test_trainer_predict_takes_mc_samples_and_leaves_its_own_generator_alone(moons):
    mod, p, X, _ = moons
    t = Trainer(mod, p, seed=0)
    state = t.rng.bit_generator.state
    mean, std = t.predict({"x": X}, mc_samples=10, seed=1)
    want_mean, want_std = gc.predict(mod, p, {"x": X}, mc_samples=10, seed=1)
    assert np.array_equal(mean["score"], want_mean["score"]) and np.array_equal(std["score"], want_std["score"])
    assert t.rng.bit_generator.state == state
    # without mc_samples: evaluation mode, as before
    assert np.array_equal(t.predict({"x": X})["score"], mod.forward(p, x=X)["score"])


def test_mc_samples_must_be_a_positive_whole_number(moons):
    mod, p, X, _ = moons
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="mc_samples must be a whole number >= 1"):
            gc.predict(mod, p, {"x": X}, mc_samples=bad)


# ---- lr_find --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def line():
    """Linear regression on 3 features (a convex loss), 256 samples, noise 0.01."""
    m = gc.Model("small_data_line")
    x, y = m.input("x", 3), m.target("y")
    w, b = m.param("w", 3, init=0), m.param("b", init=0)
    pred = m.output("pred", w[0] * x[0] + w[1] * x[1] + w[2] * x[2] + b)
    m.loss((pred - y) ** 2)
    mod = gc.compile_model(m)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 3))
    Y = X @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.01 * rng.normal(size=256)
    return mod, {"x": X, "y": Y}


def test_mc_dropout_without_dropout_warns_and_gives_zero_std(line):
    mod, data = line
    p = mod.init_params(seed=0)
    with pytest.warns(UserWarning, match="no dropout"):
        mean, std = gc.predict(mod, p, {"x": data["x"]}, mc_samples=10)
    assert np.array_equal(mean["pred"], mod.forward(p, x=data["x"])["pred"])
    assert std["pred"].shape == mean["pred"].shape and np.all(std["pred"] == 0)


def test_lr_find_leaves_the_params_bit_identical(line):
    mod, data = line
    p = mod.init_params(seed=0)
    p["w"] = np.array([0.1, 0.2, 0.3])
    before = p.flat.copy()
    res = gc.lr_find(mod, p, data, optimizer="adam", batch_size=32)
    assert len(res.lrs) > 10
    assert np.array_equal(p.flat, before)
    plain = {k: v.copy() for k, v in p.items()}             # a plain dict of arrays, too
    kept = {k: v.copy() for k, v in plain.items()}
    gc.lr_find(mod, plain, data, optimizer="sgd", batch_size=32)
    assert all(np.array_equal(plain[k], kept[k]) for k in kept)


def test_lr_find_suggestion_trains_a_convex_model_with_sgd(line):
    mod, data = line
    p = mod.init_params(seed=0)
    res = gc.lr_find(mod, p, data, optimizer="sgd", batch_size=32)
    # the README quotes these numbers
    assert res.suggestion == pytest.approx(0.115, rel=0.01)
    assert mod.loss(p, **data) == pytest.approx(6.29, rel=0.01)
    gc.fit(mod, p, data, epochs=5, batch_size=32, optimizer="sgd", lr=res.suggestion, seed=0)
    assert mod.loss(p, **data) < 1e-4
    tenth = gc.lr_find(mod, mod.init_params(seed=0), data, optimizer="sgd", batch_size=32, suggest="minimum")
    assert 1e-3 < tenth.suggestion < 1          # SGD on this loss diverges above lr 1


def test_lr_find_stops_early_when_the_loss_diverges(line):
    mod, data = line
    res = gc.lr_find(mod, mod.init_params(seed=0), data, optimizer="sgd", batch_size=32)
    assert res.stopped is not None and "exceeds 4 x the best" in res.stopped
    assert len(res.lrs) < 100 and res.lrs[-1] < 10
    assert res.losses[-1] > 4 * res.losses[:-1].min()
    calm = gc.lr_find(mod, mod.init_params(seed=0), data, optimizer="sgd", end_lr=1e-2, num_steps=30)
    assert calm.stopped is None and len(calm.lrs) == 30
    np.testing.assert_allclose(calm.lrs[[0, -1]], [1e-7, 1e-2])


def test_lr_find_is_reproducible_with_its_seed(line):
    mod, data = line
    a = gc.lr_find(mod, mod.init_params(seed=0), data, seed=3)
    b = gc.lr_find(mod, mod.init_params(seed=0), data, seed=3)
    assert np.array_equal(a.losses, b.losses) and a.suggestion == b.suggestion


def test_lr_find_refuses_a_bad_range(line):
    mod, data = line
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        gc.lr_find(mod, mod.init_params(seed=0), data, start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ValueError, match="suggest must be"):
        gc.lr_find(mod, mod.init_params(seed=0), data, suggest="valley")
    with pytest.raises(ValueError, match="no learning rate to sweep"):
        gc.lr_find(mod, mod.init_params(seed=0), data, optimizer="lbfgs")


def test_lr_find_draws_its_plot(line, tmp_path):
    pytest.importorskip("matplotlib")
    mod, data = line
    path = tmp_path / "lr.png"
    gc.lr_find(mod, mod.init_params(seed=0), data, optimizer="sgd", plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_find_without_matplotlib_skips_the_plot_with_a_message(line, tmp_path, monkeypatch, capsys):
    mod, data = line
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib raises ImportError
    path = tmp_path / "lr.png"
    res = gc.lr_find(mod, mod.init_params(seed=0), data, optimizer="sgd", plot=str(path))
    assert not path.exists() and res.suggestion is not None
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_lr_find_stays_the_function_after_its_module_is_imported():
    import gradc.lr_finder  # noqa: F401
    assert callable(gc.lr_find) and gc.lr_find is gradc.lr_finder.lr_find
    assert gc.predict is gradc.train.predict


def test_the_readme_small_data_numbers_are_the_ones_these_tests_check():
    import os
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        text = f.read()
    section = text[text.index("### Small data"):text.index("### Examples")]
    for promise in ("more than 10 times", "suggests 0.115", "from 6.29 to below 1e-4", "trained for 60 epochs"):
        assert promise in section, promise
