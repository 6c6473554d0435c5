"""micrograd's moons demo, compiled: 100 full-batch SGD steps reach 100% training accuracy.

    python examples/moons/train.py [--dtype float32]

Compiles examples/moons/model.py (or takes it from the cache), makes the
two-moons data (100 points, noise 0.1) and trains with micrograd's schedule
lr_k = 1.0 - 0.9 * k / 100.
"""
import argparse
import os
import time

import numpy as np

import gradc

HERE = os.path.dirname(os.path.abspath(__file__))


def make_moons(n=100, noise=0.1, seed=1):
    """Two interleaving half circles, as scikit-learn draws them; labels in {-1, +1}."""
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    X = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], 1),
                        np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], 1)])
    y = np.concatenate([-np.ones(n_out), np.ones(n_in)])
    X += rng.normal(scale=noise, size=X.shape)
    perm = rng.permutation(n)
    return X[perm], y[perm]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    moons = gradc.load(os.path.join(HERE, "model.py"), dtype=args.dtype)
    print(f"compiled (or loaded) in {time.perf_counter() - t0:.2f} s")
    X, y = make_moons()
    p = moons.init_params(seed=0)
    t0 = time.perf_counter()
    for k in range(args.steps):
        loss, g = moons.loss_and_grad(p, x=X, y=y)
        lr = 1.0 - 0.9 * k / 100
        for name in p:
            p[name] -= lr * g[name]
        if k % 10 == 0 or k == args.steps - 1:
            acc = np.mean((moons.forward(p, x=X)["score"] > 0) == (y > 0))
            print(f"step {k:3d}  loss {loss:.4f}  accuracy {acc:.0%}")
    dt = time.perf_counter() - t0
    acc = float(np.mean((moons.forward(p, x=X)["score"] > 0) == (y > 0)))
    print(f"final: loss {moons.loss(p, x=X, y=y):.4f}, training accuracy {acc:.0%} "
          f"({args.steps} steps in {dt * 1e3:.1f} ms)")
    return acc


if __name__ == "__main__":
    main()
