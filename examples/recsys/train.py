"""Recommendation: matrix factorization with biases on synthetic ratings, against two baselines.

    python examples/recsys/train.py [--epochs 8]

The ratings are made the way the W5 workload's are: 1,000 users, 1,700
items, 100,000 ratings in 1..5 from a low-rank model with user and item
biases, popular items rated more often. The example makes its own data.
"""
import argparse
import os

import numpy as np

import gradc

HERE = os.path.dirname(os.path.abspath(__file__))
N_USERS, N_ITEMS = 1000, 1700          # as in model.py


def make_ratings(n=100_000, rank=8, seed=0):
    """(user, item, rating) arrays: round(mu + bu + bi + P.Q + noise) clipped to 1..5."""
    rng = np.random.default_rng(seed)
    P = rng.normal(0, 0.35, (N_USERS, rank))
    Q = rng.normal(0, 0.35, (N_ITEMS, rank))
    bu, bi = rng.normal(0, 0.3, N_USERS), rng.normal(0, 0.5, N_ITEMS)
    pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.6
    pairs = set()
    while len(pairs) < n:     # distinct (user, item) pairs, popular items more often
        u = rng.integers(0, N_USERS, n)
        i = rng.choice(N_ITEMS, n, p=pop / pop.sum())
        pairs.update(zip(u.tolist(), i.tolist()))
    pairs = sorted(pairs)[:n]
    rng.shuffle(pairs)
    u, i = np.array(pairs, dtype=np.int32).T
    r = 3.6 + bu[u] + bi[i] + np.sum(P[u] * Q[i], 1) + rng.normal(0, 0.4, n)
    return u, i, np.clip(np.round(r), 1, 5)


def bias_baseline(u, i, r, ut, it, lam=5.0, sweeps=5):
    """Regularized user and item offsets from the global mean, by alternating averages."""
    mu = r.mean()
    bu, bi = np.zeros(N_USERS), np.zeros(N_ITEMS)
    for _ in range(sweeps):
        bi = np.bincount(i, r - mu - bu[u], N_ITEMS) / (np.bincount(i, minlength=N_ITEMS) + lam)
        bu = np.bincount(u, r - mu - bi[i], N_USERS) / (np.bincount(u, minlength=N_USERS) + lam)
    return mu + bu[ut] + bi[it]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)
    mod = gradc.load(os.path.join(HERE, "model.py"))
    u, i, r = make_ratings()
    n_test = len(r) // 10
    tr, te = slice(n_test, None), slice(0, n_test)
    train = {"user": u[tr], "item": i[tr], "rating": r[tr]}
    test = {"user": u[te], "item": i[te], "rating": r[te]}
    rmse = lambda pred: float(np.sqrt(np.mean((pred - r[te]) ** 2)))  # noqa: E731
    res = {"global_mean": rmse(np.full(n_test, r[tr].mean())),
           "bias_only": rmse(bias_baseline(u[tr], i[tr], r[tr], u[te], i[te]))}
    p = mod.init_params(seed=0)
    p["mu"][...] = r[tr].mean()
    hist = gradc.fit(mod, p, train, epochs=args.epochs, batch_size=1024, optimizer="adam", lr=args.lr,
                     val_data=test, metrics=["rmse"], output="r_hat", target="rating", seed=0)
    res["factorization"] = hist["val_rmse"][-1]
    print("test RMSE: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
    return res


if __name__ == "__main__":
    main()
