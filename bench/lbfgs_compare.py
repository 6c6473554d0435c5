#!/usr/bin/env python3
"""L-BFGS against Adam and against scikit-learn (solver="lbfgs") on the digits and the risk data.

    python bench/lbfgs_compare.py

The digits example's model (64-32-10 tanh, softmax cross-entropy) on its fixed 80/20 split:
gradc's L-BFGS with the strong-Wolfe line search (10 epochs of max_iter 20, full batch), the same
with scikit-learn's default L2 (alpha 1e-4, added to the loss as alpha/2 * sum of squared weights),
gradc's Adam with the example's settings, and scikit-learn's MLPClassifier with the same layer and
solver="lbfgs" (3 seeds).

The risk example's models (30 features, breast-cancer table standing in for credit data, its fixed
75/25 split): logistic regression and the 30-16-1 MLP with dropout 0.2 trained by gradc's L-BFGS
(strong Wolfe, 10 epochs of max_iter 20; dropout masks drawn once per epoch), the MLP by the
example's Adam, and scikit-learn's LogisticRegression and MLPClassifier(16, solver="lbfgs").

Prints Markdown tables of test accuracy (and ROC AUC on the risk data; deterministic, seeded) and
wall time (the median of 7 runs, each from the same start, pinned to one core; compiles are not timed). ``rows(which)`` and ``risk_rows(which)`` are what the tests call.
"""
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DIGITS = os.path.join(ROOT, "examples", "digits")
RISK = os.path.join(ROOT, "examples", "risk")
REPEATS = 7         # wall times are medians of this many runs

L2_MODEL = '''
import sympy as sp
import gradc as gc
exec(open({path!r}).read())
m.regularize(sp.Rational(1, 2) * sp.Float(1e-4) * gc.sum_squares(*[m.tensor(n) for n in ("W1", "W2")]))
'''


def _data(folder=DIGITS):
    sys.path.insert(0, folder)
    try:
        from train import load_split
    finally:
        sys.path.remove(folder)
        sys.modules.pop("train", None)
    return load_split()


def _timed(fit, repeats):
    """The median wall time of ``repeats`` calls of ``fit()`` (each from the same start), and the
    last call's result."""
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fit()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), res


def rows(which=("lbfgs", "lbfgs_l2", "adam", "sklearn"), tmp=None, repeats=1):
    """[(label, test accuracy, median wall seconds of ``repeats`` runs)] for the runs in ``which``."""
    import tempfile

    import gradc
    (X, y), (Xt, yt) = _data()
    out = []

    def gradc_run(label, path, epochs, **kw):
        mod = gradc.load(path)

        def fit():
            p = mod.init_params(seed=0)
            gradc.fit(mod, p, {"x": X, "label": y}, epochs=epochs, seed=0, progress=False, **kw)
            return p
        dt, p = _timed(fit, repeats)
        acc = float(np.mean(np.argmax(mod.forward(p, x=Xt)["logits"], 1) == yt))
        out.append((label, acc, dt))
    model = os.path.join(DIGITS, "model.py")
    wolfe = dict(optimizer="lbfgs", optimizer_options=dict(line_search_fn="strong_wolfe"))
    if "lbfgs" in which:
        gradc_run("gradc L-BFGS, strong Wolfe, 10 epochs", model, 10, **wolfe)
    if "lbfgs_l2" in which:
        d = tmp or tempfile.mkdtemp()
        path = os.path.join(d, "digits_l2.py")
        with open(path, "w") as f:
            f.write(L2_MODEL.format(path=model))
        gradc_run("gradc L-BFGS, strong Wolfe, 10 epochs, L2 1e-4", path, 10, **wolfe)
    if "adam" in which:
        gradc_run("gradc Adam, lr 1e-3, batch 64, 60 epochs, noise 0.05", model, 60, optimizer="adam", lr=1e-3,
                  batch_size=64, transform=gradc.GaussianNoise(0.05, keys=["x"]))
    if "sklearn" in which:
        from sklearn.neural_network import MLPClassifier
        for seed in (0, 1, 2):
            def fit():
                clf = MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", solver="lbfgs", max_iter=200,
                                    random_state=seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return clf.fit(X, y)
            fit()              # a first fit outside the timing: scikit-learn imports lazily
            dt, clf = _timed(fit, repeats)
            out.append((f"scikit-learn MLPClassifier lbfgs, seed {seed}", clf.score(Xt, yt), dt))
    return out


def risk_rows(which=("lbfgs_logreg", "lbfgs_mlp", "adam", "sklearn"), repeats=1):
    """[(label, test accuracy, test ROC AUC, median wall seconds)] on the risk data."""
    import gradc
    from gradc.metrics import roc_auc
    train, test = _data(RISK)
    out = []
    model = os.path.join(RISK, "model.py")

    def gradc_run(label, which_model, epochs, **kw):
        mod = gradc.load(model, model=which_model)

        def fit():
            p = mod.init_params(seed=0)
            gradc.fit(mod, p, train, epochs=epochs, seed=0, progress=False, **kw)
            return p
        dt, p = _timed(fit, repeats)
        prob = mod.forward(p, x=test["x"])["p"]
        out.append((label, float(np.mean((prob > 0.5) == (test["y"] > 0.5))), roc_auc(prob, test["y"]), dt))
    wolfe = dict(optimizer="lbfgs", optimizer_options=dict(line_search_fn="strong_wolfe"))
    if "lbfgs_logreg" in which:
        gradc_run("gradc L-BFGS, strong Wolfe, 10 epochs: logistic regression", "logreg", 10, **wolfe)
    if "lbfgs_mlp" in which:
        gradc_run("gradc L-BFGS, strong Wolfe, 10 epochs: MLP 30-16-1", "mlp", 10, **wolfe)
    if "adam" in which:
        gradc_run("gradc Adam, lr 3e-3, batch 32, 60 epochs: MLP 30-16-1", "mlp", 60, optimizer="adam", lr=3e-3,
                  batch_size=32)
    if "sklearn" in which:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        X, y, Xt, yt = train["x"], train["y"], test["x"], test["y"]
        runs = [("scikit-learn LogisticRegression lbfgs", LogisticRegression(max_iter=1000))]
        runs += [(f"scikit-learn MLPClassifier(16) lbfgs, seed {seed}",
                  MLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=200, random_state=seed))
                 for seed in (0, 1, 2)]
        for label, clf in runs:
            def fit(clf=clf):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return clf.fit(X, y)
            fit()              # a first fit outside the timing: scikit-learn imports lazily
            dt, _ = _timed(fit, repeats)
            out.append((label, clf.score(Xt, yt), roc_auc(clf.predict_proba(Xt)[:, 1], yt), dt))
    return out


def main():
    if hasattr(os, "sched_setaffinity"):     # one core for every library: BLAS threads share it
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print("Digits:\n\n| run | test accuracy | wall time |\n|---|---:|---:|")
    for label, acc, dt in rows(repeats=REPEATS):
        print(f"| {label} | {100 * acc:.1f}% | {1e3 * dt:.1f} ms |")
    print("\nRisk:\n\n| run | test accuracy | test ROC AUC | wall time |\n|---|---:|---:|---:|")
    for label, acc, auc, dt in risk_rows(repeats=REPEATS):
        print(f"| {label} | {100 * acc:.1f}% | {auc:.4f} | {1e3 * dt:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
