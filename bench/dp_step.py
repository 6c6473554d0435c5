#!/usr/bin/env python3
"""DP-SGD's per-sample clipping, one step's gradient: gradc's kernel against Opacus and torch.func.

    python bench/dp_step.py [--repeats 30]

For each model (an MLP written once in gradc and once in PyTorch, float64, softmax cross-entropy)
and a batch of 256: the time to compute ``sum_s min(1, C / |g_s|) g_s`` over the batch, where g_s is
sample s's gradient, by

* gradc: ``loss_and_grad_clipped`` (the norms a block of 16 samples at a time in C, then the
  clipped sum as a weighted backward pass);
* Opacus: ``GradSampleModule`` (per-sample gradients by hooks), norms and the clipped sum in torch,
  as its optimizer does;
* torch.func: ``vmap(grad(...))`` per-sample gradients, then the same.

One thread, pinned to one core; medians of ``--repeats`` runs, all measured in the same run, after
a first pass over every model whose times are dropped. The three results are compared to 1e-9.
Peers missing are skipped.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"digits MLP 64-32-10": (64, 32, 10), "MNIST MLP 784-256-10": (784, 256, 10)}
BATCH, BOUND = 256, 1.0


def _gradc(sizes):
    import gradc as gc
    d_in, h, c = sizes
    m = gc.Model(f"dp_mlp_{d_in}_{h}_{c}")
    x, y = m.input("x", d_in), m.target("label", dtype="int32")
    W1, b1 = m.param("W1", (h, d_in), init=gc.init.linear()), m.param("b1", h, init=0)
    W2, b2 = m.param("W2", (c, h), init=gc.init.linear()), m.param("b2", c, init=0)
    logits = m.output("logits", W2 @ gc.tanh(W1 @ x + b1) + b2)
    m.loss(gc.softmax_cross_entropy(logits, y))
    return gc.compile_model(m)


def _median(fn, repeats):
    for _ in range(5):      # warm up: PyTorch builds its kernels and hooks' state on the first calls
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def run(repeats=30):
    """{model: {peer: seconds}} and the largest disagreement between the peers' clipped sums."""
    rng = np.random.default_rng(0)
    out, worst = {}, 0.0
    for label, sizes in MODELS.items():
        mod = _gradc(sizes)
        p = mod.init_params(seed=0)
        X = rng.normal(size=(BATCH, sizes[0]))
        Y = rng.integers(0, sizes[2], BATCH).astype(np.int32)
        scale = 1.0

        def gradc_step():
            return mod.loss_and_grad_clipped(p, BOUND, scale, x=X, label=Y)[1].flat
        ref = gradc_step().copy()
        times = {"gradc": _median(gradc_step, repeats)}
        try:
            import torch
        except ImportError:
            out[label] = times
            continue
        torch.set_num_threads(1)
        Xt, Yt = torch.tensor(X), torch.tensor(Y, dtype=torch.long)

        def net():
            n = torch.nn.Sequential(torch.nn.Linear(sizes[0], sizes[1]), torch.nn.Tanh(),
                                    torch.nn.Linear(sizes[1], sizes[2])).double()
            with torch.no_grad():
                n[0].weight.copy_(torch.tensor(p["W1"]))
                n[0].bias.copy_(torch.tensor(p["b1"]))
                n[2].weight.copy_(torch.tensor(p["W2"]))
                n[2].bias.copy_(torch.tensor(p["b2"]))
            return n

        def clipped_sum(per):      # per: list of (B, ...) per-sample gradients in gradc's order
            flat = torch.cat([g.reshape(BATCH, -1) for g in per], 1)
            f = torch.clamp(BOUND / flat.norm(dim=1), max=1.0)
            return (f[:, None] * flat).sum(0)
        try:
            import warnings

            from opacus import GradSampleModule
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gsm = GradSampleModule(net())
            lossf = torch.nn.CrossEntropyLoss(reduction="sum")

            def opacus_step():
                for q in gsm.parameters():
                    q.grad_sample, q.grad = None, None
                with warnings.catch_warnings():      # its hooks warn on every call that no input needs a gradient
                    warnings.simplefilter("ignore")
                    lossf(gsm(Xt), Yt).backward()
                return clipped_sum([q.grad_sample for q in gsm.parameters()])
            worst = max(worst, float(np.max(np.abs(opacus_step().numpy() - ref))))
            times["Opacus"] = _median(opacus_step, repeats)
        except ImportError:
            pass
        from torch.func import functional_call, grad, vmap
        model = net()
        params = {k: v.detach() for k, v in model.named_parameters()}

        def one(prm, x, y):
            return torch.nn.functional.cross_entropy(functional_call(model, prm, (x[None],)), y[None])
        per_sample = vmap(grad(one), in_dims=(None, 0, 0))

        def func_step():
            g = per_sample(params, Xt, Yt)
            return clipped_sum([g[k] for k in params])
        worst = max(worst, float(np.max(np.abs(func_step().numpy() - ref))))
        times["torch.func vmap"] = _median(func_step, repeats)
        out[label] = times
    return out, worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    run(3)      # a first pass whose times are dropped: the peers' allocators settle (a fresh process
    #             maps and unmaps PyTorch's per-sample buffers, 3x slower, until a large one has been freed)
    res, worst = run(args.repeats)
    if worst > 1e-9:
        print(f"the clipped sums disagree by {worst:.3g}", file=sys.stderr)
        return 1
    print(f"clipped sums agree to {worst:.1e}\n")
    print("| model, batch 256 | gradc | Opacus | torch.func vmap |\n|---|---:|---:|---:|")
    for label, t in res.items():
        cells = [f"{1e3 * t['gradc']:.2f} ms"]
        for peer in ("Opacus", "torch.func vmap"):
            cells.append(f"{1e3 * t[peer]:.2f} ms ({t[peer] / t['gradc']:.1f}x)" if peer in t else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
