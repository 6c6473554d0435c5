"""Train a model briefly, export it as C with its weights, and write a few samples for main.c.

    python prepare.py moons|digits [--dtype float32] [-o build/moons-float64]

Python runs here, at build time only; the program built from main.c needs none.
"""
import argparse
import os
import struct
import sys

import numpy as np

import gradc
from gradc.api import export, load_model_file

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.dirname(HERE)


# Each returns (training data, how to train, the device's own samples: data the trained model
# has not seen, so that on-device training has something to learn).

def moons_data():
    sys.path.insert(0, os.path.join(EXAMPLES, "moons"))
    from train import make_moons
    X, y = make_moons()
    Xd, yd = make_moons(n=100, noise=0.3, seed=7)
    return {"x": X, "y": y}, dict(optimizer="sgd", lr=0.5, epochs=100, batch_size=100), {"x": Xd, "y": yd}


def digits_data():
    from sklearn.datasets import load_digits
    d = load_digits()
    x, label = d.data / 16.0, d.target.astype(np.int32)
    return ({"x": x[:1500], "label": label[:1500]}, dict(optimizer="adam", lr=1e-3, epochs=5, batch_size=64),
            {"x": x[1500:], "label": label[1500:]})


DATA = {"moons": moons_data, "digits": digits_data}


def write_samples(path, data, dtype, n):
    """The first n samples in the format main.c reads."""
    (x_name, x), (y_name, y) = list(data.items())
    real = np.float32 if dtype == "float32" else np.float64
    with open(path, "wb") as f:
        f.write(b"GRDC" + struct.pack("<ii", np.dtype(real).itemsize, n))
        f.write(np.ascontiguousarray(x[:n], dtype=real).astype("<" + np.dtype(real).str[1:]).tobytes())
        yd = np.int32 if y.dtype.kind in "iu" else real
        f.write(np.ascontiguousarray(y[:n], dtype=yd).astype("<" + np.dtype(yd).str[1:]).tobytes())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(DATA))
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("-o", "--outdir", default=None)
    args = ap.parse_args(argv)
    out = args.outdir or os.path.join(HERE, "build", f"{args.model}-{args.dtype}")
    model_file = os.path.join(EXAMPLES, args.model, "model.py")
    mod = gradc.load(model_file, dtype=args.dtype)
    data, how, device = DATA[args.model]()
    p = mod.init_params(seed=0)
    epochs = how.pop("epochs")
    gradc.fit(mod, p, data, epochs=epochs, seed=0, **how)
    weights = os.path.join(out, "weights.npz")
    os.makedirs(out, exist_ok=True)
    np.savez(weights, **p)
    export(load_model_file(model_file), out, weights=weights, dtype=args.dtype)
    write_samples(os.path.join(out, "samples.bin"), device, args.dtype, args.samples)
    print(f"wrote {out}: {mod._compiled.meta['prefix']}.h, .c, _weights.c, samples.bin")
    return out


if __name__ == "__main__":
    main()
