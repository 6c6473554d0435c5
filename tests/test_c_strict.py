"""The generated C, held to the standard a user's C project holds it to.

For the two examples and three small models (an int32 embedding gather, a
sympy-Matrix-style model, sigmoid/softplus/logsumexp), in float32 and float64:

* ``NAME.c`` compiles with ``gcc -std=c99 -Wall -Wextra -Werror -pedantic``
  (float32 also with ``-Wdouble-promotion -Wfloat-conversion``);
* ``NAME.h`` compiles in a C++17 translation unit and links against the C object;
* a C driver built with AddressSanitizer and UBSan calls ``NAME_loss_grad``,
  ``NAME_loss`` and ``NAME_forward`` on deterministic data, and its numbers
  match the Python module's (1e-12 relative in float64, 1e-5 in float32);
* the error codes: n < 1, every NULL pointer, every out-of-range int32 index
  give the documented nonzero code, with no out-of-bounds access;
* the generated source is byte-identical across processes with different
  ``PYTHONHASHSEED`` values.

The C sources come from the cache entry that ``gradc.load`` uses, so the
driver and the Python module run the very same code.
"""
import difflib
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES, ROOT
from gradc.abi import EWORKSPACE

GCC = shutil.which("gcc")
GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow"]
FLOAT_WARN = ["-Wdouble-promotion", "-Wfloat-conversion"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
RTOL = {"float64": 1e-12, "float32": 1e-5}
DTYPES = ("float64", "float32")
N = 5           # samples in the driver's batch

# ---- small models -------------------------------------------------------------
SMALL = {
    # embedding gathers E[u, k] by int32 inputs, used in forward and loss; the two elements
    # of "ctx" index tables of different sizes
    "emb": '''
import sympy as sp
import gradc as gc

m = gc.Model("emb")
u = m.input("user", dtype="int32")
v = m.input("item", dtype="int32")
ctx = m.input("ctx", 2, dtype="int32")
r = m.target("rating")
P = m.param("P", (7, 3), init=gc.init.uniform(-1, 1))
Q = m.param("Q", (5, 3), init=gc.init.uniform(-1, 1))
C = m.param("C", (4, 2), init=gc.init.uniform(-1, 1))
D = m.param("D", (6, 2), init=gc.init.uniform(-1, 1))
bu = m.param("bu", 7, init=0)
k = gc.index("k")
pu = m.define("pu", 3, lambda j: P[u, j])
qv = gc.embedding(Q, v)
score = m.output("score", sp.Sum(pu[k] * qv[k], (k, 0, 2)) + bu[u]
                 + C[ctx[0], 0] * D[ctx[1], 1] + C[ctx[0], 1] * D[ctx[1], 0])
m.loss((score - r) ** 2)
m.regularize(1e-3 * gc.sum_squares(P, Q))
''',
    # scalar SymPy / Matrix style: W.M * x.M, applyfunc, a rank-0 parameter
    "matstyle": '''
import sympy as sp
import gradc as gc

m = gc.Model("matstyle")
x = m.input("x", 3)
y = m.target("y")
W = m.param("W", (4, 3), init=gc.init.uniform(-1, 1))
b = m.param("b", 4, init=0)
V = m.param("V", (1, 4), init=gc.init.uniform(-1, 1))
c = m.param("c")
h = (W.M * x.M + b.M).applyfunc(sp.tanh)
H = m.define("h", h)
s = m.output("score", (V.M * H.M)[0, 0] + c)
m.loss((s - y) ** 2 / 2 + sp.log(1 + sp.exp(-s * y)))
''',
    # sigmoid, softplus, logsumexp, bce_with_logits, an int32 target as an index
    "smooth": '''
import sympy as sp
import gradc as gc

m = gc.Model("smooth")
x = m.input("x", 4)
y = m.target("y")
label = m.target("label", dtype="int32")
W = m.param("W", (5, 4), init=gc.init.uniform(-1, 1))
b = m.param("b", 5, init=0)
u = m.param("u", (1, 5), init=gc.init.uniform(-1, 1))
z = m.output("z", W @ x + b)
s = m.output("s", (u @ gc.sigmoid(z))[0])
lse = gc.logsumexp(z)
m.loss(gc.bce_with_logits(s, y) + 0.5 * (lse - z[label]) + 0.1 * gc.softplus(z[0] - z[1]))
''',
    # constants: sp.pi in the loss, and erf, whose derivative holds 2/sqrt(pi)
    "consts": '''
import sympy as sp
import gradc as gc

m = gc.Model("consts")
x = m.input("x", 2)
y = m.target("y")
w = m.param("w", 2, init=gc.init.uniform(-1, 1))
z = m.output("z", w[0] * x[0] + w[1] * x[1])
m.loss((sp.erf(z) - y) ** 2 + sp.pi / 100 * w[0] ** 2)
''',
    # zero padding (a guarded read: the backward pass writes no adjoint out of range) and a
    # flatten by // and % (C's integer division and remainder)
    "padflat": '''
import sympy as sp
import gradc as gc

# zero padding (a guarded read) on the input and on a hidden map, then a flatten by // and %
m = gc.Model("padflat")
x, y = m.input("x", (2, 4, 4)), m.target("y")
K1 = m.param("K1", (3, 2, 3, 3), init=gc.init.uniform(-0.5, 0.5))
K2 = m.param("K2", (2, 3, 3, 3), init=gc.init.uniform(-0.5, 0.5))
W = m.param("W", (1, 32), init=gc.init.uniform(-0.5, 0.5))


def pad(t, C):
    return m.define(m.auto_name(), (C, 6, 6), lambda c, i, j: sp.Piecewise(
        (t[c, i - 1, j - 1], sp.And(i >= 1, i < 5, j >= 1, j < 5)), (0, True)))


def conv(P, K, O, C):
    c, k, l = m.fresh_index(), m.fresh_index(), m.fresh_index()
    return m.define(m.auto_name(), (O, 4, 4), lambda o, i, j: sp.Sum(
        K[o, c, k, l] * P[c, i + k, j + l], (c, 0, C - 1), (k, 0, 2), (l, 0, 2)))


h = m.materialize(gc.tanh(conv(pad(x, 2), K1, 3, 2)))
z = conv(pad(h, 3), K2, 2, 3)
f = m.define("f", 32, lambda q: z[q // 16, (q % 16) // 4, q % 4])
s = m.output("s", (W @ f)[0])
m.loss((s - y) ** 2)
''',
    # no m.output: forward has nothing to compute (it once left an unused variable behind)
    "noout": '''
import gradc as gc

m = gc.Model("noout")
x, y = m.input("x", 3), m.target("y")
W = m.param("W", (2, 3), init=gc.init.uniform(-1, 1))
m.loss(((W @ x)[1] - y) ** 2)
''',
    # parameters alone: the loss is computed once per batch, no block of samples at all
    "paramsonly": '''
import sympy as sp
import gradc as gc

m = gc.Model("paramsonly")
a = m.param("a", 3, init=gc.init.uniform(-1, 1))
k = gc.index("k")
m.loss(sp.Sum((a[k] - 1) ** 2, (k, 0, 2)) + sp.exp(a[0]))
''',
}
EXAMPLE_MODELS = {"moons": os.path.join(EXAMPLES, "moons", "model.py"),
                  "mnist_mlp": os.path.join(EXAMPLES, "mnist_mlp", "model.py")}
MODELS = list(EXAMPLE_MODELS) + list(SMALL)

def _marked(name, *rest):
    # "consts" (pi, E, erf) once printed as M_PI / M_E: not C99, and doubles in float32 code
    return pytest.param(name, *rest)


CASES = [_marked(m, d) for m in MODELS for d in DTYPES]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("c_strict_models")
    for name, src in SMALL.items():
        (d / f"{name}.py").write_text(src.lstrip())
    return d


def model_path(model_dir, name):
    return EXAMPLE_MODELS.get(name) or str(model_dir / f"{name}.py")


@pytest.fixture(scope="module")
def built(model_dir):
    """(model, dtype) -> the cache entry gradc.load uses (entry folder, meta), built once per module."""
    from gradc.api import build_model, load_model_file

    @functools.lru_cache(maxsize=None)
    def get(name, dtype):
        entry, meta = build_model(load_model_file(model_path(model_dir, name)), dtype)
        return entry, meta
    return get


def _run(cmd, cwd=None, env=None, timeout=120):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _sources(built, name, dtype, dest):
    entry, meta = built(name, dtype)
    M = meta["prefix"]
    for ext in (".c", ".h"):
        shutil.copyfile(os.path.join(entry, M + ext), os.path.join(dest, M + ext))
    return M, meta


# ---- 1. strict C99 --------------------------------------------------------------
@pytest.mark.parametrize("name,dtype", CASES)
def test_c_source_compiles_as_strict_c99(built, tmp_path, name, dtype):
    M, _ = _sources(built, name, dtype, tmp_path)
    for opt in ("-O0", "-O2"):      # -O2 enables the flow-based warnings (maybe-uninitialized, ...)
        p = _run([GCC, *STRICT, opt, "-c", f"{M}.c", "-o", f"{M}.o"], cwd=tmp_path)
        assert p.returncode == 0, f"gcc {' '.join(STRICT)} {opt} rejects {M}.c:\n{p.stderr}"


@pytest.mark.parametrize("name", [_marked(m) for m in MODELS])
def test_float32_source_has_no_double_promotion_or_float_conversion(built, tmp_path, name):
    M, _ = _sources(built, name, "float32", tmp_path)
    p = _run([GCC, *STRICT, *FLOAT_WARN, "-O2", "-c", f"{M}.c", "-o", f"{M}.o"], cwd=tmp_path)
    assert p.returncode == 0, f"float32 {M}.c promotes to double or converts floats:\n{p.stderr}"


# ---- 2. the header in C++ ---------------------------------------------------------
@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
@pytest.mark.parametrize("name,dtype", [("moons", "float64"), ("mnist_mlp", "float32"), ("emb", "float64"),
                                        ("matstyle", "float32"), ("smooth", "float64")])
def test_header_compiles_and_links_in_cxx17(built, tmp_path, name, dtype):
    M, meta = _sources(built, name, dtype, tmp_path)
    MU = M.upper()
    (tmp_path / "main.cpp").write_text(textwrap.dedent(f"""\
        #include <cstdio>
        #include <vector>
        #include "{M}.h"
        int main() {{
            std::vector<{M}_real> params({MU}_N_PARAMS), grad({MU}_N_PARAMS);
            std::vector<unsigned char> work({M}_workspace_size(1) + 1);
            {M}_real loss = 0;
            // n = 0 must be refused before any pointer is used: every function links and answers
            int rc = {M}_loss_grad(0, params.data(){", nullptr" * (len(meta["inputs"]) + len(meta["targets"]))},
                                   &loss, grad.data(), work.data(), work.size());
            std::printf("%d %d\\n", rc, {MU}_OK);
            return rc == {MU}_EBATCH ? 0 : 1;
        }}
        """))
    p = _run([GCC, *STRICT, "-c", f"{M}.c", "-o", f"{M}.o"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = _run([GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "main.cpp", f"{M}.o",
              "-o", "main", "-lm"], cwd=tmp_path)
    assert p.returncode == 0, f"{M}.h in a C++17 translation unit:\n{p.stderr}"
    p = _run([str(tmp_path / "main")], cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


# ---- 3. a C driver under ASan/UBSan ------------------------------------------------
def _mix(j, seed):
    """The driver's integer hash, bit for bit (uint32 arithmetic)."""
    M32 = np.uint64(0xFFFFFFFF)
    h = (np.asarray(j, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed * 2246822519 + 374761393)) & M32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(2246822519)) & M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(3266489917)) & M32
    h ^= h >> np.uint64(16)
    return h


def _reals(count, seed, scale, dtype):
    v = (_mix(np.arange(count), seed) % np.uint64(2001)).astype(np.float64) / 1000.0 - 1.0
    return (v * scale).astype(dtype)


def _ints(count, seed, bounds):
    return (_mix(np.arange(count), seed) % bounds).astype(np.int32)


PARAM_SCALE = 0.125     # powers of two: exact in both C and numpy
DATA_SCALE = 2.0


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _bounds(meta, name, size):
    """Per-element exclusive bounds of an int32 argument (3 where an element indexes nothing), and
    the elements that index a tensor."""
    b = meta["int_bounds"].get(name)
    if b is None:
        return [3] * size, []
    if isinstance(b, int):           # one bound for every element
        b = [b] * size
    return [3 if x is None else x for x in b], [j for j, x in enumerate(b) if x is not None]


def _arg_plan(meta):
    """Inputs then targets, as the ABI orders them: (kind, name, size, is_int, seed, bounds, indexing)."""
    plan = []
    for kind in ("inputs", "targets"):
        for a in meta[kind]:
            is_int = a["dtype"] == "int32"
            size = _size(a["shape"])
            bounds, indexing = _bounds(meta, a["name"], size) if is_int else (None, [])
            plan.append((kind, a["name"], size, is_int, 10 + len(plan), bounds, indexing))
    return plan


def _driver(meta):
    """C source of a driver for ``meta``'s model; output lines are ``tag value value ...``."""
    M, R = meta["prefix"], meta["prefix"] + "_real"
    MU = M.upper()
    plan = _arg_plan(meta)
    ins = [p for p in plan if p[0] == "inputs"]
    tgs = [p for p in plan if p[0] == "targets"]
    outs = [(o["name"], _size(o["shape"])) for o in meta["outputs"]]
    var = {p[1]: f"a{k}" for k, p in enumerate(plan)}
    ovar = {o: f"o{k}" for k, (o, _) in enumerate(outs)}
    ct = lambda p: "int32_t" if p[3] else R  # noqa: E731

    L = []
    w = L.append
    w("#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n")
    w(f'#include "{M}.h"\n')
    w(f"#define N {N}\n")
    w("""
static uint32_t mix(uint32_t j, uint32_t seed)
{
    uint32_t h = j * 2654435761u + (seed * 2246822519u + 374761393u);
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    return h;
}
""")
    w(f"""
static void fill_real({R} *a, size_t cnt, uint32_t seed, double scale)
{{
    for (size_t j = 0; j < cnt; ++j)
        a[j] = ({R})(((double)(mix((uint32_t)j, seed) % 2001u) / 1000.0 - 1.0) * scale);
}}

static void fill_int(int32_t *a, size_t cnt, uint32_t seed, const uint32_t *bounds, size_t size)
{{
    for (size_t j = 0; j < cnt; ++j) a[j] = (int32_t)(mix((uint32_t)j, seed) % bounds[j % size]);
}}

static void put(const char *tag, const {R} *a, size_t cnt)
{{
    printf("%s", tag);
    for (size_t j = 0; j < cnt; ++j) printf(" %.17g", (double)a[j]);
    printf("\\n");
}}

static void *xmalloc(size_t bytes)
{{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {{ fprintf(stderr, "out of memory\\n"); exit(97); }}
    return p;
}}
""")

    def call(fn, n="N", sub=None, loss="loss", grad="grad", work="work", params="params", work_bytes="wsb"):
        sub = sub or {}
        a = [n, params]
        if fn == "forward":
            a += [sub.get(p[1], var[p[1]]) for p in ins] + [sub.get("out:" + o, ovar[o]) for o, _ in outs]
        else:
            a += [sub.get(p[1], var[p[1]]) for p in ins + tgs] + [loss]
            if fn == "loss_grad":
                a.append(grad)
        a += [work, work_bytes]
        return f"{M}_{fn}({', '.join(a)})"

    w("int main(void)\n{\n    (void)fill_int;\n")
    w(f"    if ({MU}_N_PARAMS != {meta['n_params']}) {{ fprintf(stderr, \"N_PARAMS\\n\"); return 90; }}\n")
    w(f"    if ({MU}_WORKSPACE_REALS != {meta['ws_reals']}) {{ fprintf(stderr, \"WORKSPACE\\n\"); return 91; }}\n")
    w(f"    const size_t wsb = {M}_workspace_size(N);\n")
    w(f"    if (wsb < (size_t){MU}_WORKSPACE_REALS * sizeof({R})) {{ fprintf(stderr, \"wsb\\n\"); return 92; }}\n")
    w("    void *work = xmalloc(wsb);\n")     # exactly the size the header asks for: ASan checks the bound
    w(f"    {R} *params = xmalloc(sizeof({R}) * {MU}_N_PARAMS);\n")
    w(f"    {R} *grad = xmalloc(sizeof({R}) * {MU}_N_PARAMS);\n")
    w(f"    {R} *grad2 = xmalloc(sizeof({R}) * {MU}_N_PARAMS);\n")
    w(f"    {R} *loss = xmalloc(sizeof({R}));\n    {R} *loss2 = xmalloc(sizeof({R}));\n")
    w(f"    fill_real(params, {MU}_N_PARAMS, 1u, {PARAM_SCALE!r});\n")
    for p in plan:
        kind, name, size, is_int, seed, bounds, _ = p
        v = var[name]
        w(f"    {ct(p)} *{v} = xmalloc(sizeof({ct(p)}) * N * {size});\n")
        if is_int:
            w(f"    static const uint32_t bounds_{v}[{size}] = {{{', '.join(f'{b}u' for b in bounds)}}};\n")
            w(f"    fill_int({v}, (size_t)N * {size}, {seed}u, bounds_{v}, {size});\n")
        else:
            w(f"    fill_real({v}, (size_t)N * {size}, {seed}u, {DATA_SCALE!r});\n")
    for o, size in outs:
        w(f"    {R} *{ovar[o]} = xmalloc(sizeof({R}) * N * {size});\n")
    w("    int rc;\n")
    # the three functions on valid data
    w(f"    rc = {call('loss_grad')};\n    printf(\"rc_loss_grad %d\\n\", rc);\n")
    w(f"    put(\"loss_grad.loss\", loss, 1);\n    put(\"grad\", grad, {MU}_N_PARAMS);\n")
    w(f"    rc = {call('loss', loss='loss2')};\n    printf(\"rc_loss %d\\n\", rc);\n    put(\"loss\", loss2, 1);\n")
    w(f"    rc = {call('forward')};\n    printf(\"rc_forward %d\\n\", rc);\n")
    for o, size in outs:
        w(f"    put(\"out.{o}\", {ovar[o]}, (size_t)N * {size});\n")
    # empty and negative batches
    for n in ("0", "-1"):
        calls = ", ".join(call(fn, n=n) for fn in ("loss_grad", "loss", "forward"))
        w(f"    printf(\"rc_n{n} %d %d %d\\n\", {calls});\n")
    # a workspace one byte short: EWORKSPACE, nothing written (ASan would see a write past it)
    calls = ", ".join(call(fn, work_bytes="wsb - 1", loss="loss2", grad="grad2") for fn in ("loss_grad", "loss", "forward"))
    w(f"    printf(\"rc_short %d %d %d\\n\", {calls});\n")
    # every pointer argument NULL in turn
    ptr_args = {
        "loss_grad": ["params"] + [p[1] for p in ins + tgs] + ["loss", "grad", "work"],
        "loss": ["params"] + [p[1] for p in ins + tgs] + ["loss", "work"],
        "forward": ["params"] + [p[1] for p in ins] + ["out:" + o for o, _ in outs] + ["work"],
    }
    for fn, names in ptr_args.items():
        calls = []
        for a in names:
            kw = {}
            if a in ("params", "loss", "grad", "work"):
                kw[a] = "NULL"
            else:
                kw["sub"] = {a: "NULL"}
            calls.append(call(fn, **kw))
        w(f"    printf(\"rc_null_{fn}" + " %d" * len(calls) + "\\n\", " + ", ".join(calls) + ");\n")
    # out-of-range int32 indices: a copy of exactly the right size with one bad element
    for p in plan:
        kind, name, size, is_int, seed, bounds, indexing = p
        if not indexing:
            continue
        bad = f"bad_{var[name]}"
        w(f"    int32_t *{bad} = xmalloc(sizeof(int32_t) * N * {size});\n")
        fns = ["loss_grad", "loss"] + (["forward"] if kind == "inputs" else [])
        first, last = indexing[0], indexing[-1]
        for tag, (pos, value) in {"at_bound": (2 * size + first, str(bounds[first])),
                                  "minus_one": (2 * size + last, "-1"),
                                  "int_max": ((N - 1) * size + last, "INT32_MAX"),
                                  "int_min": (first, "INT32_MIN")}.items():
            w(f"    memcpy({bad}, {var[name]}, sizeof(int32_t) * N * {size});\n    {bad}[{pos}] = {value};\n")
            calls = [call(fn, sub={name: bad}, loss="loss2", grad="grad2") for fn in fns]
            w(f"    printf(\"rc_index.{name}.{tag}" + " %d" * len(calls) + "\\n\", " + ", ".join(calls) + ");\n")
        w(f"    free({bad});\n")
    # no state is kept between calls: after all the failures the same call gives the same bits
    w(f"    rc = {call('loss_grad', loss='loss2', grad='grad2')};\n")
    w(f"    printf(\"again %d %d\\n\", rc, memcmp(grad, grad2, sizeof({R}) * {MU}_N_PARAMS) == 0"
      f" && memcmp(loss, loss2, sizeof({R})) == 0);\n")
    for v in ["work", "params", "grad", "grad2", "loss", "loss2"] + list(var.values()) + list(ovar.values()):
        w(f"    free({v});\n")
    w("    return 0;\n}\n")
    return "".join(L)


def _parse(stdout):
    out = {}
    for line in stdout.splitlines():
        tag, *vals = line.split()
        out[tag] = vals
    return out


def _python_data(meta, dtype):
    params = _reals(meta["n_params"], 1, PARAM_SCALE, dtype)
    data = {}
    for kind, name, size, is_int, seed, bounds, _ in _arg_plan(meta):
        a = meta[kind][[x["name"] for x in meta[kind]].index(name)]
        if is_int:
            per = np.tile(np.array(bounds, dtype=np.uint64), N)
            data[name] = _ints(N * size, seed, per).reshape((N, *a["shape"]))
        else:
            data[name] = _reals(N * size, seed, DATA_SCALE, dtype).reshape((N, *a["shape"]))
    return params, data


def _assert_close(c, py, rtol, what):
    c, py = np.asarray(c, dtype=np.float64).ravel(), np.asarray(py, dtype=np.float64).ravel()
    assert c.shape == py.shape, f"{what}: C gives {c.size} numbers, Python {py.size}"
    assert np.all(np.isfinite(c)) and np.all(np.isfinite(py)), f"{what}: not finite"
    scale = max(float(np.max(np.abs(py))), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(c - py))) / scale
    assert err <= rtol, f"{what}: C and Python differ by {err:.3g} (relative to max |value| {scale:.3g}) > {rtol}"


@pytest.mark.parametrize("name,dtype", CASES)
def test_c_driver_under_sanitizers_matches_python_module(built, model_dir, tmp_path, name, dtype):
    M, meta = _sources(built, name, dtype, tmp_path)
    (tmp_path / "driver.c").write_text(_driver(meta))
    p = _run([GCC, *STRICT, *SANITIZE, "-O1", "driver.c", f"{M}.c", "-o", "driver", "-lm"], cwd=tmp_path)
    assert p.returncode == 0, f"building the driver:\n{p.stderr}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    p = _run([str(tmp_path / "driver")], cwd=tmp_path, env=env)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr[-4000:]
    assert p.returncode == 0, f"driver exited {p.returncode}:\n{p.stderr[-4000:]}"
    r = _parse(p.stdout)

    # return codes, as documented in NAME.h (OK 0, EBATCH 1, ENULL 2, EINDEX 3, EWORKSPACE 8)
    assert r["rc_loss_grad"] == ["0"] and r["rc_loss"] == ["0"] and r["rc_forward"] == ["0"]
    assert r["rc_n0"] == ["1", "1", "1"], f"n = 0: {r['rc_n0']}"
    assert r["rc_n-1"] == ["1", "1", "1"], f"n = -1: {r['rc_n-1']}"
    assert r["rc_short"] == [str(EWORKSPACE)] * 3, f"a workspace one byte short: {r['rc_short']}"
    for fn in ("loss_grad", "loss", "forward"):
        codes = r[f"rc_null_{fn}"]
        assert all(c == "2" for c in codes), f"{M}_{fn} with one NULL pointer argument in turn: {codes}"
    for tag, codes in r.items():
        if tag.startswith("rc_index."):
            assert all(c == "3" for c in codes), f"{tag}: {codes} (expected EINDEX = 3)"
    assert any(p[6] for p in _arg_plan(meta)) == any(t.startswith("rc_index.") for t in r)
    assert r["again"] == ["0", "1"], "a valid call after the failed ones does not reproduce the first"

    # the same numbers as the Python module on the same data
    mod = gradc.load(model_path(model_dir, name), dtype=dtype)
    flat, data = _python_data(meta, np.dtype(dtype))
    params, off = {}, 0
    for pname, shape in mod.param_shapes.items():
        size = _size(shape)
        params[pname] = flat[off:off + size].reshape(shape)
        off += size
    assert off == meta["n_params"]
    rtol = RTOL[dtype]
    L, g = mod.loss_and_grad(params, **data)
    _assert_close([float(v) for v in r["loss_grad.loss"]], [L], rtol, "loss_grad loss")
    _assert_close([float(v) for v in r["grad"]], np.concatenate([g[k].ravel() for k in params]), rtol, "gradient")
    _assert_close([float(v) for v in r["loss"]], [mod.loss(params, **data)], rtol, "loss")
    outs = mod.forward(params, **{k: v for k, v in data.items() if k in mod.input_shapes})
    for o in meta["outputs"]:
        _assert_close([float(v) for v in r[f"out.{o['name']}"]], outs[o["name"]], rtol, f"output {o['name']}")
    # per parameter too, so that a wrong offset in one small tensor is not hidden by a large one
    off = 0
    cg = np.array([float(v) for v in r["grad"]])
    for pname, shape in mod.param_shapes.items():
        size = _size(shape)
        if np.any(g[pname] != 0):
            _assert_close(cg[off:off + size], g[pname], rtol, f"gradient of {pname}")
        off += size


# ---- 4. byte-identical across processes ---------------------------------------------
RENDER_SCRIPT = r"""
import hashlib, os, sys
from gradc.api import load_model_file
from gradc.autodiff import differentiate
from gradc.codegen.c import render
from gradc.ir import lower
out = sys.argv[1]
for path in sys.argv[2:]:
    prog = lower(load_model_file(path).spec())
    grad = differentiate(prog)
    with open(os.path.join(out, prog.name + ".canonical"), "w") as f:
        f.write(prog.canonical())
    for dtype in ("float64", "float32"):
        src = render(prog, grad, dtype)
        for ext, text in ((".c", src.c), (".h", src.h), (".cdef", src.cdef)):
            with open(os.path.join(out, f"{src.name}-{dtype}{ext}"), "w") as f:
                f.write(text)
"""


def test_generated_source_is_byte_identical_across_processes_and_hash_seeds(model_dir, tmp_path):
    paths = [model_path(model_dir, n) for n in MODELS]
    outs, procs = [], []
    for seed in ("0", "12345"):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        outs.append(d)
        env = dict(os.environ, PYTHONHASHSEED=seed, GRADC_CACHE_DIR=str(tmp_path / f"cache{seed}"))
        procs.append(subprocess.Popen([sys.executable, "-c", RENDER_SCRIPT, str(d), *paths], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, se
    a, b = (sorted(os.listdir(d)) for d in outs)
    assert a == b and len(a) == len(MODELS) * 7
    for fn in a:
        x, y = ((d / fn).read_bytes() for d in outs)
        if x != y:
            diff = "\n".join(list(difflib.unified_diff(x.decode().splitlines(), y.decode().splitlines(),
                                                       "PYTHONHASHSEED=0", "PYTHONHASHSEED=12345", lineterm=""))[:40])
            pytest.fail(f"{fn} differs between processes:\n{diff}")


# ---- 5. every example's export under -Wconversion, with gcc and clang ---------------------------
CLANG = shutil.which("clang")
CONVERSION = STRICT + FLOAT_WARN + ["-Wconversion"]


def _example_models():
    import glob
    out = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*", "model.py"))):
        with open(path) as f:
            names = re.findall(r"^(\w+) = gc\.Model\(", f.read(), re.M)
        out += [(path, None)] if len(names) <= 1 else [(path, n) for n in names]
    return out


def test_every_example_export_compiles_under_conversion_warnings(tmp_path):
    """Training and inference-only exports of every model under examples/, float32 and float64,
    compile with gcc and clang under -std=c99 -Wall -Wextra -Werror -pedantic -Wshadow
    -Wdouble-promotion -Wfloat-conversion -Wconversion (firmware projects build with these)."""
    import concurrent.futures
    from gradc.api import export, load_model_file
    jobs = []
    for path, model in _example_models():
        m = load_model_file(path, model)
        for dtype in DTYPES:
            for inf in (False, True):
                d = tmp_path / f"{m.name}-{dtype}-{'inf' if inf else 'train'}"
                export(m, str(d), dtype=dtype, inference_only=inf)
                src = next(p for p in d.iterdir() if p.suffix == ".c")
                for cc in (GCC, CLANG):
                    if cc is not None:
                        jobs.append([cc, *CONVERSION, "-O1", "-c", str(src), "-o", str(src.with_suffix(f".{os.path.basename(cc)}.o"))])
    assert len(jobs) >= 4 * len(_example_models())
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        results = list(ex.map(lambda cmd: _run(cmd), jobs))
    bad = [f"{' '.join(cmd)}\n{p.stderr[-2000:]}" for cmd, p in zip(jobs, results) if p.returncode != 0 or p.stderr]
    assert not bad, "\n\n".join(bad[:3])
