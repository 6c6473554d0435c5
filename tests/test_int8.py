"""The int8 export (``gradc export --quantize int8``, ``gradc/quantize.py``, ``codegen/int8.py``).

* the integer arithmetic: requantization equals exact rational rounding, input quantization
  equals round(x / scale) of float32 division, for extreme and random values;
* the numpy evaluator of stages (calibration and the float stages of the reference) equals the
  compiled module on every example model;
* the plan: digits, the digits CNN and moons run entirely in int8; a model with stages it cannot
  quantize (the GRU of examples/timeseries, the embeddings of examples/recsys) names them;
* the C: gcc and clang under the strict flags with -Wconversion, run under ASan and UBSan (and
  valgrind), equal the Python reference bit for bit (a model with float stages: to float32
  rounding, as libm decides), and return the documented codes at every edge;
* the CLI: the report, and one clear line for each mistake;
* the README's int8 table is what examples/int8/compare.py measures.

The Cortex-M0 runs are in tests/test_mcu.py.
"""
import glob
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES, ROOT
from gradc import quantize as Q
from gradc.api import export, load_model_file, lower_model
from gradc.ir import INT

GCC = shutil.which("gcc")
CLANG = shutil.which("clang")
VALGRIND = shutil.which("valgrind")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wdouble-promotion", "-Wfloat-conversion",
          "-Wconversion", "-Wshadow"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
INTEGER_MODELS = ("moons", "digits", "digits_cnn")
N = 37


# ---- the integer arithmetic ------------------------------------------------------------------

def test_requantize_is_exact_rational_rounding_halves_up():
    rng = np.random.default_rng(0)
    totals = np.concatenate([rng.integers(-2 ** 31 + 1, 2 ** 31 - 1, 400), [0, 1, -1, 2 ** 31 - 1, -2 ** 31 + 1]])
    for m in [1e-9, 3.7e-5, 0.0123, 0.5, 0.999999, 1.0, 7.25, 12345.678]:
        m0, sh = Q.multiplier(m)
        assert 2 ** 30 <= m0 < 2 ** 31 and 1 <= sh <= 61
        assert abs(m0 / 2 ** sh - m) <= m * 2 ** -30
        got = Q.requantize(totals, m0, sh, 0, -2 ** 62, 2 ** 62)     # no clamp to int8 ...
        got = np.asarray(Q.requantize(totals, m0, sh, 0, -128, 127), np.int64)   # ... then with it
        for t, g in zip(totals, got):
            exact = Fraction(int(t) * m0, 2 ** sh) + Fraction(1, 2)
            want = max(-128, min(127, math.floor(exact)))
            assert g == want, (t, m, g, want)
    m0, sh = Q.multiplier(1e-12)                 # below 2^-31: fewer bits, the shift at its most
    assert sh == 61 and abs(m0 / 2 ** 61 - 1e-12) <= 2 ** -62
    assert Q.multiplier(2.0 ** 31) is None       # too large for a 31-bit multiplier: the stage stays float


def test_quantize_rounds_float32_division_halves_away_from_zero_and_saturates():
    qp = Q.QParams(float(np.float32(0.1)), -3)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 5, 2000), [0.05, -0.05, 0.15, -0.15, 1e30, -1e30, 12.7, -12.8]]).astype(np.float32)
    got = Q.quantize_f32(x, qp).astype(np.int64)
    v = x / np.float32(qp.scale)                         # float32 division, as in C
    for xi, vi, g in zip(x, v, got):
        f = Fraction(float(vi))
        r = math.floor(f + Fraction(1, 2)) if f >= 0 else -math.floor(-f + Fraction(1, 2))
        assert g == max(-128, min(127, r + qp.zero_point)), (xi, vi, g)


def test_qparams_hold_zero_exactly_and_survive_a_constant_range():
    for lo, hi in [(-1.0, 3.0), (0.0, 6.0), (-2.0, -1.0), (0.5, 0.5), (0.0, 0.0)]:
        qp = Q.QParams.of_range(lo, hi)
        assert qp.scale > 0 and -128 <= qp.zero_point <= 127
        zero = Q.quantize_f32(np.float32(0.0), qp)
        assert Q.dequantize_f32(zero, qp) == 0.0


# ---- the evaluator --------------------------------------------------------------------------

def _models():
    out = []
    for f in sorted(glob.glob(os.path.join(EXAMPLES, "*", "model.py"))):
        name = os.path.basename(os.path.dirname(f))
        for sub in (["logreg", "mlp"] if name in ("risk", "private_risk") else [None]):
            out.append((name, sub))
    return out


def _data(prog, n, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for t in prog.inputs:
        if t.dropout is not None:
            continue
        if t.dtype == INT:
            b = [bb or 1 for bb in prog.int_bounds.get(t.name, [1] * t.size)]
            out[t.name] = (rng.random((n, *t.shape)) * np.array(b).reshape(t.shape)).astype(np.int32)
        else:
            out[t.name] = rng.standard_normal((n, *t.shape))
    return out


@pytest.mark.parametrize("name,sub", _models())
def test_the_evaluator_equals_the_compiled_forward_pass(name, sub):
    path = os.path.join(EXAMPLES, name, "model.py")
    mod = gradc.load(path, model=sub)
    prog = lower_model(load_model_file(path, sub))
    p = mod.init_params(seed=0)
    data = _data(prog, 11)
    P = Q._Planner(prog, p)
    env = {k: (v, False) for k, v in P.consts.items()}
    env.update({k: (v.astype(np.int64) if v.dtype.kind == "i" else v, True) for k, v in data.items()})
    for st in P.stages:
        env[st.name] = (Q.evaluate(st, env, 11, prog.tensors[st.name].shape), True)
    want = mod.forward(p, **data)
    for o in prog.outputs:
        scale = max(float(np.abs(want[o]).max()), 1e-300)
        assert float(np.abs(env[o][0] - want[o]).max()) / scale < 1e-12, (name, sub, o)


# ---- the plan ---------------------------------------------------------------------------

def _plan(name, sub=None, n=200, seed=0, edit=None):
    path = name if name.endswith(".py") else os.path.join(EXAMPLES, name, "model.py")
    mod = gradc.load(path, model=sub)
    prog = lower_model(load_model_file(path, sub))
    p = mod.init_params(seed=seed)
    if edit:
        edit(p)
    data = _data(prog, n, seed)
    return mod, prog, p, Q.plan(prog, p, data), data


@pytest.mark.parametrize("name", INTEGER_MODELS)
def test_dense_conv_relu_tanh_and_pooling_models_run_entirely_in_int8(name):
    mod, prog, p, qp, data = _plan(name)
    assert qp.float_stages == []
    kinds = [op.kind for op in qp.ops]
    assert kinds[0] == "quantize" and "linear" in kinds
    assert set(kinds) <= {"quantize", "linear", "move", "max", "table", "dequantize"}
    rep = qp.report()
    assert all(line.startswith(("int8 ", "float x: input quantized")) for line in rep), rep
    assert sum("dense/conv" in line for line in rep) == kinds.count("linear")
    if name == "digits_cnn":
        assert sum("max (pooling)" in line for line in rep) == 1 and sum("copy" in line for line in rep) == 3
    # the int8 outputs follow the float model: within a few steps of the output's range
    want = next(iter(mod.forward(p, **data).values()))
    got = next(iter(qp.reference(data).values()))
    span = float(want.max() - want.min())
    assert float(np.abs(got - want).max()) < 0.08 * span


def test_stages_without_an_int8_kernel_stay_float_and_are_named_with_a_reason():
    _, _, _, qp, _ = _plan("timeseries", n=50)
    floats = [line for line in qp.report() if line.startswith("float ~") and "quantized to int8" not in line]
    assert qp.float_stages and len(floats) == len(qp.float_stages)
    assert any("reads 2 activations" in line for line in floats), floats
    assert any("int8  " in line and "dense/conv" in line for line in qp.report())
    _, _, _, qp, _ = _plan("recsys", n=50)
    assert any("gather by an integer input" in line for line in qp.report()), qp.report()


# ---- the C -------------------------------------------------------------------------------

def _driver(prog, n):
    ins = [t for t in prog.inputs if t.dropout is None]
    M = prog.name
    lines = ["#include <stdio.h>", "#include <stdlib.h>", f'#include "{M}.h"', "int main(void)", "{",
             "    FILE *f; size_t got = 0;"]
    args = []
    for t in ins:
        ct = "int32_t" if t.dtype == INT else "float"
        lines += [f"    {ct} *in_{t.name} = malloc(sizeof({ct}) * {n * t.size});",
                  f'    f = fopen("in_{t.name}.bin", "rb"); if (!f || !in_{t.name}) return 3;',
                  f"    got += fread(in_{t.name}, sizeof({ct}), {n * t.size}, f); fclose(f);"]
        args.append(f"in_{t.name}")
    for o in prog.outputs:
        lines.append(f"    float *out_{o} = malloc(sizeof(float) * {n * prog.tensors[o].size});")
        args.append(f"out_{o}")
    lines += [f"    void *work = malloc({M.upper()}_WORKSPACE_BYTES);",
              f"    if ({M}_check_identity() != 0) return 4;",
              f"    int rc = {M}_forward({n}, {', '.join(args)}, work, {M.upper()}_WORKSPACE_BYTES);",
              '    printf("rc %d\\n", rc);']
    for o in prog.outputs:
        lines += [f'    if (!rc) {{ f = fopen("out_{o}.bin", "wb"); fwrite(out_{o}, sizeof(float), '
                  f'{n * prog.tensors[o].size}, f); fclose(f); }}', f"    free(out_{o});"]
    lines += [f"    free(in_{t.name});" for t in ins] + ["    free(work);", "    (void)got;", "    return rc != 0;", "}"]
    return "\n".join(lines) + "\n"


def _build_and_run(tmp_path, S, cc, extra=(), runner=()):
    prog, test = S.prog, S.test
    d = tmp_path / f"{prog.name}-{os.path.basename(cc)}"
    S.export(d)
    for k, v in test.items():
        np.asarray(v, np.int32 if v.dtype.kind == "i" else np.float32).tofile(d / f"in_{k}.bin")
    (d / "drv.c").write_text(_driver(prog, N))
    exe = d / "drv"
    p = subprocess.run([cc, *STRICT, *extra, "-O2", f"-I{d}", str(d / f"{prog.name}.c"), str(d / "drv.c"),
                        "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run([*runner, str(exe)], cwd=d, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "rc 0" in r.stdout, r.stdout + r.stderr[-3000:]
    assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr[-3000:]
    return {o: np.fromfile(d / f"out_{o}.bin", dtype=np.float32) for o in prog.outputs}, d


class _Setup:
    """An example model with seeded weights, its calibration data (200 samples), its plan, and N
    test samples drawn apart from the calibration data."""

    def __init__(self, name, sub=None, n=200, edit=None):
        path = name if name.endswith(".py") else os.path.join(EXAMPLES, name, "model.py")
        self.model = load_model_file(path, sub)
        self.mod, self.prog, p, self.qp, self.calib = _plan(name, sub, n, edit=edit)
        self.params = {k: np.asarray(v) for k, v in p.items()}
        self.test = _data(self.prog, N, seed=5)

    def export(self, d):
        export(self.model, str(d), weights=self.params, quantize="int8", calibrate=self.calib)


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("cc", [c for c in (GCC, CLANG) if c])
@pytest.mark.parametrize("name", INTEGER_MODELS)
def test_the_c_equals_the_python_reference_bit_for_bit_under_sanitizers(tmp_path, cc, name):
    S = _Setup(name)
    got, _ = _build_and_run(tmp_path, S, cc, SANITIZE)
    want = S.qp.reference(S.test)
    for o in S.prog.outputs:
        assert np.array_equal(got[o].view(np.uint32), np.asarray(want[o], np.float32).ravel().view(np.uint32)), o


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_every_example_exports_int8_that_gcc_and_clang_accept_under_every_strict_flag(tmp_path):
    jobs = []
    for name, sub in _models():
        path = os.path.join(EXAMPLES, name, "model.py")
        prog = lower_model(load_model_file(path, sub))
        d = tmp_path / f"{name}-{sub}"
        export(load_model_file(path, sub), str(d), weights=gradc.load(path, model=sub).init_params(seed=0),
               quantize="int8", calibrate=_data(prog, 64))
        for cc in (c for c in (GCC, CLANG) if c):
            jobs.append([cc, *STRICT, "-O1", "-c", str(d / f"{prog.name}.c"), "-o", str(d / f"{os.path.basename(cc)}.o")])
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        results = list(ex.map(lambda c: subprocess.run(c, capture_output=True, text=True), jobs))
    for cmd, p in zip(jobs, results):
        assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stderr[-3000:]}"


@pytest.mark.skipif(GCC is None or shutil.which("g++") is None, reason="needs gcc and g++")
def test_the_header_compiles_as_cpp_and_its_example_call_links(tmp_path):
    S = _Setup("digits_cnn", n=50)
    d = tmp_path / "cpp"
    S.export(d)
    h = (d / "digits_cnn.h").read_text()
    example = [line[len(" *     "):] for line in h.splitlines() if line.startswith(" *     ")]
    assert any("digits_cnn_forward(n, in_x, out_logits, work, sizeof work)" in line for line in example), example
    body = "\n".join(line.replace("(once, at init)", "") for line in example)
    (d / "app.cpp").write_text('#include "digits_cnn.h"\n'
                               'int run(int n, const float *in_x, float *out_logits)\n{\n' + body +
                               '\n    return rc;\n}\nint main() { float x[64] = {0}, y[10]; return run(1, x, y); }\n')
    p = subprocess.run([GCC, *STRICT, "-c", str(d / "digits_cnn.c"), "-o", str(d / "m.o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([shutil.which("g++"), "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{d}",
                        str(d / "app.cpp"), str(d / "m.o"), "-o", str(d / "app"), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert subprocess.run([str(d / "app")]).returncode == 0


@pytest.mark.skipif(GCC is None or VALGRIND is None, reason="needs gcc and valgrind")
def test_the_int8_c_is_clean_under_valgrind(tmp_path):
    S = _Setup("digits_cnn")
    got, _ = _build_and_run(tmp_path, S, GCC, ["-g"], [VALGRIND, "--error-exitcode=9", "--leak-check=full", "-q"])
    assert np.array_equal(got["logits"].view(np.uint32),
                          np.asarray(S.qp.reference(S.test)["logits"], np.float32).ravel().view(np.uint32))


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("name", ["timeseries", "recsys"])
def test_a_model_with_float_stages_matches_the_reference_to_float32_rounding(tmp_path, name):
    S = _Setup(name, n=100)
    got, _ = _build_and_run(tmp_path, S, GCC, SANITIZE)
    want = S.qp.reference(S.test)
    for o in S.prog.outputs:
        w = np.asarray(want[o], np.float64).ravel()
        # a float stage's libm result may differ from numpy's in the last bit, and that may move a
        # value quantized after it by one step: allow two steps of the output's int8 scale
        err = np.abs(got[o] - w).max() / max(np.abs(w).max(), 1e-30)
        assert err < 2e-2, (name, o, err)
        assert np.mean(got[o] == w.astype(np.float32)) > 0.9


EDGES = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include "digits.h"
static float x[3 * 64], y[3 * 10];
static float work[DIGITS_WORKSPACE_BYTES / sizeof(float) + 2];
int main(void)
{
    for (int i = 0; i < 3 * 64; ++i) x[i] = (float)(i % 17) / 16.0F;
    printf("ok %d\n", digits_forward(3, x, y, work, sizeof work));
    printf("n0 %d\n", digits_forward(0, x, y, work, sizeof work));
    printf("nneg %d\n", digits_forward(-5, x, y, work, sizeof work));
    printf("nullx %d\n", digits_forward(3, NULL, y, work, sizeof work));
    printf("nully %d\n", digits_forward(3, x, NULL, work, sizeof work));
    printf("nullw %d\n", digits_forward(3, x, y, NULL, sizeof work));
    printf("short %d\n", digits_forward(3, x, y, work, DIGITS_WORKSPACE_BYTES - 1));
    printf("align %d\n", digits_forward(3, x, y, (char *)work + 1, DIGITS_WORKSPACE_BYTES));
    printf("size0 %d\n", (int)digits_workspace_size(0));
    printf("size1 %d\n", (int)(digits_workspace_size(1) == DIGITS_WORKSPACE_BYTES));
    printf("sizemax %d\n", (int)(digits_workspace_size(2147483647) == DIGITS_WORKSPACE_BYTES));
    x[70] = NAN;
    printf("nan %d\n", digits_forward(3, x, y, work, sizeof work));
    x[70] = INFINITY;
    printf("inf %d\n", digits_forward(3, x, y, work, sizeof work));
    printf("identity %d\n", digits_check_identity());
    return 0;
}
"""


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_every_edge_returns_its_code(tmp_path):
    d = tmp_path / "e"
    _Setup("digits").export(d)
    (d / "edges.c").write_text(EDGES)
    p = subprocess.run([GCC, *STRICT, *SANITIZE, f"-I{d}", str(d / "digits.c"), str(d / "edges.c"), "-o",
                        str(d / "edges"), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run([str(d / "edges")], capture_output=True, text=True)
    assert r.returncode == 0 and "runtime error" not in r.stderr, r.stderr
    got = dict(line.split() for line in r.stdout.splitlines())
    from gradc.abi import EIDENTITY, ENONFINITE, EWORKSPACE
    assert EIDENTITY and got == {"ok": "0", "n0": "1", "nneg": "1", "nullx": "2", "nully": "2", "nullw": "2",
                                 "short": str(EWORKSPACE), "align": str(EWORKSPACE), "size0": "0", "size1": "1",
                                 "sizemax": "1", "nan": str(ENONFINITE), "inf": str(ENONFINITE), "identity": "0"}


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_an_id_out_of_range_returns_eindex(tmp_path):
    S = _Setup("recsys", n=50)
    prog, test = S.prog, S.test
    d = tmp_path / "r"
    S.export(d)
    ids = [t for t in prog.inputs if t.dtype == INT]
    bad = {k: v.copy() for k, v in test.items()}
    bad[ids[0].name][3] = prog.int_bounds[ids[0].name][0]       # one past the table
    for k, v in bad.items():
        np.asarray(v, np.int32 if v.dtype.kind == "i" else np.float32).tofile(d / f"in_{k}.bin")
    (d / "drv.c").write_text(_driver(prog, N))
    p = subprocess.run([GCC, *STRICT, *SANITIZE, f"-I{d}", str(d / f"{prog.name}.c"), str(d / "drv.c"), "-o",
                        str(d / "drv"), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run([str(d / "drv")], cwd=d, capture_output=True, text=True)
    from gradc.abi import EINDEX
    assert f"rc {EINDEX}" in r.stdout and "runtime error" not in r.stderr, r.stdout + r.stderr


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_test_vectors_check_the_device_bit_for_bit(tmp_path):
    S = _Setup("digits_cnn")
    d = tmp_path / "tv"
    export(S.model, str(d), weights=S.params, quantize="int8", calibrate=S.calib, test_vectors=20)
    src = (d / "digits_cnn_selftest.c").read_text()
    assert "(bit for bit)" in src and "digits_cnn_weights" not in src
    p = subprocess.run([GCC, *STRICT, *SANITIZE, f"-I{d}", str(d / "digits_cnn.c"), str(d / "digits_cnn_selftest.c"),
                        "-o", str(d / "st"), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run([str(d / "st")], capture_output=True, text=True)
    assert r.returncode == 0 and "20 samples match" in r.stdout, r.stdout + r.stderr
    # one stored output off by one float32 step: the self-test names that sample
    m = re.search(r"want_logits\[200\] = \{\s*([^,\s]+),", src)
    nudged = np.nextafter(np.float32(float(m.group(1).rstrip("F"))), np.float32(np.inf))
    src2 = src[:m.start(1)] + f"{float(nudged)!r}F" + src[m.end(1):]
    (d / "digits_cnn_selftest.c").write_text(src2)
    p = subprocess.run([GCC, *STRICT, f"-I{d}", str(d / "digits_cnn.c"), str(d / "digits_cnn_selftest.c"),
                        "-o", str(d / "st2"), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run([str(d / "st2")], capture_output=True, text=True)
    assert r.returncode == 1 and "sample 1 differs" in r.stdout, r.stdout


# ---- regressions: models the review found wrong ----------------------------------------------

HEAD = "import sympy as sp\nimport gradc as gc\nfrom gradc import layers as L\n"
REVIEWED = {
    # a max pool's and a copy's int8 output is encoded as its source: the readers decoded it with the
    # pooled tensor's own range (errors of 25-50% of the output's range)
    "pool_chain": """m = gc.Model("pool_chain")
x = m.input("x", (1, 8))
W, b = m.param("W", (2, 4)), m.param("b", 2)
y = m.output("y", W @ L.flatten(L.max_pool1d(x, 2)) + b)
m.loss(gc.mse(y, m.target("t", (2,))))
""",
    "slice_out": """m = gc.Model("slice_out")
x = m.input("x", 6)
W = m.param("W", (2, 3))
a = m.output("a", gc.relu(x)[3:6])
y = m.output("y", W @ gc.tanh(L.max_pool1d(x.reshape(1, 6), 2).reshape(3)))
m.loss(gc.mse(y, m.target("t", (2,))) + gc.sum_squares(a))
""",
    "conv1d_tanh_pool": """m = gc.Model("conv1d_tanh_pool")
x = m.input("x", (3, 16))
K, c = m.param("K", (5, 3, 3)), m.param("c", 5)
h = L.max_pool1d(gc.tanh(L.conv1d(x, K, c, stride=2, padding=1)), 2)
W, b = m.param("W", (2, 20)), m.param("b", 2)
y = m.output("y", W @ L.flatten(h) + b)
m.loss(gc.mse(y, m.target("t", (2,))))
""",
    # a zero channel with a bias shared by every channel: all weights rounded to 0
    "zero_channel": """m = gc.Model("zero_channel")
x = m.input("x", 5)
W, b1, U = m.param("W", (4, 5)), m.param("b1", 1), m.param("U", (3, 4))
k = gc.index("k")
h = m.define("h", 4, lambda i: sp.Max(0, sp.Sum(W[i, k] * x[k], (k, 0, 4)) + b1[0]))
y = m.output("y", U @ h)
m.loss(gc.mse(y, m.target("t", (3,))))
""",
    # leaky relu and GELU after a dense layer: fused as tables (SymPy had distributed their
    # coefficients, so they ran in float), and GELU's sqrt(2) printed as M_SQRT2 (not C99)
    "leaky_gelu": """m = gc.Model("leaky_gelu")
x = m.input("x", 4)
W1, b1 = m.param("W1", (4, 4)), m.param("b1", 4)
W2, b2 = m.param("W2", (4, 4)), m.param("b2", 4)
W3 = m.param("W3", (2, 4))
y = m.output("y", W3 @ L.gelu(W2 @ L.leaky_relu(W1 @ x + b1, 0.1) + b2))
m.loss(gc.mse(y, m.target("t", (2,))))
""",
}


def _zero_channel(p):
    p["W"][0] = 0.0


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("name", list(REVIEWED))
def test_reviewed_models_follow_the_float_model_and_the_c_equals_the_reference(tmp_path, write_model, name):
    path = write_model(HEAD + REVIEWED[name], name=f"{name}.py")
    S = _Setup(path, n=300, edit=_zero_channel if name == "zero_channel" else None)
    # slice_out's output a = relu(x)[3:6] reads the float input and no int8 stage reads it: exact in float
    assert S.qp.float_stages == (["a"] if name == "slice_out" else []), S.qp.report()
    if name == "leaky_gelu":
        assert sum("dense/conv, table" in line for line in S.qp.report()) == 2, S.qp.report()
    want_f = S.mod.forward(S.params, **S.test)
    ref = S.qp.reference(S.test)
    for o in S.prog.outputs:
        span = float(want_f[o].max() - want_f[o].min())
        err = float(np.abs(ref[o] - want_f[o]).max())
        assert err < 0.03 * span, f"{name} {o}: int8 off by {err / span:.1%} of the output's range"
    got, _ = _build_and_run(tmp_path, S, GCC, SANITIZE)
    for o in S.prog.outputs:
        assert np.array_equal(got[o].view(np.uint32), np.asarray(ref[o], np.float32).ravel().view(np.uint32)), o


def test_a_gelu_model_exports_as_c99_in_float_too(tmp_path, write_model):
    if GCC is None:
        pytest.skip("gcc is not installed")
    path = write_model(HEAD + REVIEWED["leaky_gelu"], name="leaky_gelu.py")
    for dtype in ("float32", "float64"):
        d = tmp_path / dtype
        export(load_model_file(path), str(d), dtype=dtype)
        text = (d / "leaky_gelu.c").read_text()
        assert "M_SQRT" not in text and "M_2_SQRTPI" not in text
        p = subprocess.run([GCC, *STRICT, "-c", str(d / "leaky_gelu.c"), "-o", str(d / "o.o")],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]


def test_a_range_beyond_float32_is_refused_naming_the_stage(write_model):
    path = write_model(HEAD + REVIEWED["pool_chain"], name="pool_chain.py")
    with pytest.raises(ValueError, match=r"~r1 \(pool_chain.py:\d+\) spans .* beyond what a float32 scale holds"):
        _plan(path, edit=lambda p: p["W"].__setitem__(Ellipsis, 1e42), n=20)   # noqa: B023
    prog = lower_model(load_model_file(path))
    with pytest.raises(ValueError, match="parameter 'b' holds a NaN"):
        Q.plan(prog, {"W": np.ones((2, 4)), "b": np.array([0.0, np.nan])}, {"x": np.ones((3, 1, 8))})


def test_ids_out_of_range_are_refused_by_the_reference_and_the_calibration():
    mod, prog, p, qp, data = _plan("recsys", n=50)
    ids = next(t for t in prog.inputs if t.dtype == INT)
    bad = {k: v.copy() for k, v in data.items()}
    bad[ids.name][7] = -1
    with pytest.raises(ValueError, match=f"input {ids.name!r} holds an id out of its range .the C returns EINDEX"):
        qp.reference(bad)
    with pytest.raises(ValueError, match=f"calibration input {ids.name!r} holds an id out of its range"):
        Q.plan(prog, p, bad)
    frac = {k: (v + 0.5 if k == ids.name else v) for k, v in data.items()}
    with pytest.raises(ValueError, match="not whole numbers"):
        Q.plan(prog, p, frac)


NAN_ONLY_FLOAT = """m = gc.Model("nan_float")
x, z = m.input("x", 3), m.input("z", 3)
W, b = m.param("W", (2, 3)), m.param("b", 2)
y = m.output("y", W @ gc.relu(x) + b)
q = m.output("q", x * z)
m.loss(gc.mse(y, m.target("t", (2,))) + gc.sum_squares(q))
"""


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_nan_in_an_input_only_float_stages_read_returns_enonfinite(tmp_path, write_model):
    from gradc.abi import ENONFINITE
    S = _Setup(write_model(HEAD + NAN_ONLY_FLOAT, name="nan_float.py"), n=50)
    for bad in (np.nan, np.inf):
        S.test["z"][5, 1] = bad
        with pytest.raises(ValueError, match="input 'z' holds a NaN or Inf .the C returns ENONFINITE"):
            S.qp.reference(S.test)
        d = tmp_path / f"nf{bad}"
        S.export(d)
        for k, v in S.test.items():
            np.asarray(v, np.float32).tofile(d / f"in_{k}.bin")
        (d / "drv.c").write_text(_driver(S.prog, N))
        p = subprocess.run([GCC, *STRICT, *SANITIZE, f"-I{d}", str(d / "nan_float.c"), str(d / "drv.c"), "-o",
                            str(d / "drv"), "-lm"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        r = subprocess.run([str(d / "drv")], cwd=d, capture_output=True, text=True)
        assert f"rc {ENONFINITE}" in r.stdout and "runtime error" not in r.stderr, r.stdout + r.stderr


# ---- the CLI ------------------------------------------------------------------------------

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gradc", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_cli_prints_how_each_stage_runs_and_refuses_mistakes_with_one_line(tmp_path):
    model = os.path.join(EXAMPLES, "moons", "model.py")
    mod = gradc.load(model)
    np.savez(tmp_path / "w.npz", **mod.init_params(seed=0))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(64, 2)), y=np.ones(64))
    np.savez(tmp_path / "bad.npz", x=rng.normal(size=(64, 3)))
    np.savez(tmp_path / "other.npz", z=rng.normal(size=(64, 2)))
    r = _cli("export", model, "--weights", "w.npz", "--quantize", "int8", "--calibrate", "cal.npz", "-o", "out",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "int8 export, how each stage runs" in r.stdout and "float x: input quantized" in r.stdout
    assert r.stdout.count("int8  ") == 3 and "moons.c" in r.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["CMakeLists.txt", "moons.c", "moons.h"]
    cases = [
        (["--quantize", "int8", "--calibrate", "cal.npz"], "needs the trained weights"),
        (["--weights", "w.npz", "--quantize", "int8"], "needs calibration data"),
        (["--weights", "w.npz", "--calibrate", "cal.npz"], "--calibrate is for --quantize int8"),
        (["--weights", "w.npz", "--quantize", "int8", "--calibrate", "bad.npz"], "input 'x' has shape (64, 3)"),
        (["--weights", "w.npz", "--quantize", "int8", "--calibrate", "other.npz"], "no array 'x'"),
        (["--weights", "w.npz", "--quantize", "int8", "--calibrate", "nope.npz"], "nope.npz"),
        (["--weights", "w.npz", "--quantize", "int8", "--calibrate", "cal.npz", "--trainable", "W3"],
         "--trainable is for a float export"),
        (["--weights", "w.npz", "--quantize", "int8", "--calibrate", "cal.npz", "--lanes", "4"],
         "--lanes is for a float export"),
        (["--weights", "w.npz", "--quantize", "int8", "--calibrate", "cal.npz", "--dtype", "float64"],
         "takes and returns float32"),
    ]
    for extra, msg in cases:
        r = _cli("export", model, *extra, "-o", "bad_out", cwd=tmp_path)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "bad_out").exists()


def test_calibration_data_with_nan_is_refused_naming_the_input(tmp_path):
    mod = gradc.load(os.path.join(EXAMPLES, "moons", "model.py"))
    x = np.random.default_rng(0).normal(size=(10, 2))
    x[4, 1] = np.nan
    with pytest.raises(gradc.errors.ModelError, match="calibration input 'x' holds a NaN"):
        export(load_model_file(os.path.join(EXAMPLES, "moons", "model.py")), str(tmp_path / "o"),
               weights=mod.init_params(seed=0), quantize="int8", calibrate={"x": x})
    assert not (tmp_path / "o").exists()


# ---- the README ---------------------------------------------------------------------------

@pytest.mark.skipif(GCC is None or importlib.util.find_spec("sklearn") is None,
                    reason="needs gcc and scikit-learn (the digits)")
def test_readme_int8_table_is_what_compare_py_measures(tmp_path):
    spec = importlib.util.spec_from_file_location("gradc_int8_compare", os.path.join(EXAMPLES, "int8", "compare.py"))
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    rows = {name: cmp.run(name, str(tmp_path)) for name in cmp.MODELS}
    for name, r in rows.items():
        f32, i8 = r[0], r[1]
        assert i8 >= f32 - 0.01, f"{name}: int8 {i8:.1%} is more than 1 point below float32 {f32:.1%}"
        assert r[3] < r[2] and r[5] < r[4], f"{name}: int8 is not smaller than float32"
        assert r[6] == [], f"{name}: stages left in float: {r[6]}"
    table = cmp.table(rows)
    print("\n" + table)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    stated = readme.count(table)
    if shutil.which("gcc") and subprocess.run(["gcc", "-dumpversion"], capture_output=True, text=True).stdout \
            .strip().split(".")[0] != "12":
        pytest.skip("the README's sizes are gcc 12's")
    assert stated == 1, f"README.md lacks the int8 table measured now (python examples/int8/compare.py):\n{table}"
    d, c = rows["digits"], rows["digits_cnn"]
    row = (f"int8 test accuracy {d[1]:.1%} and {c[1]:.1%} (float32: {d[0]:.1%} and {c[0]:.1%}) in "
           f"{d[2] / d[3]:.1f}x and {c[2] / c[3]:.1f}x less flash")
    assert row in readme, f"README.md's examples table lacks: {row}"
