"""W6's LeNet-5 in numpy written by hand: the forward and backward passes and SGD spelled out.

It serves twice: as the numpy peer of W6 (``peers/numpy_peer.py``) and, in float64, to compute the
reference losses (``ref_losses_f64``) of the data that ``definitions.generate_data`` makes when the
shared file is not at hand. It imports numpy only.

Parameters are in the workload file's layout: K1 (6, 1, 5, 5), c1, K2 (16, 6, 5, 5), c2 as
PyTorch's Conv2d; W3 (256, 120), W4 (120, 84), W5 (84, 10) as (fan_in, fan_out), the 16x4x4 map
flattened in (channel, row, column) order. Inside, the feature maps are (batch, row, column,
channel), so that each convolution is one matrix product over its 5x5 windows.
"""
import numpy as np

from numpy.lib.stride_tricks import sliding_window_view

PARAMS = ("K1", "c1", "K2", "c2", "W3", "b3", "W4", "b4", "W5", "b5")


def softmax_ce(z, y):
    """The mean softmax cross-entropy of logits ``z`` (B, K) against labels ``y``, and its gradient
    with respect to ``z`` (the max subtracted, as every peer does)."""
    B = z.shape[0]
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    se = e.sum(axis=1, keepdims=True)
    rows = np.arange(B)
    loss = float(np.mean(np.log(se[:, 0]) + zmax[:, 0] - z[rows, y]))
    dz = e / se
    dz[rows, y] -= 1
    return loss, dz / B


def _pool(a):
    """2x2 max-pool of (B, H, W, C); returns the pooled map and where the maxima were (a mask)."""
    B, H, W, C = a.shape
    w = a.reshape(B, H // 2, 2, W // 2, 2, C)
    p = w.max(axis=(2, 4))
    mask = w == p[:, :, None, :, None, :]     # ties only where a whole window is 0 after ReLU: no gradient there
    return p, mask


def _unpool(dp, mask):
    B, h, w, C = dp.shape
    return (mask * dp[:, :, None, :, None, :]).reshape(B, 2 * h, 2 * w, C)


def lenet_trainer(init, dtype):
    """(params, step): ``step(X, y, lr)`` runs one SGD step on the batch X (B, 28, 28), labels y, and
    returns the loss before the update; ``params`` are the arrays it updates in place."""
    dt = np.dtype(dtype)
    p = {k: np.array(init[k], dt) for k in PARAMS}
    K1m = p["K1"].reshape(6, 25)                 # views: updated in place with p
    K2m = p["K2"].reshape(16, 150)

    def step(X, y, lr):
        B = X.shape[0]
        win1 = sliding_window_view(X, (5, 5), axis=(1, 2))                  # (B, 24, 24, 5, 5)
        cols1 = win1.reshape(B * 576, 25)
        z1 = (cols1 @ K1m.T).reshape(B, 24, 24, 6) + p["c1"]
        a1 = np.maximum(z1, 0)
        p1, m1 = _pool(a1)                                                  # (B, 12, 12, 6)
        win2 = sliding_window_view(p1, (5, 5), axis=(1, 2))                 # (B, 8, 8, 6, 5, 5)
        cols2 = win2.reshape(B * 64, 150)                                   # (d, k, l) order, as K2
        z2 = (cols2 @ K2m.T).reshape(B, 8, 8, 16) + p["c2"]
        a2 = np.maximum(z2, 0)
        p2, m2 = _pool(a2)                                                  # (B, 4, 4, 16)
        f = p2.transpose(0, 3, 1, 2).reshape(B, 256)                        # (channel, row, column)
        h3 = np.maximum(f @ p["W3"] + p["b3"], 0)
        h4 = np.maximum(h3 @ p["W4"] + p["b4"], 0)
        z = h4 @ p["W5"] + p["b5"]
        loss, dz = softmax_ce(z, y)

        g = {"W5": h4.T @ dz, "b5": dz.sum(0)}
        d4 = (dz @ p["W5"].T) * (h4 > 0)
        g["W4"], g["b4"] = h3.T @ d4, d4.sum(0)
        d3 = (d4 @ p["W4"].T) * (h3 > 0)
        g["W3"], g["b3"] = f.T @ d3, d3.sum(0)
        dp2 = (d3 @ p["W3"].T).reshape(B, 16, 4, 4).transpose(0, 2, 3, 1)
        dz2 = _unpool(dp2, m2) * (z2 > 0)                                   # (B, 8, 8, 16)
        dz2m = dz2.reshape(B * 64, 16)
        g["K2"], g["c2"] = (dz2m.T @ cols2).reshape(16, 6, 5, 5), dz2m.sum(0)
        dcols2 = (dz2m @ K2m).reshape(B, 8, 8, 6, 5, 5)
        dp1 = np.zeros_like(p1)
        for k in range(5):                                                  # col2im: the 25 shifts added back
            for l in range(5):
                dp1[:, k:k + 8, l:l + 8, :] += dcols2[..., k, l]
        dz1 = _unpool(dp1, m1) * (z1 > 0)                                   # (B, 24, 24, 6)
        dz1m = dz1.reshape(B * 576, 6)
        g["K1"], g["c1"] = (dz1m.T @ cols1).reshape(6, 1, 5, 5), dz1m.sum(0)
        for k in PARAMS:
            p[k] -= dt.type(lr) * g[k]
        return loss
    return p, step


def reference_losses(data, n=10, lr=0.01):
    """The first n float64 losses of SGD from the data's initial parameters (batches[k % len])."""
    init = {k[5:]: v for k, v in data.items() if k.startswith("init_")}
    _, step = lenet_trainer(init, np.float64)
    X, y, batches = np.asarray(data["X"], np.float64), np.asarray(data["y"]), data["batches"]
    return np.array([step(X[batches[k % len(batches)]], y[batches[k % len(batches)]], lr) for k in range(n)])
