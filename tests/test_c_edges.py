"""The exported C at its edges (issue 15 item 3): batches up to INT_MAX, sizes on a 32-bit
``size_t``, Adam's counter and hyperparameters, thread counts, and steps that produce NaN.

Each C driver is built with gcc under ``-std=c99 -Wall -Wextra -Werror -pedantic`` and UBSan (ASan
too where the memory is small), so a signed overflow or an access out of bounds fails the test.
"""
import os
import shutil
import subprocess

import pytest

GCC = shutil.which("gcc")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
UBSAN = ["-fsanitize=undefined", "-fno-sanitize-recover=all", "-g"]
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")

TINY = """
import gradc as gc
m = gc.Model("tiny")
x, y = m.input("x"), m.target("y")
w = m.param("w", init=0.5)
z = m.output("z", w * x)
m.loss((z - y) ** 2)
"""


def _export(tmp_path, text, name, dtype="float64"):
    from gradc.api import export, load_model_file
    src = tmp_path / f"{name}_model.py"
    src.write_text(text)
    export(load_model_file(str(src)), str(tmp_path), dtype=dtype)
    return tmp_path / f"{name}.c"


def _build_run(tmp_path, driver, sources, flags, args=(), timeout=300):
    (tmp_path / "drv.c").write_text(driver)
    p = subprocess.run([GCC, *STRICT, *flags, "drv.c", *map(str, sources), "-lm", "-o", "drv"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = subprocess.run(["./drv", *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    return r.stdout


# ---- batches up to INT_MAX -----------------------------------------------------------------

BIG = r"""
#define _DEFAULT_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "tiny.h"
/* Inputs and targets of INT_MAX samples as pages of zeros, mapped but never backed by memory: the
   block loop must reach n exactly, without a signed overflow (UBSan) and without EBATCH/EINDEX. */
int main(void)
{
    const size_t max = (size_t)INT_MAX * sizeof(tiny_real);
    tiny_real *x = mmap(NULL, max, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    tiny_real *y = mmap(NULL, max, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (x == MAP_FAILED || y == MAP_FAILED) { printf("nomap\n"); return 0; }
    tiny_real p[TINY_N_PARAMS] = {0.5f}, g[TINY_N_PARAMS], loss = -1;
    const size_t wb = tiny_workspace_size_threads(INT_MAX, 2);
    void *w = malloc(wb);
    /* two threads: the split of INT_MAX samples into shares, then each share's block loop to its end */
    int rc = tiny_loss_grad_threads(2, INT_MAX, p, x, y, &loss, g, w, wb);
    printf("%d %g %g\n", rc, (double)loss, (double)g[0]);
    free(w);
    return 0;
}
"""


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="needs mmap")
def test_batches_up_to_int_max_run_to_the_end_under_ubsan(tmp_path):
    """float32 (16 GiB of mapped zeros, never touched in memory); the loss of zeros is 0, exactly."""
    c = _export(tmp_path, TINY, "tiny", "float32")
    out = _build_run(tmp_path, BIG, [c], ["-O2", *UBSAN], timeout=600)
    if out.strip() == "nomap":
        pytest.skip("this machine cannot map 16 GiB of address space")
    assert out.split("\n")[0] == "0 0 0", out


# ---- sizes on a 32-bit size_t ----------------------------------------------------------------

M32 = r"""
#include <stdint.h>
#include <stdio.h>
#include "digits.h"
/* On a 32-bit size_t the threaded workspaces overflow for large thread counts: the size functions
   must say 0 (cannot be allocated), and the threaded calls refuse more than MAX_THREADS. */
int main(void)
{
    printf("%d\n", (int)sizeof(size_t));
    printf("%d\n", digits_workspace_size_threads(1000, 1) > 0);
    printf("%d\n", digits_workspace_size_threads(1000, DIGITS_MAX_THREADS + 1) == 0);
    printf("%d\n", digits_workspace_size_norms(1000, DIGITS_MAX_THREADS + 1) == 0);
    size_t s = digits_workspace_size_norms(1000, DIGITS_MAX_THREADS);
    /* either it fits in this size_t or it is 0, never a wrapped small number */
    printf("%d\n", s == 0 || s >= (size_t)DIGITS_MAX_THREADS * DIGITS_N_PARAMS * DIGITS_LANES * sizeof(digits_real));
    double p[DIGITS_N_PARAMS] = {0}, x[64] = {0}, loss, g[DIGITS_N_PARAMS];
    int32_t y[1] = {0};
    static double w[1];
    printf("%d\n", digits_loss_grad_threads(DIGITS_MAX_THREADS + 1, 1, p, x, y, &loss, g, w, sizeof w) == DIGITS_EARG);
    return 0;
}
"""


def _m32_works(tmp_path):
    (tmp_path / "m32.c").write_text("int main(void) { return 0; }\n")
    return subprocess.run([GCC, "-m32", "m32.c", "-o", "m32"], cwd=tmp_path, capture_output=True).returncode == 0


def test_sizes_on_a_32_bit_size_t_say_0_instead_of_wrapping(tmp_path):
    if not _m32_works(tmp_path):
        pytest.skip("gcc -m32 cannot link here (apt-get install gcc-multilib)")
    from gradc.api import export, load_model_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    export(load_model_file(os.path.join(root, "examples", "digits", "model.py")), str(tmp_path))
    out = _build_run(tmp_path, M32, [tmp_path / "digits.c"], ["-m32", "-O1", *UBSAN])
    assert out.split() == ["4", "1", "1", "1", "1", "1"], out


# ---- Adam's counter and hyperparameters; steps that produce NaN ------------------------------

STEPS = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "tiny.h"
static tiny_real x[3] = {1, 2, 3}, y[3] = {2, 4, 6.5};
static tiny_real work[TINY_WORKSPACE_REALS + TINY_WORKSPACE_INTS + 1];

/* One Adam step with these settings from fixed state: its code, and whether anything changed. */
static void adam(double lr, double b1, double b2, double eps, int32_t step0, const tiny_real *xs)
{
    tiny_real p[1] = {0.5}, m[1] = {0.25}, v[1] = {0.125}, bp[2] = {0.9, 0.999}, g[1], loss;
    int32_t step = step0;
    const int rc = tiny_adam_step(3, p, xs, y, lr, b1, b2, eps, &step, bp, m, v, &loss, g, work, sizeof work);
    printf("%d %d\n", rc, p[0] != 0.5 || m[0] != 0.25 || v[0] != 0.125 || step != step0 || bp[0] != 0.9
           || bp[1] != 0.999);
}

int main(void)
{
    const tiny_real bad[3] = {1, NAN, 3};
    adam(0.01, 0.9, 0.999, 1e-8, 0, x);           /* fine: 0, changed */
    adam(0.01, 0.9, 0.999, 1e-8, -1, x);          /* a negative step counter */
    adam(0.01, 0.9, 0.999, 1e-8, INT32_MAX, x);   /* the counter would overflow */
    adam(0.01, 1.0, 0.999, 1e-8, 0, x);           /* beta1 = 1: bias correction 0 */
    adam(0.01, 0.9, 1.0, 1e-8, 0, x);             /* beta2 = 1 */
    adam(0.01, 0.9, 0.999, 0.0, 0, x);            /* eps = 0 */
    adam(NAN, 0.9, 0.999, 1e-8, 0, x);            /* lr NaN */
    adam(-0.01, 0.9, 0.999, 1e-8, 0, x);          /* lr < 0 */
    {   /* beta_pow outside [0, 1] */
        tiny_real p[1] = {0.5}, m[1] = {0}, v[1] = {0}, bp[2] = {1.5, 1}, g[1], loss;
        int32_t step = 0;
        const int rc = tiny_adam_step(3, p, x, y, 0.01, 0.9, 0.999, 1e-8, &step, bp, m, v, &loss, g, work, sizeof work);
        printf("%d %d\n", rc, p[0] != 0.5);
    }
    adam(0.01, 0.9, 0.999, 1e-8, 0, bad);         /* the data make the gradient NaN */
    tiny_real p[1] = {0.5}, g[1], loss, m[1] = {0}, v[1] = {0};
    int rc = tiny_sgd_step(3, p, bad, y, 0.1, &loss, g, work, sizeof work);
    printf("%d %d\n", rc, p[0] != 0.5);
    rc = tiny_sgd_step(3, p, x, y, INFINITY, &loss, g, work, sizeof work);
    printf("%d %d\n", rc, p[0] != 0.5);
    rc = tiny_sgd_step(3, p, x, y, 0.1, &loss, g, work, sizeof work);
    printf("%d %d\n", rc, p[0] != 0.5);
    /* adam_apply's own scalars: w1 = 1 - beta1 in (0, 1], bias_correction2_sqrt in (0, 1], eps > 0 */
    g[0] = 1;
    printf("%d\n", tiny_adam_apply(p, g, m, v, 0.0, 0.999, 0.001, 0.01, 0.1, 1e-8));
    printf("%d\n", tiny_adam_apply(p, g, m, v, 0.1, 0.999, 0.001, 0.01, 0.0, 1e-8));
    printf("%d\n", tiny_adam_apply(p, g, m, v, 0.1, 0.999, 0.001, NAN, 0.1, 1e-8));
    printf("%d\n", tiny_adam_apply(p, g, m, v, 0.1, 0.999, 0.001, 0.01, 0.1, 1e-8));
    return 0;
}
"""


def test_adam_and_sgd_validate_their_scalars_and_refuse_nonfinite_steps(tmp_path):
    from gradc.abi import EARG, ENONFINITE
    c = _export(tmp_path, TINY, "tiny")
    out = _build_run(tmp_path, STEPS, [c], ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"])
    lines = out.split("\n")
    A, N = str(EARG), str(ENONFINITE)
    assert lines[:10] == ["0 1", f"{A} 0", f"{A} 0", f"{A} 0", f"{A} 0", f"{A} 0", f"{A} 0", f"{A} 0", f"{A} 0",
                          f"{N} 0"], out
    assert lines[10:13] == [f"{N} 0", f"{A} 0", "0 1"], out
    assert lines[13:17] == [A, A, A, "0"], out


def test_python_fused_steps_refuse_nonfinite_steps_and_keep_the_parameters():
    """The Python runtime's fused steps (one thread: the C step; several: its own update) say so by
    name and leave the parameters and the Adam state as they were."""
    import numpy as np

    import gradc as gc
    m = gc.Model("edges_linreg")
    x, y = m.input("x", 2), m.target("y")
    w = m.param("w", (1, 2), init=gc.init.uniform(-1, 1))
    m.loss(((w @ x)[0] - y) ** 2)
    mod = gc.compile_model(m)
    X, Y = np.ones((40, 2)), np.ones(40)
    Y[7] = np.inf
    for threads in (1, 2):
        mod.set_threads(threads)
        p = mod.init_params(seed=0)
        before = p.flat.copy()
        with pytest.raises(ValueError, match="sgd_step: the step's loss or gradient holds NaN or Inf"):
            mod.sgd_step(p, 0.1, x=X, y=Y)
        st = mod.adam_state()
        with pytest.raises(ValueError, match="adam_step: the step's loss or gradient holds NaN or Inf"):
            mod.adam_step(p, st, x=X, y=Y)
        assert np.array_equal(p.flat, before)
        assert all(not np.any(a) for a in st.values() if isinstance(a, np.ndarray))
    mod.set_threads(1)


def test_adam_needs_no_pow(tmp_path):
    """adam_step keeps beta^t as running products (beta_pow), so a float32 training object of moons
    links no powf (about 2 KiB of flash on a Cortex-M4). That its steps still equal gradc.optim.Adam's
    (1e-12 in float64, 1e-5 in float32) is tests/test_embed.py's Adam test."""
    from gradc.api import export, load_model_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    export(load_model_file(os.path.join(root, "examples", "moons", "model.py")), str(tmp_path), dtype="float32")
    p = subprocess.run([GCC, *STRICT, "-O2", "-c", "moons.c", "-o", "moons.o"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    undefined = subprocess.run(["nm", "-u", "moons.o"], cwd=tmp_path, capture_output=True, text=True).stdout.split()
    assert not [s for s in undefined if s.startswith("pow")], undefined
