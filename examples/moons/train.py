"""micrograd's moons demo, compiled: 100 full-batch SGD steps reach 100% training accuracy.

    python examples/moons/train.py [--dtype float32] [--png build/moons.png]

Compiles examples/moons/model.py (or takes it from the cache), makes the
two-moons data (100 points, noise 0.1) and trains with micrograd's schedule
lr_k = 1.0 - 0.9 * k / 100, then draws the decision boundary when
matplotlib is installed (``pip install matplotlib``). It prints where the
compiled module lives (gradc's build cache) and where the picture went.
"""
import argparse
import os
import sys
import time

import numpy as np

import gradc
from gradc.optim.lr_scheduler import LambdaLR

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


def plot_boundary(moons, p, X, y, path):
    """A PNG of the decision boundary; returns False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xx, yy = np.meshgrid(np.linspace(-1.5, 2.5, 200), np.linspace(-1.0, 1.5, 200))
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    score = moons.forward(p, x=grid)["score"].reshape(xx.shape)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.contourf(xx, yy, score > 0, alpha=0.3, cmap="coolwarm")
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", s=20, edgecolors="k")
    ax.set_title("gradc: moons decision boundary")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--png", default=os.path.join("build", "moons.png"),
                    help="where to draw the decision boundary ('' for none)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    moons = gradc.load(os.path.join(HERE, "model.py"), dtype=args.dtype)
    print(f"compiled (or loaded) in {time.perf_counter() - t0:.2f} s: {module_location(moons)}")
    X, y = make_moons()
    p = moons.init_params(seed=0)
    t0 = time.perf_counter()
    hist = gradc.fit(moons, p, {"x": X, "y": y}, epochs=args.steps, batch_size=len(X), shuffle=False,
                     optimizer="sgd", lr=1.0, scheduler=lambda opt: LambdaLR(opt, lambda k: 1.0 - 0.9 * k / 100),
                     scheduler_interval="step", val_data={"x": X, "y": y}, metrics=["loss", "accuracy"])
    dt = time.perf_counter() - t0
    for k in list(range(0, args.steps, 10)) + [args.steps - 1]:
        print(f"step {k:3d}  loss {hist['loss'][k]:.4f}  accuracy {hist['val_accuracy'][k]:.0%}")
    acc = hist["val_accuracy"][-1]
    print(f"final: loss {hist['val_loss'][-1]:.4f}, training accuracy {acc:.0%} ({args.steps} steps in {dt:.2f} s)")
    if args.png and os.path.dirname(args.png):
        os.makedirs(os.path.dirname(args.png), exist_ok=True)
    if args.png:
        if plot_boundary(moons, p, X, y, args.png):
            print(f"wrote the decision boundary to {os.path.abspath(args.png)}")
        else:
            print("no picture: matplotlib is not installed (pip install matplotlib, then run this again)")
    return acc


def module_location(mod):
    """Where gradc keeps the compiled module: its folder in the build cache ($GRADC_CACHE_DIR)."""
    meta = getattr(gradc.runtime.runtime_of(mod), "meta", None) or {}
    ext = sys.modules.get(meta.get("module", ""))
    where = getattr(ext, "__file__", None)
    if where is None:
        return "the compiled module is in memory"
    return f"the compiled module is {os.path.basename(where)} in {os.path.dirname(where)}"


if __name__ == "__main__":
    main()
