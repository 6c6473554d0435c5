"""Sequences: a GRU over 12 months of account features predicts default; ROC AUC beside logistic
regression on the last month.

    python examples/timeseries/train.py [--epochs 20]

The data are synthetic and seeded (``make_accounts``): 5,000 accounts, 12 months of 5 features
each (utilization, log balance, payment ratio, a late-payment flag, cash advances). Default
follows a rule on the trajectory: utilization rising over the year, more so with late payments in
the last four months, two late months in a row, falling payments. The last month alone shows the
level, not the rise, and one month of lates, not the streak. On the held-out 1,000 accounts (an
80/20 split by a fixed permutation) the GRU (hidden size 16, 20 epochs, about 2 s of training)
reaches ROC AUC 0.9076, logistic regression on the last month's features 0.7770 (on all 60
numbers of the sequence, flattened, 0.8995); the rule's own default probabilities score 0.9223,
the best any model can. Seeded and deterministic; tests/test_examples_layers.py asserts GRU >= 0.90,
at least 0.10 above the last month's logistic regression, and above the flattened one. Needs
scikit-learn (``pip install gradc[examples]``) for the baselines.
"""
import argparse
import os
import time

import numpy as np

import gradc
from gradc.metrics import roc_auc
from gradc.optim.lr_scheduler import CosineAnnealingLR

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURES = ("utilization", "log_balance", "payment_ratio", "late", "cash_advances")


def make_accounts(n=5000, months=12, seed=0):
    """Synthetic monthly account histories ``X`` (n, months, 5), default labels ``y`` (n,) in {0, 1},
    and each account's true default probability ``prob`` (n,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(months)
    # utilization: a level of its own per account plus a drift over the year
    level, drift = rng.uniform(0.05, 0.85, n), rng.normal(0.0, 0.025, n)
    util = np.clip(level[:, None] + drift[:, None] * t + rng.normal(0, 0.04, (n, months)), 0, 1)
    limit = rng.lognormal(8.5, 0.6, n)
    log_balance = np.log1p(limit[:, None] * util)
    # 40% of the accounts come under stress from some month on: payments fall, lates and cash advances rise
    onset = np.where(rng.random(n) < 0.4, rng.integers(0, months, n), months + 100)
    stressed_for = np.clip(t[None, :] - onset[:, None] + 1, 0, None)           # months since the onset
    pay = np.clip(rng.uniform(0.2, 1.0, n)[:, None] - 0.06 * stressed_for + rng.normal(0, 0.12, (n, months)), 0, 1.5)
    p_late = rng.beta(1, 15, n)[:, None] + 0.08 * np.minimum(stressed_for, 4)
    late = (rng.random((n, months)) < p_late).astype(float)
    cash = rng.poisson(0.3 + 0.2 * (stressed_for > 0), (n, months)).astype(float)
    # the default rule, on the trajectory
    rise = util[:, -6:].mean(1) - util[:, :6].mean(1)
    recent_lates = late[:, -4:].sum(1)
    streak = (late[:, 1:] * late[:, :-1])[:, -4:].max(1)                    # two late months in a row, lately
    score = (8.0 * np.maximum(rise, 0) * (1 + recent_lates) + 2.0 * streak + 0.5 * recent_lates
             - 1.5 * pay[:, -6:].mean(1) - 1.0)
    prob = 1 / (1 + np.exp(-2.0 * score))
    y = (rng.random(n) < prob).astype(np.float64)
    return np.stack([util, log_balance, pay, late, cash], axis=-1), y, prob


def load_split(seed=0):
    """Standardized features (train statistics per feature), 80/20 split by a fixed permutation."""
    X, y, prob = make_accounts(seed=seed)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = len(X) // 5
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = X[tr].reshape(-1, X.shape[2]).mean(0), X[tr].reshape(-1, X.shape[2]).std(0)
    X = (X - mean) / std
    return {"x": X[tr], "y": y[tr]}, {"x": X[te], "y": y[te], "prob": prob[te]}


def logreg_auc(train, test, months):
    """scikit-learn's logistic regression on the given months' features (flattened)."""
    from sklearn.linear_model import LogisticRegression
    flat = lambda X: X[:, months].reshape(len(X), -1)
    clf = LogisticRegression(max_iter=1000).fit(flat(train["x"]), train["y"])
    return roc_auc(clf.predict_proba(flat(test["x"]))[:, 1], test["y"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args(argv)
    train, test = load_split()
    mod = gradc.load(os.path.join(HERE, "model.py"))
    p = mod.init_params(seed=0)
    t0 = time.perf_counter()
    gradc.fit(mod, p, train, epochs=args.epochs, batch_size=32, optimizer="adam", lr=3e-3,
              scheduler=lambda opt: CosineAnnealingLR(opt, T_max=args.epochs), seed=0)
    seconds = time.perf_counter() - t0
    res = {"gru": roc_auc(mod.forward(p, x=test["x"])["p"], test["y"]),
           "logreg_last_month": logreg_auc(train, test, slice(-1, None)),
           "logreg_all_months": logreg_auc(train, test, slice(None)),
           "true_probability": roc_auc(test["prob"], test["y"])}
    print(f"test ROC AUC: GRU {res['gru']:.4f} ({args.epochs} epochs, {seconds:.1f} s), logistic regression "
          f"on the last month {res['logreg_last_month']:.4f} (on all months {res['logreg_all_months']:.4f}; "
          f"the true probabilities {res['true_probability']:.4f})")
    return res


if __name__ == "__main__":
    main()
