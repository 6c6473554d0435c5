"""Regression tests for what the fuzzer (test_fuzz.py) found, each model minimized by hand.

A test marked ``xfail(strict=True, reason="BUG: ...")`` is a compiler bug still
present: when it is fixed the test XPASSes, which fails the run, so remove the
mark then, and drop the construct's name from ``fuzz.KNOWN_BUGS`` so that the
fuzzer generates it again.

The expected values are worked out by hand in each docstring; nothing here
uses gradc except to compile the model under test.

Run: ``python -m pytest -q tests/test_fuzz_regressions.py``
"""
import numpy as np
import pytest
import sympy as sp

import gradc as gc

import fuzz


def test_every_known_bug_has_a_regression_test():
    names = {"shadowed_sum_index": test_regression_nested_sum_reusing_the_outer_index_name,
             "piecewise_condition_ite": test_regression_piecewise_condition_on_a_piecewise_value,
             "floor_of_expression": test_regression_floor_of_an_expression_of_a_parameter,
             "abs_of_integer": test_regression_abs_of_an_int32_input,
             "gather_through_index_arithmetic": test_regression_gather_by_an_int32_input_through_index_arithmetic,
             "abs_of_reversed_read": test_regression_abs_of_a_product_holding_a_reversed_read,
             "sign_of_unreal": test_regression_sign_of_a_value_sympy_cannot_prove_real,
             "min_tie_across_nests": test_regression_min_tie_between_a_row_and_a_stage_gathered_from_it}
    assert set(fuzz.KNOWN_BUGS) <= set(names), set(fuzz.KNOWN_BUGS) - set(names)


def test_regression_nested_sum_reusing_the_outer_index_name():
    """loss = x * Sum_k v[k] * (Sum_k w[k]) = x * (sum v) * (sum w).

    With v = (1, -1, 2), w = (1, 2, 3) and x = 1, 2: loss = 1.5 * 2 * 6 = 18,
    dL/dw = 1.5 * sum v = 3 each, dL/dv = 1.5 * sum w = 9 each.
    (gradc gives 22.5 = 1.5 * sum_k v[k] * 3 w[k], and dv = (4.5, 9, 13.5).)
    """
    m = gc.Model("nested_sum_same_index")
    k = gc.index("k")
    x = m.input("x")
    w, v = m.param("w", 3), m.param("v", 3)
    m.loss(x * sp.Sum(v[k] * sp.Sum(w[k], (k, 0, 2)), (k, 0, 2)))
    mod = gc.compile_model(m)
    params = {"w": np.array([1.0, 2.0, 3.0]), "v": np.array([1.0, -1.0, 2.0])}
    L, g = mod.loss_and_grad(params, x=np.array([1.0, 2.0]))
    assert L == pytest.approx(18.0, rel=1e-12)
    np.testing.assert_allclose(g["w"], [3.0, 3.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(g["v"], [9.0, 9.0, 9.0], rtol=1e-12)


def test_nested_sums_over_distinct_index_names_are_right():
    """The same model with the inner index renamed compiles correctly (the bug above is about the name only)."""
    m = gc.Model("nested_sum_distinct_index")
    k, j = gc.index("k"), gc.index("j")
    x = m.input("x")
    w, v = m.param("w", 3), m.param("v", 3)
    m.loss(x * sp.Sum(v[k] * sp.Sum(w[j], (j, 0, 2)), (k, 0, 2)))
    mod = gc.compile_model(m)
    params = {"w": np.array([1.0, 2.0, 3.0]), "v": np.array([1.0, -1.0, 2.0])}
    L, g = mod.loss_and_grad(params, x=np.array([1.0, 2.0]))
    assert L == pytest.approx(18.0, rel=1e-12)
    np.testing.assert_allclose(g["w"], [3.0, 3.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(g["v"], [9.0, 9.0, 9.0], rtol=1e-12)


def test_regression_piecewise_condition_on_a_piecewise_value():
    """r = x if a > 0 else -x; loss = a**2 if r > 0 else 3a.

    With a = 0.5 (so r = x) and x = 1, -2: the losses are a**2 = 0.25 and 3a = 1.5,
    mean 0.875; the gradient is (2a + 3) / 2 = 2.
    """
    m = gc.Model("piecewise_condition_on_piecewise")
    x = m.input("x")
    a = m.param("a")
    r = sp.Piecewise((x, a > 0), (-x, True))
    m.loss(sp.Piecewise((a ** 2, r > 0), (3 * a, True)))     # SymPy: ITE(a > 0, x > 0, x < 0)
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"a": np.array(0.5)}, x=np.array([1.0, -2.0]))
    assert L == pytest.approx(0.875, rel=1e-12)
    assert float(g["a"]) == pytest.approx(2.0, rel=1e-12)


def test_piecewise_condition_on_a_stage_holding_a_piecewise_is_right():
    """The workaround: make the Piecewise value a stage (m.define), so the condition reads a plain value."""
    m = gc.Model("piecewise_condition_on_stage")
    x = m.input("x")
    a = m.param("a")
    r = m.define("r", sp.Piecewise((x, a > 0), (-x, True)))
    m.loss(sp.Piecewise((a ** 2, r > 0), (3 * a, True)))
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"a": np.array(0.5)}, x=np.array([1.0, -2.0]))
    assert L == pytest.approx(0.875, rel=1e-12)
    assert float(g["a"]) == pytest.approx(2.0, rel=1e-12)


def test_regression_floor_of_an_expression_of_a_parameter():
    """loss = floor(a**2 + x) + ceiling(a - x) + a * x; floor and ceiling are flat almost everywhere.

    With a = 0.5 and x = 0.2, 0.9: floor(0.45) = 0, floor(1.15) = 1, ceiling(0.3) = 1, ceiling(-0.4) = 0,
    so loss = (0 + 1 + 1 + 0) / 2 + 0.5 * 0.55 = 1.275 and dL/da = mean x = 0.55.
    """
    m = gc.Model("floor_of_expression")
    x = m.input("x")
    a = m.param("a")
    m.loss(sp.floor(a ** 2 + x) + sp.ceiling(a - x) + a * x)
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"a": np.array(0.5)}, x=np.array([0.2, 0.9]))
    assert L == pytest.approx(1.275, rel=1e-12)
    assert float(g["a"]) == pytest.approx(0.55, rel=1e-12)


def test_floor_of_a_stage_is_right():
    """The workaround: floor of a plain read (a stage) compiles, and its derivative is 0."""
    m = gc.Model("floor_of_stage")
    x = m.input("x")
    a = m.param("a")
    r = m.define("r", a ** 2 + x)
    c = m.define("c", a - x)
    m.loss(sp.floor(r) + sp.ceiling(c) + a * x)
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"a": np.array(0.5)}, x=np.array([0.2, 0.9]))
    assert L == pytest.approx(1.275, rel=1e-12)
    assert float(g["a"]) == pytest.approx(0.55, rel=1e-12)


def test_regression_abs_of_an_int32_input():
    """o = |u - 2| for u = 0, 1, 2, 3, 5 is 2, 1, 0, 1, 3; loss = a * o has mean 1.4 a, dL/da = 1.4."""
    m = gc.Model("abs_of_int32")
    u = m.input("u", dtype="int32")
    a = m.param("a")
    o = m.output("o", sp.Abs(u - 2))
    m.loss(a * o)
    mod = gc.compile_model(m)
    ids = np.array([0, 1, 2, 3, 5], dtype=np.int32)
    np.testing.assert_array_equal(mod.forward({"a": np.array(0.5)}, u=ids)["o"], [2.0, 1.0, 0.0, 1.0, 3.0])
    L, g = mod.loss_and_grad({"a": np.array(0.5)}, u=ids)
    assert L == pytest.approx(0.7, rel=1e-12)
    assert float(g["a"]) == pytest.approx(1.4, rel=1e-12)


# The standalone C loop GCC 12.2 gets wrong at -O3 -march=native (AVX2) on x86-64: save it as probe.c,
# ``gcc -O3 -march=native probe.c && ./a.out`` prints the number of wrong elements (18 there, 0 at -O2).
_PROBE = r"""
#include <stdio.h>
__attribute__((noinline)) static void pick(double *restrict s, const double *restrict a,
                                           const double *restrict b, const double *restrict c)
{
    for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j)
            s[i * 6 + j] = (a[i * 6 + j] < 0) ? b[i * 6 + j] : c[i * 6 + j];
}
int main(void)
{
    double a[36], b[36], c[36], s[36];
    int bad = 0;
    for (int k = 0; k < 36; ++k) { a[k] = k % 3 ? 1.0 : -1.0; b[k] = -1.0 - k; c[k] = 1.0 + k; }
    pick(s, a, b, c);
    for (int k = 0; k < 36; ++k) bad += s[k] != (a[k] < 0 ? b[k] : c[k]);
    printf("%d\n", bad);
    return 0;
}
"""


def test_regression_piecewise_select_over_a_6x6_stage():
    """t = a if c < 0 else b elementwise, with c = x - w, a = 2x + w, b = 3x - w (three 6x6 stages).

    Found at commit 2f9b067, whose per-sample loops GCC 12.2 (Debian 12.2.0-14) miscompiled at gradc's
    -O3 -march=native (AVX2): about a quarter of the elements came out as 0, in forward, loss and
    gradient. The same compiler still gets the standalone loop in _PROBE wrong; the sample-blocked
    kernels of later commits are compiled right, and this test keeps them so.
    """
    m = gc.Model("select_6x6")
    x = m.input("x", (6, 6))
    w = m.param("w")
    c = m.define("c", (6, 6), lambda i, j: x[i, j] - w)
    a = m.define("a", (6, 6), lambda i, j: 2 * x[i, j] + w)
    b = m.define("b", (6, 6), lambda i, j: 3 * x[i, j] - w)
    t = m.output("t", m.define("pick", (6, 6), lambda i, j: sp.Piecewise((a[i, j], c[i, j] < 0), (b[i, j], True))))
    m.loss((t * t).sum() / 36)
    mod = gc.compile_model(m)
    X = np.random.default_rng(0).uniform(-1, 1, size=(3, 6, 6))
    want = np.where(X - 0.5 < 0, 2 * X + 0.5, 3 * X - 0.5)
    np.testing.assert_allclose(mod.forward({"w": np.array(0.5)}, x=X)["t"], want, rtol=1e-12, atol=1e-12)
    L, g = mod.loss_and_grad({"w": np.array(0.5)}, x=X)
    assert L == pytest.approx(np.mean(np.sum(want ** 2, axis=(1, 2)) / 36), rel=1e-12)
    dw = np.mean(np.sum(2 * want * np.where(X - 0.5 < 0, 1.0, -1.0), axis=(1, 2)) / 36)
    assert float(g["w"]) == pytest.approx(dw, rel=1e-10)


def test_regression_gradient_into_a_constant_index_from_an_indexed_stage():
    """s[a] = x[a] * p[1] over a = 0..2; loss = sum_a s[a].

    Found by the 1,000-model run at de31cfa (models 20, 228, 259, 285, 319, 388, 561): the gradient
    dp[1] += sum_a ds[a] * x[a], whose target names no loop variable, was taken for a register tile,
    which then had no output loop to unroll (``min() arg is an empty sequence`` in ``_gather_nest``).
    With x = (1, 2, 3), (4, 5, 6) and p = (0.5, 2): L = mean(6, 15) * 2 = 21, dL/dp = (0, 10.5).
    """
    m = gc.Model("constant_index_target")
    x = m.input("x", (3,))
    p = m.param("p", (2,))
    s = m.define("s", (3,), lambda a: x[a] * p[1])
    m.loss(s.sum())
    for dtype in ("float64", "float32"):
        mod = gc.compile_model(m, dtype=dtype)
        L, g = mod.loss_and_grad({"p": np.array([0.5, 2.0])}, x=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        assert L == pytest.approx(21.0, rel=1e-6)
        np.testing.assert_allclose(g["p"], [0.0, 10.5], rtol=1e-6)


def test_regression_kernel_gradient_of_a_one_output_convolution():
    """s[a] = Sum_j p[j] * x[a + j] with a single output (a = 0 only); loss = s[0].

    Found by the 1,000-model run at de31cfa (models 88, 211, 222, 307, 351, 523): the kernel
    gradient dp[j] += ds[0] * x[j] was a register tile whose summed loop has extent 1, so no
    reduction loop was left and the tile was dropped, but its lanes still had to be totalled
    (``AssertionError: a sum over the lanes needs a tile`` in ``_reduce``).
    With p = (1, 0, -1, 0.5), x = (1, 2, 3, 4), (3, 2, 1, 0): s = 0, 2, so L = 1 and dL/dp = mean x = 2 each.
    """
    m = gc.Model("one_output_conv")
    j = gc.index("j")
    p = m.param("p", (4,))
    x = m.input("x", (4,))
    s = m.define("s", (1,), lambda a: sp.Sum(p[j] * x[a + j], (j, 0, 3)))
    m.loss(s.sum())
    for dtype in ("float64", "float32"):
        mod = gc.compile_model(m, dtype=dtype)
        L, g = mod.loss_and_grad({"p": np.array([1.0, 0.0, -1.0, 0.5])},
                                 x=np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]]))
        assert L == pytest.approx(1.0, rel=1e-6)
        np.testing.assert_allclose(g["p"], [2.0, 2.0, 2.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("view", ["flatten", "reverse"])
def test_regression_gather_by_an_int32_input_through_index_arithmetic(view):
    """loss = V[u] for a view V of P (2, 3): P.flatten() (read P[u // 3, u % 3]) or P.flatten() as a
    stage reversed, S[::-1] (read S[5 - u]).

    Found by the fuzzer's layer models: at 5454bdc a gather ``L.group_norm(p, 3)[u]`` reads the
    group's mean at ``u // 2``; at 9ff64a2 (the 1,000-model run, model 204) ``p0[:0:-1, -3][u1]``
    reads ``p0[5 - u1, 3]``. gradc refuses both indices: "index floor(u/3) of 'P': an index must be
    affine in the loop indices, with // and % by positive integers", "index 5 - u of ... must be an
    affine function of loop indices or an int32 input" (an int32 index must stand alone; ``P[u]``
    compiles). Fixed: a lazy view gathered at arithmetic of an id becomes a stage first. With P = (0, 1, 2; 3, 4, 5) and u = 4, 1: the flatten reads 4 and 1 (loss 2.5, dL/dP
    0.5 at (1, 1) and (0, 1)); the reversal reads S[1] = 1 and S[4] = 4 (loss 2.5, dL/dP 0.5 at
    (0, 1) and (1, 1)).
    """
    m = gc.Model("gather_through_" + view)
    u = m.input("u", dtype="int32")
    P = m.param("P", (2, 3))
    V = P.flatten() if view == "flatten" else m.define("S", P.flatten())[::-1]
    m.loss(V[u])
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"P": np.arange(6.0).reshape(2, 3)}, u=np.array([4, 1], dtype=np.int32))
    assert L == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(g["P"], [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]], rtol=1e-12)


def test_gather_through_a_flatten_stage_is_right():
    """The workaround: make the flatten a stage (L.flatten, or m.define), so the gather reads it by u alone."""
    from gradc import layers as Lyr
    m = gc.Model("gather_flatten_stage")
    u = m.input("u", dtype="int32")
    P = m.param("P", (2, 3))
    m.loss(Lyr.flatten(P)[u])
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"P": np.arange(6.0).reshape(2, 3)}, u=np.array([4, 1], dtype=np.int32))
    assert L == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(g["P"], [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]], rtol=1e-12)


def test_regression_abs_of_a_product_holding_a_reversed_read():
    """loss = p * Sum_k |x[2 - k] * x[k]| over k = 0..2.

    Found by the 1,000-model run at 276b217 (model 548: a lazy ``x0[2 - a0] * x0[a0]``, gradc's
    "reverse" read, under ``sp.Abs`` in an explicit Sum). SymPy's Abs takes the sign out of the
    product and leaves the index as ``-(k - 2)``, an unexpanded Mul; gradc's affine check reads its
    coefficients (``as_coefficients_dict``) as {k - 2: -1} and refuses the read: "index -(k - 2) of
    'x' must be an affine function of loop indices or an int32 input". ``sp.Abs(x[2 - k])`` and the
    product without Abs compile; ``sp.Abs(-x[2 - k])`` and ``sp.Abs(2 * x[2 - k])`` did not. Fixed: the
    affine check expands an index first.
    With x = (1, -2, 3) and p = 1: |3 * 1| + |-2 * -2| + |1 * 3| = 10, so L = 10 and dL/dp = 10.
    """
    m = gc.Model("abs_of_reversed_read")
    k = gc.index("k")
    x = m.input("x", (3,))
    p = m.param("p")
    m.loss(p * sp.Sum(sp.Abs(x[2 - k] * x[k]), (k, 0, 2)))
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"p": np.array(1.0)}, x=np.array([[1.0, -2.0, 3.0]]))
    assert L == pytest.approx(10.0, rel=1e-12)
    assert float(g["p"]) == pytest.approx(10.0, rel=1e-12)


def test_abs_of_a_stage_holding_a_reversed_read_is_right():
    """The workaround: make the product a stage (m.define), so Abs reads it at k."""
    m = gc.Model("abs_of_reversed_stage")
    k = gc.index("k")
    x = m.input("x", (3,))
    p = m.param("p")
    q = m.define("q", (3,), lambda i: x[2 - i] * x[i])
    m.loss(p * sp.Sum(sp.Abs(q[k]), (k, 0, 2)))
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"p": np.array(1.0)}, x=np.array([[1.0, -2.0, 3.0]]))
    assert L == pytest.approx(10.0, rel=1e-12)
    assert float(g["p"]) == pytest.approx(10.0, rel=1e-12)


def test_regression_sign_of_a_value_sympy_cannot_prove_real():
    """loss = x * p[0] + sign(p[1] / sqrt(s + 1)), s = p[0] + p[1] + p[2] a stage.

    Found by the 1,000-model run at 9ff64a2 (model 37: ``L.rms_norm(p2).map(sp.sign)``, whose
    elements are p2[i] / sqrt(ms + eps) over a stage ms): "cannot differentiate x*p[0] +
    sign(p[1]/sqrt(s + 1)) with respect to s". The sign is flat almost everywhere, so its derivative
    is 0. sign(p[1] * s), and floor, Abs and Max of the same expression, compile; sign of a log or a
    fractional power of a stage (sign(log(s + 3) * p[1])) failed the same way. Fixed: sign's unevaluated
    derivative is 0, as floor's.
    With p = (0.5, -1, 2) and x = 1, 2: s = 1.5, sign(-1 / sqrt(2.5)) = -1, so L = 1.5 * 0.5 - 1 = -0.25
    and dL/dp = (mean x, 0, 0) = (1.5, 0, 0).
    """
    m = gc.Model("sign_of_unreal")
    p = m.param("p", (3,))
    x = m.input("x")
    s = m.define("s", p.sum())
    m.loss(x * p[0] + sp.sign(p[1] / sp.sqrt(s + 1)))
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"p": np.array([0.5, -1.0, 2.0])}, x=np.array([1.0, 2.0]))
    assert L == pytest.approx(-0.25, rel=1e-12)
    np.testing.assert_allclose(g["p"], [1.5, 0.0, 0.0], rtol=1e-12)


def test_sign_of_a_stage_is_right():
    """The workaround: make the value a stage (m.define), whose reads SymPy takes as real."""
    m = gc.Model("sign_of_stage")
    p = m.param("p", (3,))
    x = m.input("x")
    s = m.define("s", p.sum())
    r = m.define("r", p[1] / sp.sqrt(s + 1))
    m.loss(x * p[0] + sp.sign(r))
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad({"p": np.array([0.5, -1.0, 2.0])}, x=np.array([1.0, 2.0]))
    assert L == pytest.approx(-0.25, rel=1e-12)
    np.testing.assert_allclose(g["p"], [1.5, 0.0, 0.0], rtol=1e-12)


def test_regression_min_tie_between_a_row_and_a_stage_gathered_from_it():
    """loss = mean((Min(n1[i, j], s2[j]) - y[i, j])**2), n1 = layer_norm(p1) with weight p2 (a lazy
    expression over the mean and variance stages) and s2 = n1[2, :] a stage.

    Found by the 1,000-model run at 9ff64a2 (model 737, minimized here): row 2 ties with s2 exactly
    in value, reached by two paths. The Min's backward pass evaluates its condition in one loop nest
    per adjoint it updates (p1, p2, the mean, the variance, s2), and SymPy's common subexpressions
    factored the condition's right side differently from nest to nest ((a - m) * w / sqrt(v) in one,
    w / sqrt(v) * (a - m) in another): rounded differently, the tie went to s2 in some nests and to
    n1 in others, so the gradient went down both paths or neither (0.2-20% off). Now each condition
    is computed on its own (``simplify.cse_block``). Checked against PyTorch (which splits a tie;
    either way the paths carry the same gradient) and central differences.
    """
    from gradc import layers as Lyr
    m = gc.Model("min_tie")
    p1 = m.param("p1", (3, 3))
    p2 = m.param("p2", (3,))
    n1 = Lyr.layer_norm(p1, (3,), weight=p2, eps=1e-3)
    s2 = m.define("s2", (3,), lambda j: n1[2, j])
    n5 = gc.TensorExpr(m, (3, 3), lambda i, j: sp.Min(n1[i, j], s2[j]))
    y = m.target("y", (3, 3))
    m.loss(gc.mse(n5, y))
    mod = gc.compile_model(m)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        p = {"p1": rng.uniform(-1, 1, (3, 3)), "p2": rng.uniform(-1, 1, 3)}
        Y = rng.uniform(-1, 1, (4, 3, 3))
        _, g = mod.loss_and_grad(p, y=Y)
        for k in p:                 # central differences, coordinate by coordinate
            fd = np.zeros_like(p[k])
            for idx in np.ndindex(p[k].shape):
                q = {a: b.copy() for a, b in p.items()}
                q[k][idx] += 1e-6
                up = mod.loss(q, y=Y)
                q[k][idx] -= 2e-6
                fd[idx] = (up - mod.loss(q, y=Y)) / 2e-6
            np.testing.assert_allclose(g[k], fd, rtol=1e-6, atol=1e-8, err_msg=f"seed {seed}: {k}")


def test_regression_log_sum_exp_reusing_an_enclosing_sum_index():
    """loss = Sum_j (x[j] * lse) over j = 0..2, lse = log(Sum_j exp(p[j])) over j = 0..1, with the
    same index symbol j in both sums.

    Found by the 1,000-model run at 9d4e3a5 (model 729: ``sp.log(sp.Sum(sp.exp(n1[j]), (j, 0, 1)))``
    read inside a define's ``sp.Sum(..., (j, 0, 2))``): the stable log-sum-exp rewrite took the inner
    Sum's j for the enclosing loop's, "index j.m5 of stage '~r4' runs over 0..2, outside dimension 0
    of size 2". A plain Sum renamed its shadowed index already (shadowed_sum_index); the log-sum-exp
    path now does too. With p = (0, log 3): lse = log 4, so L = mean over samples of log 4 * sum(x),
    dL/dp = mean(sum(x)) * softmax(p) = mean(sum(x)) * (1/4, 3/4).
    """
    m = gc.Model("lse_shadow")
    j = gc.index("j")
    p = m.param("p", (2,))
    x = m.input("x", (3,))
    lse = sp.log(sp.Sum(sp.exp(p[j]), (j, 0, 1)))
    m.loss(sp.Sum(x[j] * lse, (j, 0, 2)))
    mod = gc.compile_model(m)
    X = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 1.0]])
    L, g = mod.loss_and_grad({"p": np.array([0.0, np.log(3.0)])}, x=X)
    s = X.sum(1).mean()
    assert L == pytest.approx(np.log(4.0) * s, rel=1e-12)
    np.testing.assert_allclose(g["p"], [s / 4, 3 * s / 4], rtol=1e-12)


def test_regression_abs_of_a_power_of_an_rms_normed_value():
    """loss = Sum_i |2 ** (y[i] / 2)| with y = rms_norm(x) = x / sqrt(mean(x^2) + eps), eps the float64
    epsilon (PyTorch's default, which gradc.layers follows).

    Found by the int8 fuzz run (tests/test_fuzz_int8.py's generator, label "int8-many", model 61:
    ``gc.abs(2 ** ((L.rms_norm(x1, 6)[:, None] - x1) / 2))``): SymPy could not prove
    sqrt(mean(x^2) + eps) real, so Abs of the power became ``2**(y cos(atan2(0, v + eps) / 2) ...)``
    and gradc refused the model ("unsupported function 'atan2'"). The norms now take the root of
    Max(0, v) + eps, which SymPy knows is positive. With x = (1, -2, 0.5): mean(x^2) = 1.75, and
    2 ** (y / 2) > 0, so L = Sum_i 2 ** (x[i] / sqrt(1.75 + eps) / 2).
    """
    from gradc import layers as L
    m = gc.Model("abs_rms")
    x = m.input("x", (3,))
    y = L.rms_norm(x, normalized_shape=3)
    w = m.param("w", (3,))
    m.loss(gc.abs(gc.elementwise(lambda e: 2 ** (e / 2))(y)).sum() + (w * x).sum())
    mod = gc.compile_model(m)
    X = np.array([[1.0, -2.0, 0.5]])
    yv = X / np.sqrt(1.75 + np.finfo(np.float64).eps)
    assert mod.loss({"w": np.zeros(3)}, x=X) == pytest.approx(float((2 ** (yv / 2)).sum()), rel=1e-12)
