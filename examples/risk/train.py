"""Tabular binary risk: logistic regression and an MLP with dropout, ROC AUC on a held-out split.

    python examples/risk/train.py

scikit-learn's breast-cancer table (569 rows, 30 features) stands in for
credit data; it ships with scikit-learn (``pip install gradc[examples]``).
"""
import argparse
import os

import numpy as np

import gradc
from gradc.metrics import roc_auc

HERE = os.path.dirname(os.path.abspath(__file__))


def load_split(seed=0):
    """Standardized features (train statistics), 75/25 split by a fixed permutation."""
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    X, y = d.data, d.target.astype(np.float64)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = len(X) // 4
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = X[tr].mean(0), X[tr].std(0)
    X = (X - mean) / std
    return {"x": X[tr], "y": y[tr]}, {"x": X[te], "y": y[te]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args(argv)
    train, test = load_split()
    res = {}
    for which, lr in (("logreg", 1e-2), ("mlp", 3e-3)):
        mod = gradc.load(os.path.join(HERE, "model.py"), model=which)
        p = mod.init_params(seed=0)
        hist = gradc.fit(mod, p, train, epochs=args.epochs, batch_size=32, optimizer="adam", lr=lr,
                         val_data=test, metrics=["loss", "auc", "accuracy"], seed=0)
        res[which] = {"auc": roc_auc(mod.forward(p, x=test["x"])["p"], test["y"]),
                      "accuracy": hist["val_accuracy"][-1]}
        print(f"{which:7s} test ROC AUC {res[which]['auc']:.4f}, accuracy {res[which]['accuracy']:.1%}")
    return res


if __name__ == "__main__":
    main()
