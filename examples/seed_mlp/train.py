"""The 5-10-1 MLP learns a linear rule on uniform data: Adam, batch 32, BCE.

    python examples/seed_mlp/train.py [--epochs 40]
"""
import argparse
import os

import numpy as np

import gradc

HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(n=1000, seed=0):
    """X ~ U[0, 1)^5 and y = 1 when x0 + x1 + x2 > x3 + x4 + 0.5 (about half the samples)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 5))
    y = (X[:, 0] + X[:, 1] + X[:, 2] > X[:, 3] + X[:, 4] + 0.5).astype(np.float64)
    return X, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)
    mod = gradc.load(os.path.join(HERE, "model.py"))
    X, y = make_data()
    p = mod.init_params(seed=0)
    hist = gradc.fit(mod, p, {"x": X, "y": y}, epochs=args.epochs, batch_size=32, optimizer="adam", lr=args.lr,
                     val_split=0.2, metrics=["loss", "accuracy"], seed=0)
    res = {"val_loss": hist["val_loss"][-1], "val_accuracy": hist["val_accuracy"][-1]}
    print(f"after {args.epochs} epochs: validation loss {res['val_loss']:.4f}, accuracy {res['val_accuracy']:.1%}")
    return res


if __name__ == "__main__":
    main()
