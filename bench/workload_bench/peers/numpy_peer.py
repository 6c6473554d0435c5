"""numpy written by hand: the forward and backward passes and the optimizer step spelled out."""
import math

import numpy as np

from ..lenet_numpy import lenet_trainer, softmax_ce
from ..timing import Runner


def _np_adam(lr, params, b1=0.9, b2=0.999, eps=1e-8):
    """Adam over a list of arrays, torch.optim.Adam's formula; returns update(grads)."""
    m = [np.zeros_like(q) for q in params]
    v = [np.zeros_like(q) for q in params]
    t = [0]

    def update(grads):
        t[0] += 1
        step_size = lr / (1 - b1 ** t[0])
        bc2 = math.sqrt(1 - b2 ** t[0])
        for q, g, mq, vq in zip(params, grads, m, v):
            mq *= b1
            mq += (1 - b1) * g
            vq *= b2
            vq += (1 - b2) * (g * g)
            q -= step_size * mq / (np.sqrt(vq) / bc2 + eps)
    return update


def build_numpy(wl, dtype=None):
    dt = np.dtype(dtype or wl.dtype)
    init = wl.init
    if wl.kind == "mf":
        return _numpy_mf(wl, dt)
    if wl.kind == "cnn":
        return _numpy_lenet(wl, dt)
    L = len(wl.layers)
    Ws = [init[f"W{li}"].astype(dt) for li in range(1, L + 1)]        # (fan_in, fan_out): x @ W + b
    bs = [init[f"b{li}"].astype(dt) for li in range(1, L + 1)]
    params = [q for pair in zip(Ws, bs) for q in pair]
    ydt = np.int64 if wl.head == "ce" else dt
    batches = [(np.ascontiguousarray(X, dt), np.ascontiguousarray(y, ydt)) for X, y in wl.mlp_batches()]
    nb, tanh = len(batches), wl.act == "tanh"
    adam = _np_adam(wl.lr, params) if wl.optimizer == "adam" else None
    lam = 1e-4 if wl.head == "hinge" else 0.0

    def step(k):
        X, y = batches[k % nb]
        B = X.shape[0]
        hs = [X]                                  # the input of each layer
        for W, b in zip(Ws[:-1], bs[:-1]):
            z = hs[-1] @ W + b
            hs.append(np.tanh(z) if tanh else np.maximum(z, 0))
        z = hs[-1] @ Ws[-1] + bs[-1]
        if wl.head == "hinge":
            s = z[:, 0]
            margin = 1 - y * s
            loss = np.maximum(margin, 0).mean() + lam * sum(float(np.vdot(q, q)) for q in params)
            dz = (np.where(margin > 0, -y, 0) / B).astype(dt)[:, None]
        elif wl.head == "bce":                    # BCE of sigmoid(z), in the stable softplus form
            s = z[:, 0]
            loss = float(np.mean(np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))))
            dz = ((0.5 + 0.5 * np.tanh(0.5 * s) - y) / B)[:, None]
        else:                                     # softmax cross-entropy
            loss, dz = softmax_ce(z, y)
        grads = [None] * (2 * L)
        for li in range(L - 1, -1, -1):
            grads[2 * li] = hs[li].T @ dz
            grads[2 * li + 1] = dz.sum(axis=0)
            if li:
                dh = dz @ Ws[li].T
                dz = dh * (1 - hs[li] * hs[li]) if tanh else dh * (hs[li] > 0)
        if lam:
            for gq, q in zip(grads, params):
                gq += (2 * lam) * q
        if adam is not None:
            adam(grads)
        else:
            lr = wl.lr_at(k)
            for q, gq in zip(params, grads):
                q -= lr * gq
        return loss
    return Runner("numpy", step, dtype=wl.dtype)


def _numpy_lenet(wl, dt):
    """W6: the LeNet-5 of ``lenet_numpy`` (convolutions as matrix products over the 5x5 windows)."""
    _, train = lenet_trainer(wl.init, dt)
    batches = [(np.ascontiguousarray(X, dt), np.asarray(y, np.int64)) for X, y in wl.mlp_batches()]
    nb = len(batches)

    def step(k):
        return train(*batches[k % nb], wl.lr_at(k))
    return Runner("numpy", step, dtype=dt.name, note="convolutions as one matrix product over the 5x5 windows "
                                                     "(sliding_window_view), col2im by 25 shifted adds")


def _numpy_mf(wl, dt):
    init = wl.init
    bu, bi, P, Q = (init[k].astype(dt) for k in ("bu", "bi", "P", "Q"))
    mu, lam, lr = dt.type(wl.data["mu"]), 1e-4, wl.lr
    batches = [(u, i, r.astype(dt)) for u, i, r in wl.mf_batches()]
    nb = len(batches)

    def step(k):
        u, i, r = batches[k % nb]
        B = len(u)
        Pu, Qi = P[u], Q[i]
        err = mu + bu[u] + bi[i] + np.einsum("bk,bk->b", Pu, Qi) - r           # r_hat - r
        loss = float(np.mean(err * err + lam * (np.einsum("bk,bk->b", Pu, Pu) + np.einsum("bk,bk->b", Qi, Qi))))
        de = (2 / B) * err
        gP = de[:, None] * Qi + (2 * lam / B) * Pu
        gQ = de[:, None] * Pu + (2 * lam / B) * Qi
        # SGD on the rows the batch touches (rows hit twice get both updates)
        np.add.at(bu, u, -lr * de)
        np.add.at(bi, i, -lr * de)
        np.add.at(P, u, -lr * gP)
        np.add.at(Q, i, -lr * gQ)
        return loss
    return Runner("numpy", step, dtype=wl.dtype)
