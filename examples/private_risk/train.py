"""Credit default with DP-SGD: test ROC AUC against the privacy spent (epsilon), and without privacy.

    python examples/private_risk/train.py [--model mlp|logreg] [--epochs 10] [--noise 0.6 1 2 4 6]

The data are a synthetic, seeded credit-default table made here (no download): 20,000 applicants,
12 features (age, log income, years employed, debt-to-income, revolving utilization, open credit
lines, delinquencies in 2 years, years of credit history, inquiries in 6 months, loan-to-income,
home owner, public record), about 18% defaults from a nonlinear rule (risk rises steeply past 70%
utilization and 35% debt-to-income, thin credit files and delinquencies add to it) plus an
unobserved "financial stress" that also shifts some features, and the coin flip of the outcome.
A fixed 75/25 split: 15,000 applicants to train on, 5,000 to test.

The same model (MLP 12-16-1 tanh by default), optimizer (SGD, lr 0.5), expected batch (256) and
epochs (10) train once without privacy and once per noise multiplier with
``fit(..., dp=dict(noise_multiplier=s, max_grad_norm=1.0, delta=1e-5))``; each run starts from the
same initial parameters and seed 0. The table reports epsilon at delta = 1e-5 (below 1/15,000)
from the RDP accountant, and the test ROC AUC and accuracy (threshold 0.5). The last row is the
constant "nobody defaults" answer: perfectly private (epsilon 0), AUC 0.5, and the accuracy to beat.

What the guarantee covers: the training steps. The standardization uses the training set's means
and standard deviations, and the settings were chosen by looking at test AUC; a strict deployment
would take scaling constants from public knowledge (or spend budget on them) and tune on public data.
"""
import argparse
import math
import os
import warnings

import numpy as np

import gradc
from gradc import privacy
from gradc.metrics import roc_auc

HERE = os.path.dirname(os.path.abspath(__file__))

FEATURES = ["age", "log_income", "employment_years", "debt_to_income", "revolving_utilization",
            "open_credit_lines", "delinquencies_2y", "credit_history_years", "inquiries_6m",
            "loan_to_income", "home_owner", "public_record"]
N_APPLICANTS = 20_000
NOISE = (0.6, 1.0, 2.0, 4.0, 6.0)
SETTINGS = dict(model="mlp", epochs=10, batch_size=256, lr=0.5, max_grad_norm=1.0, delta=1e-5)


def make_applicants(n=N_APPLICANTS, seed=0):
    """``(X, y)``: ``n`` applicants' raw features (columns as ``FEATURES``) and default labels (0/1)."""
    rng = np.random.default_rng(seed)
    stress = rng.normal(size=n)                                   # unobserved: shifts features and risk
    age = np.clip(rng.normal(41, 12, n), 21, 75)
    employed = np.minimum(age - 18, rng.gamma(1.6, 4.0, n))
    log_income = (np.log(48.0) + 0.012 * (age - 41) + 0.02 * np.minimum(employed, 15) - 0.15 * stress
                  + rng.normal(0, 0.45, n))                       # income in thousands a year
    dti = np.clip(rng.gamma(4.0, 0.07, n) * np.exp(0.15 * stress), 0, 1.5)
    util = np.clip(rng.beta(1.4, 3.0, n) + 0.12 * stress, 0, 1.3)
    history = np.clip((age - 18) * rng.beta(4, 2, n), 0.3, None)
    lines = rng.poisson(2 + 0.25 * np.clip(history, 0, 20))
    delinq = rng.poisson(0.25 * np.exp(0.6 * stress))
    inquiries = rng.poisson(0.8 * np.exp(0.35 * stress))
    lti = np.exp(rng.normal(np.log(12.0), 0.6, n) - log_income)  # loan of about 12 thousand / income
    owner = rng.random(n) < 1 / (1 + np.exp(1.8 - 0.07 * (age - 21) - 0.6 * (log_income - np.log(48))))
    public = rng.random(n) < 0.05 * np.exp(0.4 * stress)
    logit = (-3.1
             + 1.2 * util + 3.5 * np.maximum(util - 0.7, 0)       # steep past 70% utilization
             + 2.5 * np.maximum(dti - 0.35, 0)
             + 0.9 * np.log1p(delinq) + 0.6 * util * (delinq > 0)
             + 0.18 * inquiries
             - 0.7 * (log_income - np.log(48))
             + 0.9 * np.exp(-history / 3)                         # thin credit files
             + 0.7 * public - 0.3 * owner
             + 0.9 * lti
             + 0.35 * ((age - 45) / 15) ** 2
             - 0.03 * np.minimum(employed, 10)
             + 0.4 * stress)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    X = np.column_stack([age, log_income, employed, dti, util, lines, delinq, history, inquiries, lti,
                         owner, public]).astype(np.float64)
    return X, y


def load_split(seed=0):
    """Standardized features (training statistics), 75/25 split by a fixed permutation."""
    X, y = make_applicants()
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = len(X) // 4
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = X[tr].mean(0), X[tr].std(0)
    X = (X - mean) / std
    return {"x": X[tr], "y": y[tr]}, {"x": X[te], "y": y[te]}


def train_one(mod, train, test, noise_multiplier, *, epochs, batch_size, lr, max_grad_norm, delta, **_):
    """One run from the same start (seed 0); ``noise_multiplier=None`` trains without privacy.
    Returns a row: noise_multiplier, epsilon, auc, accuracy, and (private runs) sample_rate, steps."""
    p = mod.init_params(seed=0)
    kw = {}
    if noise_multiplier is not None:
        kw["dp"] = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta)
    with warnings.catch_warnings():
        # after the first epochs of a noisy run the best Renyi order lies above the accountant's
        # largest (63): those epochs' epsilon is an upper bound; the final one is checked below
        warnings.filterwarnings("ignore", message="the best Renyi order is the largest")
        hist = gradc.fit(mod, p, train, epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr,
                         seed=0, progress=False, **kw)
    prob = mod.forward(p, x=test["x"])["p"]
    row = dict(noise_multiplier=noise_multiplier, epsilon=math.inf, auc=roc_auc(prob, test["y"]),
               accuracy=float(np.mean((prob > 0.5) == (test["y"] > 0.5))))
    if noise_multiplier is not None:
        n = len(train["y"])
        q = min(1.0, batch_size / n)
        steps = epochs * max(1, round(1 / q))
        _, order = privacy.epsilon(q, noise_multiplier, steps, delta)       # warns at an edge order
        row.update(epsilon=hist["epsilon"][-1], order=order, sample_rate=q, steps=steps)
    return row


def rows(noise=NOISE, **settings):
    """The table's numbers: the non-private run first, then one row per noise multiplier."""
    cfg = dict(SETTINGS, **settings)
    mod = gradc.load(os.path.join(HERE, "model.py"), model=cfg["model"])
    train, test = load_split()
    out = [train_one(mod, train, test, None, **cfg)]
    out += [train_one(mod, train, test, float(s), **cfg) for s in noise]
    for r in out:
        r["delta"] = cfg["delta"]
    return out


def table(results, base_rate=None):
    """The Markdown table of ``rows()``; ``base_rate`` (the test set's default rate) adds the
    constant "nobody defaults" row."""
    delta = f"{results[0]['delta']:g}".replace("e-0", "e-")            # 1e-5, not 1e-05
    lines = [f"| noise multiplier | epsilon at delta = {delta} | test ROC AUC | test accuracy |",
             "|---|---:|---:|---:|"]
    for r in results:
        s = r["noise_multiplier"]
        name = "none (plain SGD)" if s is None else f"{s:g}"
        eps = "inf" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.2f}"
        lines.append(f"| {name} | {eps} | {r['auc']:.4f} | {r['accuracy']:.1%} |")
    if base_rate is not None:
        lines.append(f"| constant \"no default\" | 0 | 0.5000 | {1 - base_rate:.1%} |")
    return "\n".join(lines) + "\n"


def readme_table():
    """The table of the default run, exactly as README.md shows it."""
    return table(rows(), base_rate=float(np.mean(load_split()[1]["y"])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "logreg"), default=SETTINGS["model"])
    ap.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    ap.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="noise multipliers to run")
    args = ap.parse_args(argv)
    res = rows(noise=args.noise, model=args.model, epochs=args.epochs)
    print(table(res, base_rate=float(np.mean(load_split()[1]["y"]))), end="")
    return res


if __name__ == "__main__":
    main()
