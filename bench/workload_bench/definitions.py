"""The six shared workloads (``../shared/WORKLOADS.md``) and their data: what each trains, on what.

``workloads()`` lists them as ``Workload`` records (model file, dtype, layers, optimizer, learning rate,
which peers run it, gradc's argument names); ``load_data`` reads a workload's ``.npz`` from the
shared folder and ``generate_data`` makes random data of the same shapes by the same recipes, seeded
(W6's with its float64 reference losses, computed by the numpy LeNet of ``lenet_numpy``).
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .lenet_numpy import reference_losses

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)
LOCAL_MODELS = os.path.join(BENCH, "workload_models")

PEERS = ("numpy", "torch", "torch_compile", "jax", "micrograd", "casadi")
LABELS = {"gradc": "gradc", "numpy": "numpy by hand", "torch": "PyTorch eager", "torch_compile": "torch.compile",
          "jax": "JAX jit", "micrograd": "micrograd", "casadi": "CasADi codegen"}

# W6 (LeNet-5 on 28x28): per layer, the multiply-adds of its forward pass for one sample
LENET_MACS = (("conv1", 24 * 24 * 6 * 25), ("conv2", 8 * 8 * 16 * 150), ("dense3", 256 * 120),
              ("dense4", 120 * 84), ("dense5", 84 * 10))


@dataclass
class Workload:
    id: str
    title: str
    dtype: str                      # gradc's, numpy's, PyTorch's and JAX's
    model: str                      # gradc model file
    kind: str                       # "mlp", "mf" or "cnn" (W6's LeNet-5)
    optimizer: str                  # "sgd" or "adam"
    lr: float
    file: str
    layers: tuple = ()              # MLP (fan_in, fan_out) per layer; CNN (name, forward MACs per sample)
    act: str = "relu"               # hidden activation
    head: str = ""                  # "hinge" (+ L2 1e-4 on all parameters), "bce" or "ce"
    peers: tuple = ("numpy", "torch", "jax")
    names: dict = field(default_factory=dict)   # gradc argument names
    data: dict = None               # filled by load/generate
    batches: list = None            # index arrays (None: the full set), step k uses batches[k % len]

    def lr_at(self, k):
        if self.id == "W1":         # micrograd's schedule, repeated every 100 steps
            return 1.0 - 0.9 * (k % 100) / 100
        return self.lr

    @property
    def init(self):
        return {k[5:]: v for k, v in self.data.items() if k.startswith("init_")}

    def mlp_batches(self):
        """[(X, y)] in float64 (y int64 for class labels), one per batch (W6: X is (B, 28, 28))."""
        X, y = self.data["X"], self.data["y"]
        out = []
        for idx in self.batches:
            if idx is None:
                out.append((X, y))
            else:
                out.append((X[idx], y[idx]))
        return out

    def mf_batches(self):
        d = self.data
        return [(d["u"][idx], d["i"][idx], d["r"][idx]) for idx in self.batches]

    @property
    def batch_size(self):
        b = self.batches[0]
        return len(self.data["X"]) if b is None else len(b)

    def flops(self):
        """GEMM-equivalent FLOPs of one step (elementwise work not counted)."""
        B = self.batch_size
        if self.kind == "mlp":
            f, n = 0, 0
            for li, (i, o) in enumerate(self.layers):
                f += 2 * B * i * o * (3 if li else 2)   # forward, dW, and dX except for the first layer
                n += i * o + o
        elif self.kind == "cnn":
            # each layer's forward MACs, again for its weight gradient and, but for conv1, its input gradient
            f = sum(2 * B * macs * (3 if li else 2) for li, (_, macs) in enumerate(self.layers))
            n = self.n_params
        else:
            R = self.data["init_P"].shape[1]
            n = sum(v.size for v in self.init.values())
            f = 12 * B * R                            # dot, L2 terms and the two row gradients
        return f + (10 if self.optimizer == "adam" else 2) * n

    @property
    def n_params(self):
        return sum(v.size for v in self.init.values())


def workloads():
    ex = os.path.join(ROOT, "examples")
    return [
        Workload("W1", "moons MLP 2-16-16-1, hinge + L2", "float64", os.path.join(ex, "moons", "model.py"), "mlp",
                 "sgd", 1.0, "w1_moons.npz", layers=((2, 16), (16, 16), (16, 1)), head="hinge",
                 peers=PEERS, names=dict(x="x", y="y")),
        Workload("W2", "MLP 5-10-1, ReLU, sigmoid + BCE", "float32", os.path.join(LOCAL_MODELS, "w2_mlp.py"), "mlp",
                 "sgd", 0.01, "w2_seed_mlp.npz", layers=((5, 10), (10, 1)), head="bce",
                 peers=PEERS, names=dict(x="x", y="y")),
        Workload("W3", "MNIST-sized MLP 784-256-10", "float32", os.path.join(ex, "mnist_mlp", "model.py"), "mlp",
                 "sgd", 0.01, "w3_mnist_random.npz", layers=((784, 256), (256, 10)), head="ce",
                 names=dict(x="x", y="label")),
        Workload("W4", "digits MLP 64-32-10 tanh, Adam", "float32", os.path.join(ex, "digits", "model.py"), "mlp",
                 "adam", 1e-3, "w4_digits.npz", layers=((64, 32), (32, 10)), act="tanh", head="ce",
                 peers=("numpy", "torch", "jax", "casadi"), names=dict(x="x", y="label")),
        Workload("W5", "matrix factorization, rank 32", "float32", os.path.join(LOCAL_MODELS, "w5_mf.py"), "mf",
                 "sgd", 0.05, "w5_mf.npz",
                 names=dict(u="user", i="item", mu="mu", r="rating")),
        Workload("W6", "LeNet-5 on 28x28", "float32", os.path.join(LOCAL_MODELS, "w6_lenet.py"), "cnn",
                 "sgd", 0.01, "w6_lenet.npz", layers=LENET_MACS, head="ce",
                 peers=("numpy", "torch", "torch_compile", "jax"), names=dict(x="x", y="label")),
    ]


def load_data(wl, folder):
    with np.load(os.path.join(folder, wl.file)) as z:
        wl.data = {k: z[k] for k in z.files}
    _set_batches(wl)


def _set_batches(wl):
    d = wl.data
    if "batches" in d:
        b = np.asarray(d["batches"])
        wl.batches = list(b.reshape(-1, b.shape[-1]))    # W4's (epochs, batches, 64) in order
    else:
        wl.batches = [None]


def _linear_init(rng, layers):
    out = {}
    for li, (i, o) in enumerate(layers, 1):
        s = 1 / math.sqrt(i)
        out[f"init_W{li}"] = rng.uniform(-s, s, (i, o))
        out[f"init_b{li}"] = rng.uniform(-s, s, o)
    return out


def generate_data(wl, seed=0):
    """Random data of the workload's shapes, seeded; the recipes of WORKLOADS.md where they are simple."""
    rng = np.random.default_rng([seed, int(wl.id[1:])])
    if wl.id == "W1":                                    # two interleaved half circles, as make_moons
        t = rng.uniform(0, math.pi, 100)
        top = rng.random(100) < 0.5
        X = np.where(top[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
        X = X + rng.normal(0, 0.1, X.shape)
        d = dict(X=X, y=np.where(top, -1.0, 1.0))
        for li, (i, o) in enumerate(wl.layers, 1):
            d[f"init_W{li}"], d[f"init_b{li}"] = rng.uniform(-1, 1, (i, o)), np.zeros(o)
    elif wl.id == "W2":
        X = rng.random((1000, 5))
        y = (X @ np.array([1.0, -2.0, 0.5, 1.5, -1.0]) + 0.1 * rng.normal(size=1000) > 0.0).astype(float)
        d = dict(X=X, y=y, batches=rng.permutation(1000)[:31 * 32].reshape(31, 32), **_linear_init(rng, wl.layers))
    elif wl.id == "W3":
        d = dict(X=rng.random((2048, 784)), y=rng.integers(0, 10, 2048),
                 batches=rng.permutation(2048).reshape(16, 128), **_linear_init(rng, wl.layers))
    elif wl.id == "W4":
        d = dict(X=rng.integers(0, 17, (1437, 64)) / 16, y=rng.integers(0, 10, 1437),
                 X_test=rng.integers(0, 17, (360, 64)) / 16, y_test=rng.integers(0, 10, 360),
                 batches=np.stack([rng.permutation(1437)[:22 * 64].reshape(22, 64) for _ in range(20)]),
                 **_linear_init(rng, wl.layers))
    elif wl.id == "W6":                                  # PyTorch's Conv2d and Linear default init
        d = dict(X=rng.random((1024, 28, 28)), y=rng.integers(0, 10, 1024),
                 batches=rng.permutation(1024).reshape(8, 128))
        for name, bias, shape in (("K1", "c1", (6, 1, 5, 5)), ("K2", "c2", (16, 6, 5, 5))):
            s = 1 / math.sqrt(np.prod(shape[1:]))
            d[f"init_{name}"], d[f"init_{bias}"] = rng.uniform(-s, s, shape), rng.uniform(-s, s, shape[0])
        lin = _linear_init(rng, ((256, 120), (120, 84), (84, 10)))
        d.update({k[:-1] + str(int(k[-1]) + 2): v for k, v in lin.items()})     # W1.. -> W3..
        d["ref_losses_f64"] = reference_losses(d, 10, wl.lr)
    else:
        nu, ni, R, n = 1000, 1700, 32, 100_000
        r = rng.integers(1, 6, n).astype(float)
        d = dict(u=rng.integers(0, nu, n), i=rng.integers(0, ni, n), r=r, mu=np.array(r.mean()),
                 batches=rng.permutation(n)[:97 * 1024].reshape(97, 1024),
                 init_P=rng.normal(0, 0.1, (nu, R)), init_Q=rng.normal(0, 0.1, (ni, R)),
                 init_bu=np.zeros(nu), init_bi=np.zeros(ni))
    wl.data = d
    _set_batches(wl)
