"""PyTorch eager and torch.compile, on one thread; ``torch_mf`` and ``torch_mlp`` also serve
bench/gpu_check.py."""
import os
import tempfile
import time

import numpy as np

from ..timing import Runner, Skip


def _torch():
    try:
        import torch
    except ImportError as e:
        raise Skip(f"PyTorch not importable ({e})")
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass                                  # already set in this process
    return torch


def build_torch(wl, dtype=None):
    """PyTorch eager; ``dtype`` (W6 only, for its float64 reference check) overrides the workload's."""
    torch = _torch()
    if wl.kind == "cnn":
        train, batches, _ = _lenet_train(wl, torch, dtype or wl.dtype)
        nb = len(batches)

        def step(k):
            return train(*batches[k % nb])
        return Runner("torch", step, value=lambda t: t.item(), dtype=dtype or wl.dtype,
                      note="nn.Conv2d, nn.MaxPool2d, nn.Linear; F.cross_entropy; torch.optim.SGD")
    tdt = getattr(torch, wl.dtype)
    if wl.kind == "mf":
        params, loss_of, batches = torch_mf(wl, torch)
        opt = torch.optim.SGD(params, lr=wl.lr)
        nb = len(batches)

        def step(k):
            opt.zero_grad()
            loss = loss_of(*batches[k % nb])
            loss.backward()
            opt.step()
            return loss
        return Runner("torch", step, value=lambda t: t.item(), dtype=wl.dtype)

    F = torch.nn.functional
    net = torch_mlp(wl, torch)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=wl.lr) if wl.optimizer == "adam" else torch.optim.SGD(params, lr=wl.lr)
    ydt = torch.int64 if wl.head == "ce" else tdt
    batches = [(torch.tensor(X, dtype=tdt), torch.tensor(y, dtype=ydt)) for X, y in wl.mlp_batches()]
    nb = len(batches)
    if wl.head == "hinge":
        def loss_fn(z, y):
            return torch.relu(1 - y * z[:, 0]).mean() + 1e-4 * sum((q * q).sum() for q in params)
    elif wl.head == "bce":
        def loss_fn(z, y):
            return F.binary_cross_entropy(torch.sigmoid(z[:, 0]), y)
    else:
        loss_fn = F.cross_entropy
    group = opt.param_groups[0]
    sched = wl.id == "W1"

    def step(k):
        X, y = batches[k % nb]
        if sched:
            group["lr"] = wl.lr_at(k)
        opt.zero_grad()
        loss = loss_fn(net(X), y)
        loss.backward()
        opt.step()
        return loss
    return Runner("torch", step, value=lambda t: t.item(), dtype=wl.dtype)


def build_torch_compile(wl, workdir=None):
    """The eager step of ``build_torch`` (W6 only) under ``torch.compile`` (inductor): dynamo breaks the
    graph at ``loss.backward()``, so the forward + loss (with its backward from AOTAutograd) and the
    SGD update are compiled graphs. The compile happens in the first call, timed as the compile time;
    with ``workdir``, inductor's on-disk caches go to a fresh folder in it, so that the compile is cold
    (as gradc's, with its fresh ``GRADC_CACHE_DIR``)."""
    torch = _torch()
    if wl.kind != "cnn":
        raise Skip("torch.compile runs W6 only")
    if workdir is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchinductor-", dir=workdir)
    train, batches, reset = _lenet_train(wl, torch, wl.dtype)
    train = torch.compile(train)
    nb = len(batches)

    def step(k):
        return train(*batches[k % nb])
    t0 = time.perf_counter()
    step(0).item()
    compile_s = time.perf_counter() - t0
    reset()                                   # back to the shared init: the check starts from step 0
    return Runner("torch_compile", step, value=lambda t: t.item(), compile_s=compile_s, dtype=wl.dtype,
                  note=f"torch.compile (inductor, default mode) of the eager step; dynamo breaks the graph at "
                       f"loss.backward(); compiled in a first call ({compile_s:.1f} s), then the parameters "
                       f"reset to the shared init")


def torch_lenet(wl, torch, dtype=None, device=None):
    """W6's LeNet-5 as a ``torch.nn.Sequential`` from the shared initial parameters."""
    nn, tdt = torch.nn, getattr(torch, dtype or wl.dtype)
    init = wl.init
    net = nn.Sequential(nn.Conv2d(1, 6, 5, dtype=tdt), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 16, 5, dtype=tdt), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(256, 120, dtype=tdt), nn.ReLU(), nn.Linear(120, 84, dtype=tdt), nn.ReLU(),
                        nn.Linear(84, 10, dtype=tdt))
    with torch.no_grad():
        for li, (w, b) in zip((0, 3, 7, 9, 11), (("K1", "c1"), ("K2", "c2"), ("W3", "b3"), ("W4", "b4"),
                                                ("W5", "b5"))):
            v = init[w]
            net[li].weight.copy_(torch.from_numpy(np.ascontiguousarray(v.T if v.ndim == 2 else v)))
            net[li].bias.copy_(torch.from_numpy(init[b]))
    return net if device is None else net.to(device)


def _lenet_train(wl, torch, dtype):
    """(train, batches, reset): ``train(X, y)`` runs one SGD step of W6 and returns the loss; the
    batches have the images as (B, 1, 28, 28); ``reset()`` puts the shared init back in place."""
    tdt = getattr(torch, dtype)
    net = torch_lenet(wl, torch, dtype)
    init = [q.detach().clone() for q in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=wl.lr)
    batches = [(torch.tensor(X[:, None], dtype=tdt), torch.tensor(y, dtype=torch.int64)) for X, y in wl.mlp_batches()]
    F = torch.nn.functional

    def train(X, y):
        opt.zero_grad()
        loss = F.cross_entropy(net(X), y)
        loss.backward()
        opt.step()
        return loss.detach()

    def reset():
        with torch.no_grad():
            for q, v in zip(net.parameters(), init):
                q.copy_(v)
    return train, batches, reset


def torch_mf(wl, torch, device=None):
    """W5 in PyTorch: (parameters from the shared init, loss(u, i, r), host batches (u, i, r))."""
    tdt = getattr(torch, wl.dtype)
    bu, bi, P, Q = (torch.tensor(wl.init[k], dtype=tdt, device=device, requires_grad=True)
                    for k in ("bu", "bi", "P", "Q"))
    mu = float(wl.data["mu"])

    def loss_of(u, i, r):
        Pu, Qi = P[u], Q[i]
        r_hat = mu + bu[u] + bi[i] + (Pu * Qi).sum(1)
        return ((r - r_hat) ** 2 + 1e-4 * ((Pu * Pu).sum(1) + (Qi * Qi).sum(1))).mean()
    batches = [(torch.from_numpy(u.astype(np.int64)), torch.from_numpy(i.astype(np.int64)),
                torch.tensor(r, dtype=tdt)) for u, i, r in wl.mf_batches()]
    return [bu, bi, P, Q], loss_of, batches


def torch_mlp(wl, torch, device=None):
    """The workload's MLP as a ``torch.nn.Sequential`` from its shared initial parameters."""
    nn, tdt = torch.nn, getattr(torch, wl.dtype)
    layers = []
    for li, (i, o) in enumerate(wl.layers, 1):
        lin = nn.Linear(i, o, dtype=tdt)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(wl.init[f"W{li}"].T.copy()))
            lin.bias.copy_(torch.from_numpy(wl.init[f"b{li}"]))
        layers.append(lin)
    body = []
    for lin in layers[:-1]:
        body += [lin, nn.Tanh() if wl.act == "tanh" else nn.ReLU()]
    net = nn.Sequential(*body, layers[-1])
    return net if device is None else net.to(device)
