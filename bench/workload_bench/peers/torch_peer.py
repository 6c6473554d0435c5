"""PyTorch eager, on one thread; ``torch_mf`` and ``torch_mlp`` also serve bench/gpu_check.py."""
import numpy as np

from ..timing import Runner, Skip


def build_torch(wl):
    try:
        import torch
    except ImportError as e:
        raise Skip(f"PyTorch not importable ({e})")
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass                                  # already set in this process
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
