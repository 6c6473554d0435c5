"""loss_grad over several threads: ``mod.set_threads(T)`` and ``NAME_loss_grad_threads``.

Each thread takes a contiguous share of the batch's blocks with its own workspace and gradient
buffer; the buffers are added in thread order. So the result depends on the number of threads only:
it is the same on every call, the same with and without OpenMP, and equal to one thread's to rounding.
The workspace size is exact (ASan), and the exported C compiles strictly with and without -fopenmp.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

import gradc
from gradc import optim
from batches import random_batch, rel
from conftest import EXAMPLES, ROOT

GCC = shutil.which("gcc")
MODELS = [("moons", os.path.join(EXAMPLES, "moons", "model.py"), None, "float64"),
          ("risk-mlp-dropout", os.path.join(EXAMPLES, "risk", "model.py"), "mlp", "float64"),
          ("w5_mf", os.path.join(ROOT, "bench", "workload_models", "w5_mf.py"), None, "float32"),
          ("digits", os.path.join(EXAMPLES, "digits", "model.py"), None, "float32")]
TOL = {"float64": 1e-13, "float32": 2e-6}


@pytest.mark.parametrize("name,path,model,dtype", MODELS, ids=[m[0] for m in MODELS])
def test_threads_agree_with_one_thread_and_repeat_bit_for_bit(name, path, model, dtype):
    mod = gradc.load(path, dtype=dtype, model=model)
    data = random_batch(mod, 203, np.random.default_rng(0), dtype)     # 13 blocks, the last partial
    p = mod.init_params(seed=1)
    L1, g1 = mod.loss_and_grad(p, **data)
    for T in (2, 3, 5, 64):
        mod.set_threads(T)
        L2, g2 = mod.loss_and_grad(p, **data)
        L3, g3 = mod.loss_and_grad(p, **data)
        assert L2 == L3 and np.array_equal(g2.flat, g3.flat), f"{T} threads: two calls differ"
        assert rel(L2, L1) <= TOL[dtype], f"{T} threads: loss {L2} against {L1}"
        for k in g1:
            assert rel(g2[k], g1[k]) <= TOL[dtype], f"{T} threads: gradient of {k}"


def test_the_result_does_not_depend_on_openmp(monkeypatch):
    path = os.path.join(EXAMPLES, "digits", "model.py")
    data = random_batch(gradc.load(path), 150, np.random.default_rng(2), "float64")
    out = {}
    for omp in ("1", "0"):
        monkeypatch.setenv("GRADC_OPENMP", omp)
        mod = gradc.load(path)
        mod.set_threads(3)
        p = mod.init_params(seed=0)
        out[omp] = mod.loss_and_grad(p, **data)
    assert out["1"][0] == out["0"][0] and np.array_equal(out["1"][1].flat, out["0"][1].flat)


@pytest.mark.parametrize("Opt,kw", [(optim.SGD, {"lr": 0.1}), (optim.Adam, {"lr": 0.01})], ids=["sgd", "adam"])
def test_fused_steps_with_threads_equal_the_unfused_ones(Opt, kw):
    mod = gradc.load(os.path.join(EXAMPLES, "digits", "model.py"))
    mod.set_threads(2)
    rng = np.random.default_rng(3)
    batches = [random_batch(mod, 70, rng, "float64") for _ in range(8)]
    p1, p2 = mod.init_params(seed=0), mod.init_params(seed=0)
    o1, o2 = Opt(p1, **kw), Opt(p2, **kw)
    for b in batches:
        L, g = mod.loss_and_grad(p1, **b)
        o1.step(g)
        assert abs(o2.train_step(mod, **b) - L) <= 1e-12
    assert o2._fused is not None
    for k in p1:
        assert rel(p2[k], p1[k]) <= 1e-12, k


def test_threads_refuse_bad_input_and_bad_counts():
    mod = gradc.load(os.path.join(ROOT, "bench", "workload_models", "w5_mf.py"))
    data = random_batch(mod, 100, np.random.default_rng(4), "float64")
    data["user"][77] = 1000
    mod.set_threads(3)
    p = mod.init_params(seed=0)
    before = p.flat.copy()
    with pytest.raises(ValueError, match=r"'user': sample 77 holds 1000, outside 0..999"):
        mod.sgd_step(p, 0.1, **data)
    np.testing.assert_array_equal(p.flat, before)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            mod.set_threads(bad)


DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "digits.h"
int main(int argc, char **argv)
{
    if (argc != 2) return 2;
    const int T = atoi(argv[1]), n = 150;
    double *x = malloc(sizeof(double) * n * 64), *g = malloc(sizeof(double) * DIGITS_N_PARAMS);
    double *g1 = malloc(sizeof(double) * DIGITS_N_PARAMS), *p = malloc(sizeof(double) * DIGITS_N_PARAMS);
    int32_t *y = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n * 64; ++i) x[i] = (double)((i * 7919) % 17) / 16.0;
    for (int i = 0; i < n; ++i) y[i] = (i * 31) % 10;
    for (int i = 0; i < DIGITS_N_PARAMS; ++i) p[i] = (double)((i * 37) % 23) / 23.0 - 0.5;
    const size_t b1 = digits_workspace_size(n), bt = digits_workspace_size_threads(n, T);
    void *w1 = malloc(b1);
    void *wt = malloc(bt);     /* exactly: ASan sees an overrun */
    double L1 = 0, LT = 0;
    if (digits_loss_grad(n, p, x, y, &L1, g1, w1, b1) != 0) return 3;
    if (digits_loss_grad_threads(T, n, p, x, y, &LT, g, wt, bt) != 0) return 4;
    double err = L1 > LT ? L1 - LT : LT - L1;
    for (int j = 0; j < DIGITS_N_PARAMS; ++j) { double d = g[j] - g1[j]; if (d < 0) d = -d; if (d > err) err = d; }
    y[149] = 10;
    if (digits_loss_grad_threads(T, n, p, x, y, &LT, g, wt, bt) != DIGITS_EINDEX) return 5;
    if (digits_loss_grad_threads(T, n, p, x, y, &LT, g, wt, bt - 1) != DIGITS_EWORKSPACE) return 6;
    printf("%.3g\n", err);
    free(x); free(g); free(g1); free(p); free(y); free(w1); free(wt);
    return 0;
}
"""


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("openmp", [False, True], ids=["sequential", "openmp"])
def test_exported_threads_compile_strictly_and_run_clean_under_asan(tmp_path, openmp):
    from gradc.api import export, load_model_file
    export(load_model_file(os.path.join(EXAMPLES, "digits", "model.py")), str(tmp_path))
    (tmp_path / "drv.c").write_text(DRIVER)
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-g"] + (["-fopenmp"] if openmp else [])
    p = subprocess.run([GCC, *flags, "drv.c", "digits.c", "-lm", "-o", "drv"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1")
    for T in ("1", "2", "4", "20"):
        r = subprocess.run(["./drv", T], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, f"{T} threads: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert float(r.stdout) <= 1e-13, f"{T} threads differ from one by {r.stdout}"
