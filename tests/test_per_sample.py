"""Per-sample gradients in the generated kernel (issue 16): weighted losses, per-sample gradient
norms and DP-SGD's clipped sums.

Oracles: central finite differences of the weighted loss (float64), PyTorch's per-sample gradients
clipped by hand (when torch is installed), and single-sample calls of the plain ``loss_and_grad``.
A model whose parameters pass through a stage computed once per batch (a normalized weight)
checks that a sample's gradient includes the backward pass of those stages.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.runtime import runtime_of


def _mlp():
    """x(6) -> tanh(8) -> one logit, BCE, L2 on W1: written once here and once in PyTorch below."""
    m = gc.Model("ps_mlp")
    x, y = m.input("x", 6), m.target("y")
    W1, b1 = m.param("W1", (8, 6), init=gc.init.linear()), m.param("b1", 8, init=gc.init.uniform(-0.5, 0.5))
    W2, b2 = m.param("W2", (1, 8), init=gc.init.linear()), m.param("b2", 1, init=gc.init.uniform(-0.5, 0.5))
    z = (W2 @ gc.tanh(W1 @ x + b1) + b2)[0]
    m.output("z", z)
    m.loss(gc.bce_with_logits(z, y))
    m.regularize(1e-3 * gc.sum_squares(W1))
    return m


def _embed():
    """An embedding (an int32 id gathers a row) and a softmax over 3 classes, with dropout and L2."""
    m = gc.Model("ps_embed")
    u, x, y = m.input("u", dtype="int32"), m.input("x", 3), m.target("label", dtype="int32")
    E = m.param("E", (5, 4), init=gc.init.uniform(-1, 1))
    W = m.param("W", (3, 4), init=gc.init.uniform(-1, 1))
    V = m.param("V", (3, 3), init=gc.init.uniform(-1, 1))
    h = gc.dropout(gc.embedding(E, u), 0.3)
    logits = m.output("logits", W @ h + V @ x)
    m.loss(gc.softmax_cross_entropy(logits, y))
    m.regularize(1e-2 * gc.sum_squares(E, W))
    return m


def _batch_stage():
    """A weight normalized once per batch (V / |V|): each sample's gradient flows through it."""
    m = gc.Model("ps_wnorm")
    x, y = m.input("x", 3), m.target("y")
    V = m.param("V", 3, init=gc.init.uniform(-1, 1))
    s = m.param("s", 1, init=gc.init.uniform(0.5, 1.5))
    k = sp.Symbol("k", integer=True)
    norm = sp.sqrt(sp.Sum(V[k] ** 2, (k, 0, 2)))
    z = s[0] * sp.Sum(V[k] * x[k], (k, 0, 2)) / norm
    m.output("z", z)
    m.loss((z - y) ** 2)
    m.regularize(1e-2 * s[0] ** 2)
    return m


def _data(mod, n, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in {**mod.input_shapes, **mod.target_shapes}.items():
        dt = {**mod.input_dtypes, **mod.target_dtypes}[name]
        if dt == np.int32:
            bound = 5 if name == "u" else 3
            out[name] = rng.integers(0, bound, size=(n, *shape)).astype(np.int32)
        elif name == "y" and mod.name == "ps_mlp":
            out[name] = (rng.random(n) < 0.5).astype(np.float64)
        else:
            out[name] = rng.normal(size=(n, *shape))
    return out


#: which way each model's norms are computed: a block at a time with the gradients side by side
#: ("lanes"), or one sample at a time (a scatter through an index; a tensor computed once per batch)
PATH = {"mlp": "lanes", "embed": "one", "batch_stage": "one"}


@pytest.fixture(scope="module", params=["mlp", "embed", "batch_stage"])
def model(request):
    m = {"mlp": _mlp, "embed": _embed, "batch_stage": _batch_stage}[request.param]()
    entry, _ = gc.api.build_model(m)
    source = open(os.path.join(entry, m.name + ".c")).read()
    assert ("gradient kept apart in lanes" in source) == (PATH[request.param] == "lanes")
    assert ("one at a time (a statement" in source) == (PATH[request.param] == "one")
    mod = gc.compile_model(m)
    data = runtime_of(mod).fill_masks(_data(mod, 37, 1), np.random.default_rng(2))   # 37: a ragged last block
    return mod, mod.init_params(seed=3), data


def _per_sample_grads(mod, p, data):
    """Each sample's gradient, from the plain loss_and_grad on that sample alone minus the
    regularization's gradient (the gradient at weight 0)."""
    rt = runtime_of(mod)
    n = len(next(iter(data.values())))
    one = {k: v[:1] for k, v in data.items()}
    reg = rt.loss_and_grad_weighted(p, np.zeros(1), **one)[1].flat
    return np.array([mod.loss_and_grad(p, **{k: v[s:s + 1] for k, v in data.items()})[1].flat - reg
                     for s in range(n)]), reg


def test_unit_weights_are_loss_and_grad_to_the_bit(model):
    mod, p, data = model
    rt = runtime_of(mod)
    L, g = mod.loss_and_grad(p, **data)
    Lw, gw = rt.loss_and_grad_weighted(p, np.ones(37), **data)
    assert L == Lw and np.array_equal(g.flat, gw.flat)


def test_weighted_gradient_matches_finite_differences(model):
    mod, p, data = model
    rt = runtime_of(mod)
    w = np.random.default_rng(4).random(37) * 3
    _, g = rt.loss_and_grad_weighted(p, w, **data)
    flat = p.flat.copy()
    h = 1e-6
    fd = np.empty_like(flat)
    for j in range(len(flat)):
        for sign in (1, -1):
            p.flat[j] = flat[j] + sign * h
            L = rt.loss_and_grad_weighted(p, w, **data)[0]
            fd[j] = L if sign == 1 else (fd[j] - L) / (2 * h)
        p.flat[j] = flat[j]
    np.testing.assert_allclose(g.flat, fd, rtol=1e-6, atol=1e-8)
    # and the weighted loss is the weighted mean of the per-sample losses, plus regularization
    per = np.array([rt.loss_and_grad_weighted(p, np.ones(1), **{k: v[s:s + 1] for k, v in data.items()})[0]
                    for s in range(37)])
    reg = rt.loss_and_grad_weighted(p, np.zeros(1), **{k: v[:1] for k, v in data.items()})[0]
    assert rt.loss_and_grad_weighted(p, w, **data)[0] == pytest.approx(np.mean(w * (per - reg)) + reg, rel=1e-12)


def test_grad_norms_are_the_norms_of_each_samples_gradient(model):
    mod, p, data = model
    per, _ = _per_sample_grads(mod, p, data)
    norms = mod.grad_norms(p, **data)
    np.testing.assert_allclose(norms, np.linalg.norm(per, axis=1), rtol=1e-12)


@pytest.mark.parametrize("bound", [1e-3, 0.3, 1e6])
def test_clipped_sum_is_the_mean_of_clipped_per_sample_gradients(model, bound):
    mod, p, data = model
    per, reg = _per_sample_grads(mod, p, data)
    norms = np.linalg.norm(per, axis=1)
    want = (np.minimum(1, bound / norms)[:, None] * per).sum(0) / 37 + reg
    L, g, got_norms = mod.loss_and_grad_clipped(p, bound, **data)
    np.testing.assert_allclose(g.flat, want, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-12)
    assert L == mod.loss(p, **data)
    # a scale in place of 1/n: DP-SGD divides by the expected batch size
    _, g2, _ = mod.loss_and_grad_clipped(p, bound, 0.01, **data)
    np.testing.assert_allclose(g2.flat, (np.minimum(1, bound / norms)[:, None] * per).sum(0) * 0.01 + reg,
                               rtol=1e-10, atol=1e-15)


def test_threads_give_the_same_norms_and_sums(model):
    mod, p, data = model
    rt = runtime_of(mod)
    one_n = mod.grad_norms(p, **data)
    one = mod.loss_and_grad_clipped(p, 0.3, **data)
    onew = rt.loss_and_grad_weighted(p, np.linspace(0, 2, 37), **data)
    mod.set_threads(3)
    try:
        assert np.array_equal(mod.grad_norms(p, **data), one_n)      # each norm is computed alone
        three = mod.loss_and_grad_clipped(p, 0.3, **data)
        threew = rt.loss_and_grad_weighted(p, np.linspace(0, 2, 37), **data)
    finally:
        mod.set_threads(1)
    np.testing.assert_allclose(three[1].flat, one[1].flat, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(threew[1].flat, onew[1].flat, rtol=1e-13, atol=1e-16)
    assert three[0] == pytest.approx(one[0], rel=1e-14)


def test_clipped_sums_match_pytorch_per_sample_gradients():
    torch = pytest.importorskip("torch")
    mod = gc.compile_model(_mlp())
    p = mod.init_params(seed=5)
    data = _data(mod, 50, 6)
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    X, Y = torch.tensor(data["x"]), torch.tensor(data["y"])
    bound, per = 0.2, []
    for s in range(50):
        z = (t["W2"] @ torch.tanh(t["W1"] @ X[s] + t["b1"]) + t["b2"])[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, Y[s])
        gs = torch.autograd.grad(loss, list(t.values()))
        per.append(torch.cat([x.reshape(-1) for x in gs]))
    per = torch.stack(per)
    norms = per.norm(dim=1)
    clipped = (per * torch.clamp(bound / norms, max=1.0)[:, None]).sum(0) / 50
    reg = torch.cat([2e-3 * t["W1"].reshape(-1), torch.zeros(8 + 8 + 1, dtype=torch.float64)])
    L, g, got = mod.loss_and_grad_clipped(p, bound, **data)
    np.testing.assert_allclose(got, norms.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(g.flat, (clipped + reg).detach().numpy(), rtol=1e-11, atol=1e-15)
    assert np.any(got > bound)       # the bound clips some of them


def test_float32_build_agrees_with_float64():
    m = _mlp()
    m64, m32 = gc.compile_model(m), gc.compile_model(m, dtype="float32")
    p64 = m64.init_params(seed=7)
    p32 = m32.init_params(seed=7)
    p32.flat[:] = p64.flat
    data = _data(m64, 40, 8)
    d32 = {k: v.astype(np.float32) for k, v in data.items()}
    np.testing.assert_allclose(m32.grad_norms(p32, **d32), m64.grad_norms(p64, **data), rtol=2e-5)
    np.testing.assert_allclose(m32.loss_and_grad_clipped(p32, 0.1, **d32)[1].flat,
                               m64.loss_and_grad_clipped(p64, 0.1, **data)[1].flat, rtol=1e-4, atol=1e-6)


def test_bad_arguments_are_refused_by_name():
    mod = gc.compile_model(_mlp())
    rt = runtime_of(mod)
    p = mod.init_params(seed=0)
    data = _data(mod, 5, 0)
    with pytest.raises(ValueError, match="one value per sample"):
        rt.loss_and_grad_weighted(p, np.ones(4), **data)
    with pytest.raises(ValueError, match="finite and >= 0"):
        rt.loss_and_grad_weighted(p, np.array([1, 1, -1, 1, 1.0]), **data)
    with pytest.raises(ValueError, match="finite and >= 0"):
        rt.loss_and_grad_weighted(p, np.array([1, 1, np.nan, 1, 1.0]), **data)
    for bad in (0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="max_norm must be a positive finite number"):
            mod.loss_and_grad_clipped(p, bad, **data)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        mod.loss_and_grad_clipped(p, 1.0, -0.5, **data)
    with pytest.raises(ValueError, match="missing input or target 'y'"):
        mod.grad_norms(p, x=data["x"])
    # the C function checks its scalars itself: EARG, not a silent NaN
    M = rt.info.prefix
    fn = getattr(rt.lib, f"{M}_loss_grad_clipped")
    norms, out, g = np.empty(5), np.empty(1), np.empty(rt.n_params)
    work = np.empty(int(rt._ws_threads(5, 1)) // 8 + 1)
    ptr = rt._ptr
    for max_norm, scale in ((0.0, 0.2), (float("nan"), 0.2), (1.0, float("inf")), (1.0, 0.0)):
        rc = fn(1, 5, ptr(p.flat), ptr(data["x"]), ptr(data["y"]), max_norm, scale, ptr(norms), ptr(out), ptr(g), ptr(work), work.nbytes)
        assert rc == 5          # EARG
    rc = fn(1, 0, ptr(p.flat), ptr(data["x"]), ptr(data["y"]), 1.0, 0.2, ptr(norms), ptr(out), ptr(g), ptr(work), work.nbytes)
    assert rc == 1              # EBATCH
    rc = fn(1, 5, ptr(p.flat), ptr(data["x"]), ptr(data["y"]), 1.0, 0.2, rt.ffi.NULL, ptr(out), ptr(g), ptr(work), work.nbytes)
    assert rc == 2              # ENULL


def test_a_loss_computed_once_per_batch_has_no_per_sample_gradients():
    m = gc.Model("ps_batch_loss")
    w = m.param("w", 2, init=gc.init.uniform(-1, 1))
    m.loss(w[0] ** 2 + w[1] ** 2)
    mod = gc.compile_model(m)
    p = mod.init_params(seed=0)
    with pytest.raises(ValueError, match="no per-sample loss"):
        mod.grad_norms(p)


# ---- the exported C, under AddressSanitizer and UBSan -----------------------------------------

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "NAME.h"
/* grad_norms and loss_grad_clipped with exactly workspace_size_norms(n, T) bytes, loss_grad_weighted
   with exactly workspace_size_threads(n, T): ASan sees any overrun. Prints the largest difference
   of the norms from one thread's (they are computed alone: 0) and of the clipped gradients. */
int main(int argc, char **argv)
{
    const int T = argc > 1 ? atoi(argv[1]) : 1, n = 150;
    NAME_real *p = malloc(sizeof(NAME_real) * MU_N_PARAMS), *g = malloc(sizeof(NAME_real) * MU_N_PARAMS);
    NAME_real *g1 = malloc(sizeof(NAME_real) * MU_N_PARAMS);
    NAME_real *nr = malloc(sizeof(NAME_real) * n), *n1 = malloc(sizeof(NAME_real) * n), *w = malloc(sizeof(NAME_real) * n);
    for (int j = 0; j < MU_N_PARAMS; ++j) p[j] = (NAME_real)((j * 37) % 23) / 23 - (NAME_real)0.5;
    for (int s = 0; s < n; ++s) w[s] = (NAME_real)(s % 3);
    DATA
    const size_t b1 = NAME_workspace_size_norms(n, 1), bt = NAME_workspace_size_norms(n, T);
    const size_t bw = NAME_workspace_size_threads(n, T);
    void *w1 = malloc(b1), *wt = malloc(bt), *ww = malloc(bw);
    NAME_real L = 0, L1 = 0;
    if (NAME_grad_norms(1, n, p, ARGS, n1, w1, b1) != 0) return 3;
    if (NAME_grad_norms(T, n, p, ARGS, nr, wt, bt) != 0) return 4;
    double err = 0;
    for (int s = 0; s < n; ++s) if (nr[s] != n1[s]) err = 1;
    if (NAME_loss_grad_clipped(1, n, p, ARGS, (NAME_real)0.5, (NAME_real)1 / n, n1, &L1, g1, w1, b1) != 0) return 5;
    if (NAME_loss_grad_clipped(T, n, p, ARGS, (NAME_real)0.5, (NAME_real)1 / n, nr, &L, g, wt, bt) != 0) return 6;
    for (int j = 0; j < MU_N_PARAMS; ++j) { double d = g[j] - g1[j]; if (d < 0) d = -d; if (d > err) err = d; }
    if (NAME_loss_grad_weighted(T, n, p, ARGS, w, &L, g, ww, bw) != 0) return 7;
    if (NAME_loss_grad_clipped(T, n, p, ARGS, (NAME_real)-1, (NAME_real)1, nr, &L, g, wt, bt) != MU_EARG) return 8;
    /* a workspace one byte short of what each asks: EWORKSPACE, nothing written */
    if (NAME_grad_norms(T, n, p, ARGS, nr, wt, bt - 1) != MU_EWORKSPACE) return 9;
    if (NAME_loss_grad_weighted(T, n, p, ARGS, w, &L, g, ww, bw - 1) != MU_EWORKSPACE) return 10;
    printf("%.3g\n", err);
    free(p); free(g); free(g1); free(nr); free(n1); free(w); free(w1); free(wt); free(ww); FREE
    return 0;
}
"""
CASES = {   # (example, the driver's data, its arguments, frees): digits keeps lanes, recsys scatters
    "digits": ("double *x = malloc(sizeof(double) * n * 64); int32_t *y = malloc(sizeof(int32_t) * n);"
               "for (int i = 0; i < n * 64; ++i) x[i] = (double)((i * 7919) % 17) / 16.0;"
               "for (int i = 0; i < n; ++i) y[i] = (i * 31) % 10;", "x, y", "free(x); free(y);"),
    "recsys": ("int32_t *u = malloc(sizeof(int32_t) * n), *it = malloc(sizeof(int32_t) * n);"
               "double *r = malloc(sizeof(double) * n);"
               "for (int i = 0; i < n; ++i) { u[i] = (i * 7) % 1000; it[i] = (i * 13) % 1700; r[i] = 1 + i % 5; }",
               "u, it, r", "free(u); free(it); free(r);"),
}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
@pytest.mark.parametrize("example", sorted(CASES))
@pytest.mark.parametrize("openmp", [False, True], ids=["sequential", "openmp"])
def test_exported_per_sample_functions_run_clean_under_asan(tmp_path, example, openmp):
    from gradc.api import export, load_model_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    export(load_model_file(os.path.join(root, "examples", example, "model.py")), str(tmp_path))
    data, args, frees = CASES[example]
    src = DRIVER.replace("DATA", data).replace("ARGS", args).replace("FREE", frees).replace("MU_", example.upper() + "_").replace("NAME", example)
    (tmp_path / "drv.c").write_text(src)
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-g"] + (["-fopenmp"] if openmp else [])
    p = subprocess.run(["gcc", *flags, "drv.c", f"{example}.c", "-lm", "-o", "drv"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for T in ("1", "3", "20"):
        r = subprocess.run(["./drv", T], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
        assert r.returncode == 0, f"{T} threads: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert float(r.stdout) <= 1e-13, f"{T} threads differ from one by {r.stdout}"
