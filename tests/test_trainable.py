"""``gradc export --trainable W2,b2``: partial fine-tuning on the device.

The digits MLP (64-32-10) exported with only its last layer trainable: the first layer's weights
become constants of ``digits.c`` (flash), and ``params``, the gradient and Adam's state hold the
last layer alone (330 of 2,410 values). Steps of SGD and Adam on the device equal the Python
module's with the first layer held fixed (1e-12 in float64, 1e-5 in float32), under ASan and UBSan;
the header and the model record say what is trainable; bad selections are refused by name.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wconversion", "-Wdouble-promotion",
          "-Wfloat-conversion"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
MODEL = os.path.join(EXAMPLES, "digits", "model.py")
TRAIN = ("W2", "b2")
N, STEPS, LR = 37, 4, 0.05

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "digits.h"
#include "data.h"
int main(void)
{
    if (digits_check_identity() != DIGITS_OK || digits_check_weights() != DIGITS_OK) return 2;
    const size_t wb = digits_workspace_size(N);
    void *work = malloc(wb);
    digits_real *p = malloc(sizeof(digits_real) * DIGITS_N_PARAMS), *g = malloc(sizeof(digits_real) * DIGITS_N_PARAMS);
    digits_real *m = calloc(DIGITS_N_PARAMS, sizeof(digits_real)), *v = calloc(DIGITS_N_PARAMS, sizeof(digits_real));
    memcpy(p, digits_weights, sizeof(digits_real) * DIGITS_N_PARAMS);
    digits_real loss;
    for (int k = 0; k < STEPS; ++k) {
        if (digits_sgd_step(N, p, x, y, (digits_real)LR, &loss, g, work, wb) != DIGITS_OK) return 3;
        printf("sgd %.17g\n", (double)loss);
    }
    int32_t step = 0;
    digits_real bp[2] = {1, 1};
    for (int k = 0; k < STEPS; ++k) {
        if (digits_adam_step(N, p, x, y, (digits_real)0.01, (digits_real)0.9, (digits_real)0.999, (digits_real)1e-8,
                             &step, bp, m, v, &loss, g, work, wb) != DIGITS_OK) return 4;
        printf("adam %.17g\n", (double)loss);
    }
    printf("params");
    for (int j = 0; j < DIGITS_N_PARAMS; ++j) printf(" %.17g", (double)p[j]);
    printf("\nn_params %d\n", DIGITS_N_PARAMS);
    const digits_info_t *info = digits_info();
    for (int t = 0; t < info->n_tensors; ++t) printf("kind %s %d\n", info->tensors[t].c_name, info->tensors[t].kind);
    free(work); free(p); free(g); free(m); free(v);
    return 0;
}
"""


def _data(dtype):
    rng = np.random.default_rng(3)
    return rng.uniform(0, 1, size=(N, 64)).astype(dtype), rng.integers(0, 10, size=N).astype(np.int32)


def _reference(mod, p, x, y):
    """SGD then Adam steps in Python on W2, b2 only (W1, b1 held)."""
    p = {k: v.copy() for k, v in p.items()}
    out = {"sgd": [], "adam": []}
    for _ in range(STEPS):
        L, g = mod.loss_and_grad(p, x=x, label=y)
        out["sgd"].append(L)
        for k in TRAIN:
            p[k] -= p[k].dtype.type(LR) * g[k]
    opt = gradc.optim.Adam({k: p[k] for k in TRAIN}, lr=0.01)
    for _ in range(STEPS):
        L, g = mod.loss_and_grad(p, x=x, label=y)
        out["adam"].append(L)
        opt.step({k: g[k] for k in TRAIN})
    return out, np.concatenate([p[k].ravel() for k in TRAIN])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_only_the_last_layer_trains_on_the_device(tmp_path, run_cli, dtype):
    mod = gradc.load(MODEL, dtype=dtype)
    p = mod.init_params(seed=0)
    np.savez(tmp_path / "w.npz", **p)
    r = run_cli("export", MODEL, "-o", str(tmp_path / "e"), "--weights", str(tmp_path / "w.npz"), "--dtype", dtype,
                "--trainable", ",".join(TRAIN))
    assert r.returncode == 0, r.stderr
    c = (tmp_path / "e" / "digits.c").read_text()
    h = (tmp_path / "e" / "digits.h").read_text()
    assert "static const digits_real gc_frozen[2080]" in c             # W1 (32x64) and b1 (32) in flash
    assert "#define DIGITS_N_PARAMS 330" in h and "DIGITS_PARAM_W1_OFFSET" not in h
    x, y = _data(dtype)
    lit = (lambda v: float(v).hex() + ("f" if dtype == "float32" else ""))
    (tmp_path / "e" / "data.h").write_text(
        f"#define N {N}\n#define STEPS {STEPS}\n#define LR {LR}\n"
        f"static const digits_real x[] = {{{', '.join(lit(v) for v in x.ravel())}}};\n"
        f"static const int32_t y[] = {{{', '.join(str(int(v)) for v in y)}}};\n")
    (tmp_path / "e" / "driver.c").write_text(DRIVER)
    b = subprocess.run([GCC, *STRICT, *SANITIZE, "-O1", "driver.c", "digits.c", "digits_weights.c", "-lm", "-o", "drv"],
                       cwd=tmp_path / "e", capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    run = subprocess.run(["./drv"], cwd=tmp_path / "e", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "runtime error" not in run.stderr, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    got = {k: [float(l.split()[1]) for l in lines if l.startswith(k + " ")] for k in ("sgd", "adam")}
    params = np.array([float(v) for v in next(l for l in lines if l.startswith("params")).split()[1:]])
    want, want_p = _reference(mod, p, x, y)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for k in ("sgd", "adam"):
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, err_msg=k)
    np.testing.assert_allclose(params, want_p, rtol=rtol, atol=rtol * np.abs(want_p).max())
    kinds = dict(l.split()[1:] for l in lines if l.startswith("kind "))
    assert kinds["W1"] == kinds["b1"] == "4" and kinds["W2"] == kinds["b2"] == "0"     # FROZEN, PARAM


def test_bad_trainable_selections_are_refused_by_name(tmp_path, run_cli):
    mod = gradc.load(MODEL)
    np.savez(tmp_path / "w.npz", **mod.init_params(seed=0))
    w = ["--weights", str(tmp_path / "w.npz")]
    cases = [(["--trainable", "W9"] + w, "'W9' is not a parameter of model 'digits'"),
             (["--trainable", ","] + w, "trainable names no parameter"),
             (["--trainable", "W2"], "give their values with --weights"),
             (["--trainable", "W2", "--inference-only"] + w, "need a training export")]
    for args, msg in cases:
        r = run_cli("export", MODEL, "-o", str(tmp_path / "x"), *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)


PROBE = r"""
#include <stdio.h>
#include "digits.h"
int main(void)
{
    const digits_info_t *i = digits_info();
    printf("%d %zu\n", i->n_params, i->workspace_bytes + i->param_bytes + i->grad_bytes + i->adam_bytes);
    return 0;
}
"""


def test_readme_states_the_ram_of_training_the_last_layer(tmp_path, run_cli):
    """The README's numbers: RAM for on-device Adam (parameters, gradient, m, v, workspace), float32
    digits, every parameter against the last layer alone, from each export's NAME_info()."""
    from conftest import ROOT
    mod = gradc.load(MODEL, dtype="float32")
    np.savez(tmp_path / "w.npz", **mod.init_params(seed=0))
    ram = {}
    for tag, extra in (("full", []), ("last", ["--trainable", ",".join(TRAIN)])):
        d = tmp_path / tag
        r = run_cli("export", MODEL, "-o", str(d), "--weights", str(tmp_path / "w.npz"), "--dtype", "float32", *extra)
        assert r.returncode == 0, r.stderr
        (d / "probe.c").write_text(PROBE)
        b = subprocess.run([GCC, "-std=c99", "-O1", "probe.c", "digits.c", "-lm", "-o", "probe"], cwd=d,
                           capture_output=True, text=True)
        assert b.returncode == 0, b.stderr
        n, total = subprocess.run(["./probe"], cwd=d, capture_output=True, text=True).stdout.split()
        ram[tag] = (int(n), int(total))
    print(ram)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    want = (f"{ram['last'][0]:,} of {ram['full'][0]:,} values trainable, on-device Adam needs "
            f"{ram['last'][1]:,} B of RAM instead of {ram['full'][1]:,} B")
    assert want in text, f"README.md lacks: {want}"
