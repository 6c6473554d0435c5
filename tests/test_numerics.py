"""Numerics at the edges: losses and gradients stay finite and exact for logits of +-1000 and
inputs up to 1e30, wherever the true value fits the dtype; each named stability rewrite turns a
form that overflows into one that gives the right number.

References are computed with mpmath at 60 digits from the very inputs the module sees (rounded
to float32 for float32 builds). One compiled model per dtype holds every function under test,
each on its own input and parameters and exposed as its own output, so a test reads exactly one
function's value (``forward``) and gradient (its own parameters) while the others sit at benign
inputs.
"""
import math
import os
import subprocess
import sys

import mpmath
import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.rewrite import STABILITY_RULES, is_log_sum_exp, stabilize

DTYPES = ["float64", "float32"]
RTOL = {"float64": 1e-12, "float32": 2e-6}


# ---- mpmath references ------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def mp_precision():
    """60 digits for the references, for this file only."""
    old = mpmath.mp.dps
    mpmath.mp.dps = 60
    yield
    mpmath.mp.dps = old


def m_sigmoid(z):
    return 1 / (1 + mpmath.exp(-z))


def m_softplus(z):
    return mpmath.log1p(mpmath.exp(z))


def m_lse(zs):
    return mpmath.log(mpmath.fsum(mpmath.exp(z) for z in zs))


# A function under test: "vector" ones take logits z (3,), "scalar" ones a scalar z; each also
# takes a label ``t`` of the given kind. ``term`` builds the SymPy loss term, ``ref`` the
# mpmath value; the model computes z = a * x + c with parameters a (init 1) and c (init 0).
FUNCS = {
    "softmax_cross_entropy_int_label": dict(
        rank=1, label="int", term=lambda z, t: gc.softmax_cross_entropy(z, t),
        ref=lambda z, t: m_lse(z) - z[int(t)]),
    "softmax_cross_entropy_probabilities": dict(
        rank=1, label="prob", term=lambda z, t: gc.softmax_cross_entropy(z, t),
        ref=lambda z, t: mpmath.fsum(p * (m_lse(z) - zj) for p, zj in zip(t, z))),
    "logsumexp": dict(rank=1, label=None, term=lambda z, t: gc.logsumexp(z), ref=lambda z, t: m_lse(z)),
    "log_softmax": dict(
        rank=1, label=None, term=lambda z, t: -gc.log_softmax(z).sum(),
        ref=lambda z, t: -mpmath.fsum(zj - m_lse(z) for zj in z)),
    "bce_with_logits": dict(
        rank=0, label="prob", term=lambda z, t: gc.bce_with_logits(z, t),
        ref=lambda z, t: t * m_softplus(-z) + (1 - t) * m_softplus(z)),
    "binary_cross_entropy_of_sigmoid": dict(
        rank=0, label="prob", term=lambda z, t: gc.binary_cross_entropy(gc.sigmoid(z), t),
        ref=lambda z, t: t * m_softplus(-z) + (1 - t) * m_softplus(z)),
    "softplus": dict(rank=0, label=None, term=lambda z, t: gc.softplus(z), ref=lambda z, t: m_softplus(z)),
    "sigmoid": dict(rank=0, label=None, term=lambda z, t: gc.sigmoid(z), ref=lambda z, t: m_sigmoid(z)),
    "hinge": dict(rank=0, label="sign", term=lambda z, t: gc.hinge(z, t), ref=lambda z, t: max(0, 1 - t * z)),
    "relu": dict(rank=0, label=None, term=lambda z, t: gc.relu(z), ref=lambda z, t: max(0, z)),
    "abs": dict(rank=0, label="real", term=lambda z, t: gc.abs(z - t), ref=lambda z, t: abs(z - t)),
    "mse": dict(rank=0, label="real", term=lambda z, t: gc.mse(z, t), ref=lambda z, t: (z - t) ** 2),
}

LOGIT_FUNCS = ["softmax_cross_entropy_int_label", "softmax_cross_entropy_probabilities", "logsumexp",
               "log_softmax", "bce_with_logits", "binary_cross_entropy_of_sigmoid", "softplus", "sigmoid"]
# where the math allows: the true loss and gradient of these grow with the input, so the largest
# magnitude is the one whose loss and gradient still fit the dtype (mse of 1e30 is 1e60: beyond float32)
GROWING = {"hinge": {"float64": 1e30, "float32": 1e30}, "relu": {"float64": 1e30, "float32": 1e30},
           "abs": {"float64": 1e30, "float32": 1e30}, "mse": {"float64": 1e30, "float32": 1e18}}
CASES = [(f, dt, M) for dt in DTYPES for f in LOGIT_FUNCS for M in (1e3, 1e30)] + \
        [(f, dt, GROWING[f][dt]) for dt in DTYPES for f in GROWING]


def _key(name):
    return name.replace("softmax_cross_entropy", "sce").replace("binary_cross_entropy", "bce")


def build_functions_model(dtype):
    m = gc.Model(f"numerics_functions_{dtype}")
    terms = []
    for name, f in FUNCS.items():
        k = _key(name)
        shape = (3,) if f["rank"] == 1 else ()
        x = m.input(f"x_{k}", shape)
        a, c = m.param(f"a_{k}", init=1.0), m.param(f"c_{k}", shape, init=0.0)
        z = a * x + c
        if f["rank"] == 1:
            z = m.define(f"z_{k}", 3, z)
        t = None
        if f["label"] == "int":
            t = m.input(f"t_{k}", dtype="int32")
        elif f["label"] == "prob" and f["rank"] == 1:
            t = m.input(f"t_{k}", 3)
        elif f["label"] is not None:
            t = m.input(f"t_{k}")
        terms.append(m.output(f"f_{k}", f["term"](z, t)))
    m.loss(sum(terms))
    return gc.compile_model(m, dtype=dtype)


# The float32 models compile in a second process while this one compiles the float64 ones (both
# into the session's cache); this process then takes them from the cache. If that process fails,
# this one compiles them itself.
PREBUILD = ("import sys; sys.path.insert(0, sys.argv[1]); import test_numerics as T; "
            "T.build_functions_model('float32'); T.build_rules_model('float32')")


@pytest.fixture(scope="module")
def prebuild():
    p = subprocess.Popen([sys.executable, "-c", PREBUILD, os.path.dirname(os.path.abspath(__file__))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def _built(cache, dtype, build, prebuild):
    if dtype not in cache:
        if dtype == "float32":
            try:
                prebuild.wait(timeout=600)
            except subprocess.TimeoutExpired:
                pass
        cache[dtype] = build(dtype)
    return cache[dtype]


@pytest.fixture(scope="module")
def functions(prebuild):
    cache = {}
    return lambda dtype: _built(cache, dtype, build_functions_model, prebuild)


def _samples(f, M):
    """Three samples: logits at +-M (and a benign one); labels chosen off every kink."""
    if f["rank"] == 1:
        x = np.array([[M, -M, 0.5], [-M, M, 0.5], [0.5, M, -M]])
        t = {"int": np.array([1, 0, 2], dtype=np.int32), "prob": np.array([[0.2, 0.3, 0.5]] * 3),
             None: None}[f["label"]]
    else:
        x = np.array([M, -M, 0.5])
        t = {"prob": np.array([0.0, 1.0, 0.3]), "sign": np.array([1.0, -1.0, 1.0]),
             "real": np.array([1.0, -1.0, 1.0]), None: None}[f["label"]]
    return x, t


def _data(mod, name, M):
    """Data for every function of the model: ``name`` at magnitude M, the others at benign values."""
    data = {}
    for other, f in FUNCS.items():
        x, t = _samples(f, M if other == name else 0.25)
        k = _key(other)
        data[f"x_{k}"] = x
        if t is not None:
            data[f"t_{k}"] = t
    return data


def _reference(f, x, t, dtype):
    """(mean loss, d/da, d/dc) in mpmath, at a = 1 and c = 0, from the inputs as the dtype holds them."""
    x = np.asarray(x, dtype=dtype).astype(np.float64)
    if t is not None and np.asarray(t).dtype.kind == "f":
        t = np.asarray(t, dtype=dtype).astype(np.float64)
    n = len(x)
    vals, da, dc = [], 0, None
    for s in range(n):
        xs = [mpmath.mpf(v) for v in np.atleast_1d(x[s])]
        ts = None if t is None else (t[s] if np.ndim(t[s]) == 0 else [mpmath.mpf(v) for v in t[s]])
        if ts is not None and np.ndim(ts) == 0 and f["label"] != "int":
            ts = mpmath.mpf(float(ts))

        def loss(a, *c):
            z = [a * xi + ci for xi, ci in zip(xs, c)]
            return f["ref"](z if f["rank"] == 1 else z[0], ts)
        c0 = [mpmath.mpf(0)] * len(xs)
        vals.append(loss(mpmath.mpf(1), *c0))
        da += mpmath.diff(lambda a: loss(a, *c0), mpmath.mpf(1))
        g = [mpmath.diff(lambda cj, j=j: loss(mpmath.mpf(1), *[cj if i == j else c0[i] for i in range(len(c0))]),
                         mpmath.mpf(0)) for j in range(len(xs))]
        dc = g if dc is None else [u + v for u, v in zip(dc, g)]
    return [float(v) for v in vals], float(da / n), np.array([float(v / n) for v in dc]).reshape(np.shape(x[0]))


def _close(got, want, rtol, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert np.all(np.isfinite(got)), f"{what} is not finite: {got}"
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("name,dtype,M", CASES, ids=[f"{f}-{dt}-{M:g}" for f, dt, M in CASES])
def test_loss_and_gradient_stay_finite_and_match_mpmath_at_extreme_inputs(functions, name, dtype, M):
    mod = functions(dtype)
    f, k = FUNCS[name], _key(name)
    data = _data(mod, name, M)
    p = mod.init_params()
    want_vals, want_da, want_dc = _reference(f, data[f"x_{k}"], data.get(f"t_{k}"), dtype)
    out = mod.forward(p, **data)[f"f_{k}"]
    _close(out, want_vals, RTOL[dtype], f"{name} per-sample value")
    L, g = mod.loss_and_grad(p, **data)
    assert math.isfinite(L), f"the loss is {L}"
    _close(g[f"a_{k}"], want_da, RTOL[dtype], f"d{name}/da")
    _close(g[f"c_{k}"], want_dc, RTOL[dtype], f"d{name}/dc")
    assert mod.loss(p, **data) == pytest.approx(L, rel=RTOL[dtype] * 10)


def test_every_function_is_tested_at_logits_of_1000_and_1e30_in_both_dtypes():
    tested = {(f, dt) for f, dt, _ in CASES}
    assert tested == {(f, dt) for f in FUNCS for dt in DTYPES}
    for f in LOGIT_FUNCS:
        for dt in DTYPES:
            assert {M for g, d, M in CASES if (g, d) == (f, dt)} == {1e3, 1e30}


def test_mse_beyond_the_float32_range_overflows_to_inf_not_to_a_wrong_finite_number(functions):
    # where the math does not allow: (1e30)^2 = 1e60 exceeds float32; the loss says so with inf
    mod = functions("float32")
    data = _data(mod, "mse", 1e30)
    out = mod.forward(mod.init_params(), **data)["f_mse"]
    assert np.isposinf(out[0]) and np.isposinf(out[1]) and np.isfinite(out[2])
    assert np.isposinf(mod.loss(mod.init_params(), **data))


# ---- one test for each named stability rule -----------------------------------------------

def _np_sigmoid_naive(u):
    return 1 / (1 + np.exp(-u))


# rule name -> the naive SymPy form of u (a scalar), the mpmath reference, and the naive form in
# numpy as (value, derivative in u): at least one of them overflows at u = +-1000
RULES = {
    "sigmoid_ratio": dict(
        naive=lambda u: sp.exp(u) / (1 + sp.exp(u)), ref=m_sigmoid,
        np=lambda u: (np.exp(u) / (1 + np.exp(u)), np.exp(u) / (1 + np.exp(u)) ** 2)),
    "sigmoid": dict(
        naive=lambda u: 1 / (1 + sp.exp(-u)), ref=m_sigmoid,
        np=lambda u: (1 / (1 + np.exp(-u)), np.exp(-u) / (1 + np.exp(-u)) ** 2)),
    "softplus": dict(
        naive=lambda u: sp.log(1 + sp.exp(u)), ref=m_softplus,
        np=lambda u: (np.log(1 + np.exp(u)), np.exp(u) / (1 + np.exp(u)))),
    "log_sigmoid": dict(
        naive=lambda u: sp.log(gc.sigmoid(u)), ref=lambda u: -m_softplus(-u),
        np=lambda u: (np.log(_np_sigmoid_naive(u)), 1 - _np_sigmoid_naive(u))),
    "log_one_minus_sigmoid": dict(
        naive=lambda u: sp.log(1 - gc.sigmoid(u)), ref=lambda u: -m_softplus(u),
        np=lambda u: (np.log(1 - _np_sigmoid_naive(u)), -_np_sigmoid_naive(u))),
}
LSE = "log_sum_exp"       # the rewrite in gradc/ir.py: log(Sum(exp(u))) gets a max shift
RULE_NAMES = list(RULES) + [LSE]
U = np.array([1000.0, -1000.0, 0.75])          # u = a * x + c at a = 1, c = 0


def build_rules_model(dtype):
    m = gc.Model(f"numerics_rules_{dtype}")
    terms = []
    for name, r in RULES.items():
        x = m.input(f"x_{name}")
        a, c = m.param(f"a_{name}", init=1.0), m.param(f"c_{name}", init=0.0)
        terms.append(m.output(f"f_{name}", r["naive"](a * x + c)))
    x = m.input(f"x_{LSE}", 3)
    a, c = m.param(f"a_{LSE}", init=1.0), m.param(f"c_{LSE}", 3, init=0.0)
    k = gc.index("k")
    terms.append(m.output(f"f_{LSE}", sp.log(sp.Sum(sp.exp(a * x[k] + c[k]), (k, 0, 2)))))
    m.loss(sum(terms))
    return gc.compile_model(m, dtype=dtype)


@pytest.fixture(scope="module")
def rules(prebuild):
    cache = {}
    return lambda dtype: _built(cache, dtype, build_rules_model, prebuild)


def _rule_data(name):
    data = {f"x_{r}": np.full(3, 0.25) for r in RULES}
    data[f"x_{LSE}"] = np.full((3, 3), 0.25)
    if name == LSE:
        data[f"x_{LSE}"] = np.array([[1000.0, -1000.0, 0.5], [-1000.0, 999.0, 1000.0], [0.1, 0.2, 0.3]])
    else:
        data[f"x_{name}"] = U
    return data


def test_every_named_stability_rule_has_a_test():
    assert set(RULES) == {r.name for r in STABILITY_RULES}


@pytest.mark.parametrize("name", list(RULES))
def test_stability_rule_rewrites_its_naive_form(name):
    rule = next(r for r in STABILITY_RULES if r.name == name)
    u = sp.Symbol("a", real=True) * sp.Symbol("x", real=True) + sp.Symbol("c", real=True)
    naive = RULES[name]["naive"](u)
    hits = [e for e in sp.preorder_traversal(naive) if rule.match(e)]
    assert hits, f"rule {name} does not match {naive}"
    stable = stabilize(naive)
    assert stable != naive and not any(isinstance(e, sp.exp) for e in sp.preorder_traversal(stable)), stable


def test_log_sum_exp_rewrite_recognizes_its_naive_form():
    k = sp.Symbol("k", integer=True)
    x = sp.IndexedBase("x")
    assert is_log_sum_exp(sp.log(sp.Sum(sp.exp(x[k]), (k, 0, 2))))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", RULE_NAMES)
def test_stability_rule_gives_finite_correct_value_and_gradient_where_the_naive_form_overflows(rules, name, dtype):
    mod = rules(dtype)
    data = _rule_data(name)
    p = mod.init_params()
    x = np.asarray(data[f"x_{name}"], dtype=dtype).astype(np.float64)
    if name == LSE:
        with np.errstate(all="ignore"):
            naive = np.log(np.sum(np.exp(x.astype(dtype)), axis=1))
        ref = lambda a, c: m_lse([a * mpmath.mpf(v) + cj for v, cj in zip(row, c)])  # noqa: E731
        want_vals, want_da, want_dc = [], 0, np.zeros(3)
        for row in x:
            want_vals.append(float(ref(1, [0, 0, 0])))
            want_da += float(mpmath.diff(lambda a: ref(a, [0, 0, 0]), 1)) / len(x)
            for j in range(3):
                want_dc[j] += float(mpmath.diff(
                    lambda cj: ref(1, [cj if i == j else 0 for i in range(3)]), 0)) / len(x)
        assert not np.all(np.isfinite(naive)), "the naive form does not even overflow here"
    else:
        r = RULES[name]
        with np.errstate(all="ignore"):
            nv, nd = r["np"](x.astype(dtype))
        assert not (np.all(np.isfinite(nv)) and np.all(np.isfinite(nd))), "the naive form does not overflow here"
        want_vals = [float(r["ref"](mpmath.mpf(v))) for v in x]
        want_da = float(mpmath.fsum(mpmath.diff(lambda a: r["ref"](a * mpmath.mpf(v)), 1) for v in x) / len(x))
        want_dc = float(mpmath.fsum(mpmath.diff(lambda c: r["ref"](mpmath.mpf(v) + c), 0) for v in x) / len(x))
    out = mod.forward(p, **data)[f"f_{name}"]
    _close(out, want_vals, RTOL[dtype], f"{name} value")
    L, g = mod.loss_and_grad(p, **data)
    assert math.isfinite(L)
    _close(g[f"a_{name}"], want_da, RTOL[dtype], f"d{name}/da")
    _close(g[f"c_{name}"], want_dc, RTOL[dtype], f"d{name}/dc")


# ---- a probability computed in an output, then fed to binary_cross_entropy -----------------

def test_binary_cross_entropy_of_a_sigmoid_output_stays_finite_for_logits_of_1000():
    m = gc.Model("numerics_bce_of_output")
    x, y = m.input("x"), m.target("y")
    a = m.param("a", init=1.0)
    prob = m.output("prob", gc.sigmoid(a * x))
    m.loss(gc.binary_cross_entropy(prob, y))
    mod = gc.compile_model(m)
    X, Y = np.array([1000.0, -1000.0, 40.0]), np.array([0.0, 1.0, 0.0])
    L, g = mod.loss_and_grad(mod.init_params(), x=X, y=Y)
    want = float(mpmath.fsum(t * m_softplus(-mpmath.mpf(v)) + (1 - t) * m_softplus(mpmath.mpf(v))
                             for v, t in zip(X, Y)) / 3)
    assert math.isfinite(L) and np.isfinite(g["a"])
    assert L == pytest.approx(want, rel=1e-12)
