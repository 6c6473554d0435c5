"""Small images: scikit-learn's 8x8 digits, MLP 64-32-10 tanh, Adam, Gaussian-noise augmentation.

    python examples/digits/train.py [--epochs 60]

Needs scikit-learn (``pip install gradc[examples]``) for the images it ships.
"""
import argparse
import os

import numpy as np

import gradc

HERE = os.path.dirname(os.path.abspath(__file__))


def load_split(seed=0):
    """The 1,797 digits scaled to [0, 1], split 80/20 by a fixed permutation."""
    from sklearn.datasets import load_digits
    d = load_digits()
    X, y = d.data / 16.0, d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = len(X) // 5
    test, train = perm[:n_test], perm[n_test:]
    return (X[train], y[train]), (X[test], y[test])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise added to training images")
    ap.add_argument("--save", metavar="PATH", help="write the trained parameters to this .npz")
    args = ap.parse_args(argv)
    mod = gradc.load(os.path.join(HERE, "model.py"))
    (X, y), (Xt, yt) = load_split()
    p = mod.init_params(seed=0)
    hist = gradc.fit(mod, p, {"x": X, "label": y}, epochs=args.epochs, batch_size=64, optimizer="adam", lr=1e-3,
                     transform=gradc.GaussianNoise(args.noise, keys=["x"]), val_data={"x": Xt, "label": yt},
                     metrics=["loss", "accuracy"], seed=0)
    acc = hist["val_accuracy"][-1]
    print(f"test accuracy after {args.epochs} epochs: {acc:.1%} (test loss {hist['val_loss'][-1]:.4f})")
    if args.save:
        np.savez(args.save, **p)
    return acc


if __name__ == "__main__":
    main()
