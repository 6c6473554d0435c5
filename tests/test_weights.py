"""Sample and class weights in training and in the metrics (issue 16).

The weighted objective is ``sum w l / sum w``: integer weights train as repeated samples, zero
weights as removed ones (full-batch L-BFGS, where the objective is all that matters), and
``class_weight="balanced"`` is scikit-learn's ``compute_sample_weight("balanced", y)``. The
weighted metrics equal scikit-learn's with ``sample_weight``.
"""
import numpy as np
import pytest

import gradc as gc
from conftest import logistic_regression
from gradc.metrics import accuracy, mse, rmse, roc_auc
from gradc.train import Trainer

skm = pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def logreg():
    """Logistic regression on 5 features with L2, and an imbalanced data set (about 1 in 6 positive)."""
    mod = logistic_regression("w_logreg", 5)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    Y = (X @ np.array([1.0, -2, 0.5, 0, 1]) + rng.normal(size=300) * 1.5 > 2.2).astype(np.float64)
    return mod, X, Y


def _train(mod, data, epochs=15, **kw):
    p = mod.init_params(seed=0)
    hist = gc.fit(mod, p, data, epochs=epochs, optimizer="lbfgs", seed=0, progress=False, **kw)
    return p, hist


# ---- the metrics ---------------------------------------------------------------------

def test_weighted_metrics_equal_scikit_learns():
    rng = np.random.default_rng(1)
    w = rng.random(400) * 3
    w[:20] = 0
    y01 = (rng.random(400) < 0.3).astype(float)
    score = np.round(rng.normal(size=400) + y01, 1)          # rounded: many ties
    assert roc_auc(score, y01, w) == pytest.approx(skm.roc_auc_score(y01, score, sample_weight=w), abs=1e-14)
    assert roc_auc(score, y01) == pytest.approx(skm.roc_auc_score(y01, score), abs=1e-14)
    prob = rng.random(400)
    assert accuracy(prob, y01, w) == pytest.approx(skm.accuracy_score(y01, prob > 0.5, sample_weight=w), abs=1e-14)
    pm = 2 * y01 - 1
    assert accuracy(score - 0.5, pm, w) == pytest.approx(skm.accuracy_score(pm, np.where(score - 0.5 > 0, 1, -1),
                                                                             sample_weight=w), abs=1e-14)
    logits, labels = rng.normal(size=(400, 4)), rng.integers(0, 4, 400)
    assert accuracy(logits, labels, w) == pytest.approx(
        skm.accuracy_score(labels, logits.argmax(1), sample_weight=w), abs=1e-14)
    pred, tgt = rng.normal(size=(400, 3)), rng.normal(size=(400, 3))
    assert mse(pred, tgt, w) == pytest.approx(skm.mean_squared_error(tgt, pred, sample_weight=w), rel=1e-13)
    assert rmse(pred, tgt, w) == pytest.approx(np.sqrt(skm.mean_squared_error(tgt, pred, sample_weight=w)), rel=1e-13)
    with pytest.raises(ValueError, match="sample_weight has 3 values for 400 samples"):
        accuracy(prob, y01, [1, 2, 3])
    with pytest.raises(ValueError, match="not all zero"):
        roc_auc(score, y01, np.zeros(400))


def test_weighted_validation_metrics_in_fit(logreg):
    mod, X, Y = logreg
    vw = np.random.default_rng(2).random(100) + 0.5
    p, hist = _train(mod, {"x": X[:200], "y": Y[:200]}, epochs=3, val_data={"x": X[200:], "y": Y[200:]},
                     val_sample_weight=vw, metrics=["loss", "accuracy", "auc"])
    prob = mod.forward(p, x=X[200:])["p"]
    assert hist["val_auc"][-1] == pytest.approx(skm.roc_auc_score(Y[200:], prob, sample_weight=vw), abs=1e-14)
    assert hist["val_accuracy"][-1] == pytest.approx(skm.accuracy_score(Y[200:], prob > 0.5, sample_weight=vw), abs=1e-14)
    # the loss: sum w l / sum w, plus the regularization (as the unweighted loss has it)
    reg = 1e-3 * float(np.sum(p["w"] ** 2))
    ll = skm.log_loss(Y[200:], prob, sample_weight=vw)
    assert hist["val_loss"][-1] == pytest.approx(ll + reg, rel=1e-10)


# ---- training --------------------------------------------------------------------------

def test_integer_weights_train_as_repeated_samples(logreg):
    mod, X, Y = logreg
    counts = np.random.default_rng(3).integers(1, 4, len(X))
    p_w, _ = _train(mod, {"x": X, "y": Y}, sample_weight=counts)
    rep = np.repeat(np.arange(len(X)), counts)
    p_r, _ = _train(mod, {"x": X[rep], "y": Y[rep]})
    np.testing.assert_allclose(p_w.flat, p_r.flat, rtol=1e-7, atol=1e-9)


def test_zero_weights_train_as_removed_samples(logreg):
    mod, X, Y = logreg
    keep = np.random.default_rng(4).random(len(X)) < 0.6
    p_w, _ = _train(mod, {"x": X, "y": Y}, sample_weight=keep.astype(float))
    p_k, _ = _train(mod, {"x": X[keep], "y": Y[keep]})
    np.testing.assert_allclose(p_w.flat, p_k.flat, rtol=1e-7, atol=1e-9)


def test_balanced_class_weight_is_scikit_learns(logreg):
    from sklearn.utils.class_weight import compute_sample_weight
    mod, X, Y = logreg
    p_c, _ = _train(mod, {"x": X, "y": Y}, class_weight="balanced")
    p_s, _ = _train(mod, {"x": X, "y": Y}, sample_weight=compute_sample_weight("balanced", Y))
    np.testing.assert_allclose(p_c.flat, p_s.flat, rtol=1e-10, atol=1e-12)
    p_d, _ = _train(mod, {"x": X, "y": Y}, class_weight={0: 1.0, 1: 5.0})
    p_e, _ = _train(mod, {"x": X, "y": Y}, sample_weight=np.where(Y == 1, 5.0, 1.0))
    np.testing.assert_allclose(p_d.flat, p_e.flat, rtol=1e-10, atol=1e-12)


def test_class_weight_lifts_the_minority_class(logreg):
    """On imbalanced data, balanced weights trade accuracy on the majority for recall on the minority."""
    mod, X, Y = logreg
    recall = {}
    for cw in (None, "balanced"):
        p, _ = _train(mod, {"x": X, "y": Y}, class_weight=cw)
        pred = mod.forward(p, x=X)["p"] > 0.5
        recall[cw] = skm.recall_score(Y, pred)
    assert Y.mean() < 0.25
    assert recall["balanced"] > recall[None] + 0.1


def test_minibatch_weights_follow_their_samples(logreg):
    """With minibatches and shuffling, a sample's weight travels with it: doubling every weight
    changes nothing (they are scaled to mean 1), and with SGD the first step is the weighted mean."""
    mod, X, Y = logreg
    w = np.random.default_rng(5).random(len(X))
    runs = []
    for scale in (1.0, 2.0):
        p = mod.init_params(seed=0)
        gc.fit(mod, p, {"x": X, "y": Y}, epochs=2, batch_size=32, optimizer="sgd", lr=0.1, seed=0,
               sample_weight=w * scale, progress=False)
        runs.append(p.flat.copy())
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-12)
    p = mod.init_params(seed=0)
    t = Trainer(mod, p, optimizer="sgd", lr=0.1, batch_size=len(X), shuffle=False, seed=0, progress=False)
    before = p.flat.copy()
    t.fit({"x": X, "y": Y}, epochs=1, sample_weight=w)
    _, g = gc.runtime.runtime_of(mod).loss_and_grad_weighted(mod.init_params(seed=0), w * len(w) / w.sum(), x=X, y=Y)
    np.testing.assert_allclose(p.flat, before - 0.1 * g.flat, rtol=1e-13)


def test_bad_weights_are_refused_by_name(logreg):
    mod, X, Y = logreg
    data = {"x": X, "y": Y}
    cases = [
        (dict(sample_weight=np.ones(3)), "sample_weight has shape"),
        (dict(sample_weight=-np.ones(len(X))), "sample_weight must be finite and >= 0"),
        (dict(sample_weight=np.zeros(len(X))), "weight 0"),
        (dict(class_weight="balance"), "class_weight must be a dict or 'balanced'"),
        (dict(class_weight={1: -2.0}), r"class_weight\[1\] must be a finite number >= 0"),
        (dict(val_split=0.2, val_sample_weight=np.ones(60)), "held-out part keeps its sample_weight"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            gc.fit(mod, mod.init_params(seed=0), data, epochs=1, progress=False, **kw)
    with pytest.raises(ValueError, match="class_weight needs class labels"):
        gc.fit(mod, mod.init_params(seed=0), {"x": X, "y": Y + 0.5}, epochs=1, class_weight="balanced",
               progress=False)
