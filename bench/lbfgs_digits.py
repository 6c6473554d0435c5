#!/usr/bin/env python3
"""L-BFGS against Adam and against scikit-learn's MLPClassifier(solver="lbfgs") on the digits.

    python bench/lbfgs_digits.py

The digits example's model (64-32-10 tanh, softmax cross-entropy) on its fixed 80/20 split:
gradc's L-BFGS with the strong-Wolfe line search (10 epochs of max_iter 20, full batch), the same
with scikit-learn's default L2 (alpha 1e-4, added to the loss as alpha/2 * sum of squared weights),
gradc's Adam with the example's settings, and scikit-learn's MLPClassifier with the same layer and
solver="lbfgs" (3 seeds). Prints a Markdown table of test accuracy (deterministic, seeded) and wall
time (one run: read it as rough). ``rows(which)`` is what the tests call.
"""
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DIGITS = os.path.join(ROOT, "examples", "digits")

L2_MODEL = '''
import sympy as sp
import gradc as gc
exec(open({path!r}).read())
m.regularize(sp.Rational(1, 2) * sp.Float(1e-4) * gc.sum_squares(*[m.tensor(n) for n in ("W1", "W2")]))
'''


def _data():
    sys.path.insert(0, DIGITS)
    try:
        from train import load_split
    finally:
        sys.path.remove(DIGITS)
        sys.modules.pop("train", None)
    return load_split()


def rows(which=("lbfgs", "lbfgs_l2", "adam", "sklearn"), tmp=None):
    """[(label, test accuracy, wall seconds)] for the runs named in ``which``."""
    import tempfile

    import gradc
    (X, y), (Xt, yt) = _data()
    out = []

    def gradc_run(label, path, epochs, **kw):
        mod = gradc.load(path)
        p = mod.init_params(seed=0)
        t0 = time.perf_counter()
        gradc.fit(mod, p, {"x": X, "label": y}, epochs=epochs, seed=0, **kw)
        dt = time.perf_counter() - t0
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
            clf = MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", solver="lbfgs", max_iter=200,
                                random_state=seed)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X, y)
            out.append((f"scikit-learn MLPClassifier lbfgs, seed {seed}", clf.score(Xt, yt), time.perf_counter() - t0))
    return out


def main():
    print("| run | test accuracy | wall time |\n|---|---:|---:|")
    for label, acc, dt in rows():
        print(f"| {label} | {100 * acc:.1f}% | {dt:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
