"""gradc.sklearn: GradcClassifier and GradcRegressor pass scikit-learn's estimator checks (every one,
none expected to fail), and work in pipelines, grid searches and cross-validation, over the default
MLP and over model files; they pickle, and predict the same after unpickling, also in a new process.

The check suite runs on four small instances: L-BFGS (the default) and the minibatch optimizers
(adam for the classifier, sgd for the regressor, which also have ``partial_fit``), each with one
hidden layer of 8 and at most 100 iterations, so that the whole suite takes well under a minute
after the compiles (a dozen default models, one per data shape the checks use).
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.base import clone                                        # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, make_regression   # noqa: E402
from sklearn.exceptions import ConvergenceWarning                      # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split   # noqa: E402
from sklearn.pipeline import make_pipeline                             # noqa: E402
from sklearn.preprocessing import StandardScaler                       # noqa: E402
from sklearn.utils.estimator_checks import (check_estimators_partial_fit_n_features,   # noqa: E402
                                            parametrize_with_checks)

import gradc.sklearn as gs                                             # noqa: E402
from gradc.sklearn import GradcClassifier, GradcRegressor              # noqa: E402

# short fits in the tests stop at max_iter on purpose; the warning is checked once, below
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RISK = os.path.join(ROOT, "examples", "risk", "model.py")
DIGITS = os.path.join(ROOT, "examples", "digits", "model.py")

SMALL = dict(hidden_layer_sizes=(8,), max_iter=100)
CHECKED = [GradcClassifier(**SMALL), GradcRegressor(**SMALL),
           GradcClassifier(optimizer="adam", lr=0.01, **SMALL), GradcRegressor(optimizer="sgd", lr=0.01, **SMALL)]


def _check_name(check):
    return getattr(check, "func", check).__name__


_RUN_CHECK = """
import pickle, sys, warnings
warnings.simplefilter("ignore")
est, check = pickle.load(sys.stdin.buffer)
check(est)
print("check passed")
"""


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    if _check_name(check) == "check_array_api_input":
        # scikit-learn runs it only with SCIPY_ARRAY_API=1 set before scipy is imported (it skips
        # otherwise): in a process of its own, so that this one's scipy is left as it is
        env = dict(os.environ, SCIPY_ARRAY_API="1")
        r = subprocess.run([sys.executable, "-c", _RUN_CHECK], input=pickle.dumps((estimator, check)),
                           capture_output=True, env=env, timeout=300)
        out = r.stdout.decode() + r.stderr.decode()
        assert r.returncode == 0 and "check passed" in out, out
        return
    check(estimator)


# ---- the default MLP -----------------------------------------------------------------

def _blobs(n=120, seed=0, classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (len(classes), 4))
    k = rng.integers(0, len(classes), n)
    return centers[k] + rng.normal(0, 1, (n, 4)), np.asarray(classes)[k]


def test_string_labels_probabilities_and_decisions():
    X, y = _blobs()
    clf = GradcClassifier(hidden_layer_sizes=(8,), random_state=0).fit(X, y)
    assert list(clf.classes_) == ["cat", "dog", "emu"] and clf.n_features_in_ == 4
    P, D = clf.predict_proba(X), clf.decision_function(X)
    assert P.shape == D.shape == (len(X), 3)
    np.testing.assert_allclose(P.sum(1), 1.0)
    assert np.array_equal(clf.predict(X), clf.classes_[np.argmax(D, 1)])
    assert clf.score(X, y) > 0.95
    assert set(clf.params_) == {"W0", "b0", "W1", "b1"} and clf.params_["W0"].shape == (8, 4)
    assert clf.n_iter_ == len(clf.loss_curve_) - 1 or clf.n_iter_ == clf.max_iter
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]

    yb = np.where(y == "cat", "cat", "other")           # 2 classes: one logit, its sigmoid
    b = GradcClassifier(hidden_layer_sizes=(8,), random_state=0).fit(X, yb)
    d, p = b.decision_function(X), b.predict_proba(X)
    assert d.shape == (len(X),) and p.shape == (len(X), 2) and set(b.params_) == {"W0", "b0", "W1", "b1"}
    assert b.params_["W1"].shape == (1, 8)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-12)
    assert np.array_equal(b.predict(X), np.where(d > 0, "other", "cat"))


def test_regressor_single_and_multi_output():
    X, y = make_regression(n_samples=150, n_features=5, n_targets=2, noise=0.1, random_state=0)
    y = y / y.std(0)
    reg = GradcRegressor(hidden_layer_sizes=(), random_state=0, tol=1e-8).fit(X, y)     # linear: least squares
    assert reg.predict(X).shape == (150, 2) and reg.n_outputs_ == 2
    assert reg.score(X, y) > 0.999
    one = GradcRegressor(hidden_layer_sizes=(16,), activation="tanh", random_state=0).fit(X, y[:, 0])
    assert one.predict(X).shape == (150,) and one.score(X, y[:, 0]) > 0.99
    col = GradcRegressor(hidden_layer_sizes=(16,), activation="tanh", random_state=0).fit(X, y[:, :1])
    assert col.predict(X).shape == (150, 1)
    np.testing.assert_array_equal(col.predict(X)[:, 0], one.predict(X))


def test_sample_weight_is_removal_and_repetition_and_class_weight_multiplies_it():
    # equal objectives, the same initial parameters (they do not depend on the number of samples):
    # the same minimum, up to the optimizer's tolerance, when the objective is smooth and L-BFGS
    # converges. (A relu network often ends on a kink, where the gradient does not vanish and two
    # runs whose sums are rounded differently may stop at different kinks; on the checks' data the
    # probabilities saturate, and scikit-learn's check passes with relu too.)
    X, y = _blobs(60, seed=1)
    sw = np.random.default_rng(2).integers(0, 4, len(y))
    for kw, rtol in ((dict(hidden_layer_sizes=()), 1e-7),                   # convex: logistic regression
                     (dict(hidden_layer_sizes=(8,), activation="tanh"), 1e-6)):
        kw.update(alpha=1.0, random_state=0, tol=1e-9, max_iter=1000)
        weighted = GradcClassifier(**kw).fit(X, y, sample_weight=sw)
        repeated = GradcClassifier(**kw).fit(X.repeat(sw, 0), y.repeat(sw))
        assert weighted.n_iter_ < 1000 and repeated.n_iter_ < 1000
        np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=rtol, atol=1e-9)
    kw = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=50)
    cw = {"cat": 3.0, "dog": 1.0, "emu": 0.5}
    a = GradcClassifier(class_weight=cw, **kw).fit(X, y, sample_weight=sw)
    b = GradcClassifier(**kw).fit(X, y, sample_weight=sw * np.vectorize(cw.get)(y))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    bal = GradcClassifier(class_weight="balanced", **kw).fit(X, y)
    assert bal.score(X, y) > 0.9
    with pytest.raises(ValueError, match="weight"):
        GradcClassifier(**kw).fit(X, y, sample_weight=np.zeros(len(y)))


def test_pickle_in_this_process_and_in_a_new_one(tmp_path):
    X, y = _blobs()
    clf = GradcClassifier(hidden_layer_sizes=(8,), random_state=0).fit(X, y)
    blob = pickle.dumps(clf)
    np.testing.assert_array_equal(pickle.loads(blob).predict_proba(X), clf.predict_proba(X))
    (tmp_path / "clf.pkl").write_bytes(blob)
    np.save(tmp_path / "X.npy", X)
    code = ("import pickle, sys, numpy as np; clf = pickle.load(open(sys.argv[1], 'rb'));"
            "np.save(sys.argv[3], clf.predict_proba(np.load(sys.argv[2])))")
    for cache in (os.environ.get("GRADC_CACHE_DIR"), str(tmp_path / "empty-cache")):
        env = dict(os.environ)
        if cache:                       # the session's cache (a hit), then an empty one (a compile)
            env["GRADC_CACHE_DIR"] = cache
        out = tmp_path / "P.npy"
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "clf.pkl"), str(tmp_path / "X.npy"), str(out)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(np.load(out), clf.predict_proba(X))


def test_a_default_model_is_compiled_once_per_shape(count_differentiate, monkeypatch):
    monkeypatch.setattr(gs, "_LOADED", {})            # forget this process's loaded modules
    X, y = _blobs(40, seed=3)
    X = np.hstack([X, X[:, :1]])                       # 5 features: a shape no other test uses
    GradcClassifier(hidden_layer_sizes=(3,), random_state=0, max_iter=5).fit(X, y)
    first = len(count_differentiate)
    GradcClassifier(hidden_layer_sizes=(3,), random_state=1, max_iter=5).fit(X[:20], y[:20])
    clone(GradcClassifier(hidden_layer_sizes=(3,), alpha=1.0, max_iter=5)).fit(X, y)    # alpha is not compiled in
    assert len(count_differentiate) == first
    monkeypatch.setattr(gs, "_LOADED", {})            # a new process: gradc's build cache has it
    GradcClassifier(hidden_layer_sizes=(3,), random_state=0, max_iter=5).fit(X, y)
    assert len(count_differentiate) == first
    GradcClassifier(hidden_layer_sizes=(3,), activation="tanh", max_iter=5).fit(X, y)
    assert len(count_differentiate) == first + 1


def test_warm_start_partial_fit_and_the_optimizer_state():
    X, y = _blobs(200, seed=4)
    kw = dict(hidden_layer_sizes=(8,), optimizer="adam", lr=0.01, batch_size=32, random_state=0)
    # two partial_fit epochs continue the optimizer's state and the shuffling: as fit with max_iter=2
    whole = GradcClassifier(max_iter=2, **kw).fit(X, y)
    parts = GradcClassifier(**kw)
    parts.partial_fit(X, y, classes=["cat", "dog", "emu"]).partial_fit(X, y)
    for k in whole.params_:
        np.testing.assert_array_equal(parts.params_[k], whole.params_[k])
    assert parts.n_iter_ == 2 and parts.loss_curve_ == whole.loss_curve_
    resumed = GradcClassifier(**kw).partial_fit(X, y, classes=["emu", "dog", "cat"])
    resumed = pickle.loads(pickle.dumps(resumed)).partial_fit(X, y)     # the state travels in the pickle
    for k in whole.params_:
        np.testing.assert_array_equal(resumed.params_[k], whole.params_[k])
    with pytest.raises(ValueError, match="classes"):
        GradcClassifier(**kw).partial_fit(X, y)
    with pytest.raises(ValueError, match="first call had"):
        parts.partial_fit(X, y, classes=["cat", "dog"])
    with pytest.raises(ValueError, match="not among classes_"):
        parts.partial_fit(X[:3], ["cat", "dog", "yak"])
    assert not hasattr(GradcClassifier(), "partial_fit")      # L-BFGS: full batch only, as scikit-learn's
    with pytest.raises(ValueError, match="balanced"):
        GradcClassifier(class_weight="balanced", **kw).partial_fit(X, y, classes=["cat", "dog", "emu"])
    check_estimators_partial_fit_n_features("GradcClassifier", GradcClassifier(**kw))

    reg = GradcRegressor(hidden_layer_sizes=(4,), random_state=0, max_iter=3)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        reg.fit(X, X[:, 0])
    loss = reg.loss_
    reg.set_params(warm_start=True, max_iter=200).fit(X, X[:, 0])
    assert reg.n_iter_ > 3 and len(reg.loss_curve_) > 4 and reg.loss_ < loss


def test_parameters_are_checked_in_fit_and_verbose_prints(capsys):
    X, y = _blobs(30)
    for bad in (dict(activation="gelu"), dict(optimizer="rmsprop"), dict(hidden_layer_sizes=(0,)),
                dict(alpha=-1), dict(max_iter=0), dict(batch_size=0), dict(dtype="int8"), dict(lr=0.0)):
        est = GradcClassifier(**bad)          # __init__ stores, fit refuses
        with pytest.raises(ValueError, match=next(iter(bad))):
            est.fit(X, y)
    GradcClassifier(hidden_layer_sizes=(4,), max_iter=3, verbose=True, random_state=0).fit(X, y)
    assert "Iteration 1, loss = " in capsys.readouterr().out
    f32 = GradcClassifier(hidden_layer_sizes=(8,), dtype="float32", random_state=0).fit(X, y)
    assert f32.params_["W0"].dtype == np.float32 and f32.predict_proba(X).dtype == np.float64
    assert f32.score(X, y) > 0.9


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    X, y = _blobs(40)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    clf = GradcClassifier(hidden_layer_sizes=(4,), random_state=0).fit(df, y)
    assert list(clf.feature_names_in_) == ["a", "b", "c", "d"]
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


# ---- scikit-learn's tools --------------------------------------------------------------

def test_grid_search_over_a_pipeline_and_cross_val_score():
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    pipe = make_pipeline(StandardScaler(), GradcClassifier(hidden_layer_sizes=(16,), random_state=0))
    search = GridSearchCV(pipe, {"gradcclassifier__alpha": [1e-4, 10.0]}, cv=3).fit(Xtr, ytr)
    assert search.best_params_ == {"gradcclassifier__alpha": 10.0}      # strong L2 helps on 30 features
    assert search.best_score_ > 0.95 and search.score(Xte, yte) > 0.95

    Xd, yd = load_digits(return_X_y=True)
    scores = cross_val_score(GradcClassifier(hidden_layer_sizes=(32,), alpha=1.0, random_state=0, max_iter=100),
                             Xd / 16.0, yd, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.9


# ---- model files ---------------------------------------------------------------------

def test_a_model_file_in_a_pipeline():
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    pipe = make_pipeline(StandardScaler(), GradcClassifier(RISK, model_name="risk_logreg", random_state=0))
    pipe.fit(Xtr, ytr)
    clf = pipe[-1]
    assert set(clf.params_) == {"w", "b"} and clf.params_["w"].shape == (1, 30)
    assert pipe.score(Xte, yte) > 0.95
    p, d = pipe.predict_proba(Xte), pipe.decision_function(Xte)   # the model's output "p" is a sigmoid
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-9)
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict_proba(Xte), p)
    # a model with dropout: masks in training only, so predictions are deterministic
    mlp = make_pipeline(StandardScaler(), GradcClassifier(RISK, model_name="risk_mlp", optimizer="adam", lr=3e-3,
                                                          batch_size=32, max_iter=30, random_state=0)).fit(Xtr, ytr)
    assert mlp.score(Xte, yte) > 0.93
    np.testing.assert_array_equal(mlp.predict_proba(Xte), mlp.predict_proba(Xte))
    # sample weights go through gradc.fit: zero weights remove samples
    kw = dict(model_name="risk_logreg", random_state=0, tol=1e-9, max_iter=500)
    sw = (np.arange(len(ytr)) % 3 != 0).astype(float)
    Xs = StandardScaler().fit_transform(Xtr)
    a = GradcClassifier(RISK, **kw).fit(Xs, ytr, sample_weight=sw)
    b = GradcClassifier(RISK, **kw).fit(Xs[sw > 0], ytr[sw > 0])
    np.testing.assert_allclose(a.predict_proba(Xs), b.predict_proba(Xs), rtol=1e-7, atol=1e-9)


def test_model_file_errors_are_clear():
    X, y = load_digits(return_X_y=True)
    with pytest.raises(ValueError, match="input 'x' takes 30 features, but X has 64 features"):
        GradcClassifier(RISK, model_name="risk_logreg").fit(X, y % 2)
    with pytest.raises(ValueError, match="model_name="):
        GradcClassifier(RISK).fit(X[:, :30], y % 2)
    with pytest.raises(ValueError, match="2 classes, but y has 10"):
        GradcClassifier(RISK, model_name="risk_logreg").fit(X[:, :30], y)
    with pytest.raises(ValueError, match="needs shape \\(3,\\)"):     # 10 logits for 3 classes
        GradcClassifier(DIGITS).fit(X, y % 3)
    with pytest.raises(ValueError, match="cannot read the model file"):
        GradcClassifier("no/such/model.py").fit(X, y)


def test_a_model_file_with_int_labels_and_a_regression_file(write_model):
    X, y = load_digits(return_X_y=True)
    clf = GradcClassifier(DIGITS, random_state=0, max_iter=50).fit(X / 16.0, y)
    assert clf.score(X / 16.0, y) > 0.95 and clf.predict_proba(X[:5]).shape == (5, 10)
    path = write_model(
        "import gradc as gc\n"
        "m = gc.Model('line')\n"
        "x, y = m.input('x', 3), m.target('y')\n"
        "w, b = m.param('w', (1, 3)), m.param('b', 1)\n"
        "z = m.output('z', (w @ x + b)[0])\n"
        "m.loss((z - y) ** 2)\n")
    rng = np.random.default_rng(0)
    Xr = rng.normal(size=(50, 3))
    yr = Xr @ [1.0, -2.0, 0.5] + 3.0
    reg = GradcRegressor(path, random_state=0, tol=1e-10).fit(Xr, yr)
    np.testing.assert_allclose(reg.params_["w"], [[1.0, -2.0, 0.5]], atol=1e-6)
    assert reg.predict(Xr).shape == (50,) and reg.score(Xr, yr) > 0.999999


def test_a_pickled_model_file_estimator_survives_its_file_changing(tmp_path, monkeypatch):
    src = open(RISK).read()
    path = tmp_path / "risk.py"
    path.write_text(src)
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = GradcClassifier(str(path), model_name="risk_logreg", random_state=0).fit(X, y)
    blob = pickle.dumps(clf)
    path.write_text(src.replace("1e-3", "1e-1"))      # another model now
    monkeypatch.setattr(gs, "_LOADED", {})            # as in a new process
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    path.unlink()
    monkeypatch.setattr(gs, "_LOADED", {})
    np.testing.assert_array_equal(pickle.loads(blob).predict_proba(X), clf.predict_proba(X))
