"""Common subexpressions across stages: a reduction written several times is computed once.

The lowering gives every distinct reduction one stage, however often it is written (in one
expression, in several definitions, by helpers or by hand) and whatever its bound index is
called; every use reads that stage, so its adjoint receives the sum of all uses. Two sums that
differ in body, extent or output index map stay apart.

Gradients are checked against central differences of the compiled loss (float64) and against
the same model written with ``m.define`` (one stage by construction).

Run: ``python -m pytest -q tests/test_cse_stages.py``
"""
import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.ir import lower
from gradcheck import all_coords, assert_close, central_differences, pick

FD_RTOL = 1e-6
SAME_RTOL = 1e-12
D, N = 7, 16
U = gc.init.uniform(-1, 1)
half = sp.Rational(1, 2)


def reductions(prog):
    return [s for s in prog.stages if s.red]


def xy_data(seed, **draws):
    """N samples of x (D,) and y from generator ``seed``; ``draws`` adds or replaces entries,
    each a function of the generator."""
    rng = np.random.default_rng(seed)
    data = dict(x=rng.normal(size=(N, D)), y=rng.normal(size=N))
    data.update({k: f(rng) for k, f in draws.items()})
    return data


def assert_matches_central_differences(m, data, param_seed, what):
    """Model ``m`` compiled: its gradient on ``data`` against central differences; returns the
    module and the parameters."""
    mod = gc.compile_model(m)
    params = mod.init_params(seed=param_seed)
    _, g = mod.loss_and_grad(params, **data)
    coords = all_coords(params)
    assert_close(pick(g, coords), central_differences(mod, params, data, coords), FD_RTOL,
                 coords=coords, what=what)
    return mod, params


def huber(r):
    return sp.Piecewise((r ** 2 / 2, sp.Abs(r) <= 1), (sp.Abs(r) - half, True))


def build_huber(style):
    """Huber loss of a linear model; the Sum appears three times (condition and both branches)."""
    m = gc.Model("cse_huber_" + style)
    x, y = m.input("x", D), m.target("y")
    W = m.param("W", D, init=U)
    k, j, l = gc.index("k"), gc.index("j"), gc.index("l")
    if style == "inline":        # the same Sum object written three times
        s = sp.Sum(W[k] * x[k], (k, 0, D - 1))
        m.loss(huber(s - y))
    elif style == "renamed":     # three Sums that differ only by the name of the bound index
        s = [sp.Sum(W[v] * x[v], (v, 0, D - 1)) - y for v in (k, j, l)]
        m.loss(sp.Piecewise((s[0] ** 2 / 2, sp.Abs(s[1]) <= 1), (sp.Abs(s[2]) - half, True)))
    else:                        # "define": one named stage, read three times
        s = m.define("s", sp.Sum(W[k] * x[k], (k, 0, D - 1)))
        m.loss(huber(s - y))
    return m


def huber_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    # residuals on both sides of |r| = 1, none on the kink
    return dict(x=x, y=rng.normal(scale=2.0, size=N))


def test_a_sum_written_three_times_lowers_to_one_reduction_stage():
    for style in ("inline", "renamed", "define"):
        prog = lower(build_huber(style).spec())
        red = reductions(prog)
        assert len(red) == 1, (style, [str(s) for s in prog.stages])
        assert red[0].op == "sum"
        # one elementwise stage (the loss) reads it; nothing else is made
        assert len(prog.stages) == 2, (style, [str(s) for s in prog.stages])
        assert prog.stage(prog.loss).body.has(sp.Symbol(red[0].name, real=True))


@pytest.mark.parametrize("style", ["inline", "renamed"])
def test_shared_reduction_gradient_matches_central_differences_and_the_defined_model(style):
    mod, ref = gc.compile_model(build_huber(style)), gc.compile_model(build_huber("define"))
    data = huber_data()
    params = mod.init_params(seed=1)
    L, g = mod.loss_and_grad(params, **data)
    r = params["W"] @ data["x"].T - data["y"]
    assert np.any(np.abs(r) <= 1) and np.any(np.abs(r) > 1), "both Huber branches must be taken"
    coords = all_coords(params)
    fd = central_differences(mod, params, data, coords, h=1e-6)
    assert_close(pick(g, coords), fd, FD_RTOL, coords=coords, what=f"huber {style} vs FD")
    L_ref, g_ref = ref.loss_and_grad(params, **data)
    assert abs(L - L_ref) <= SAME_RTOL * max(1.0, abs(L_ref))
    assert_close(g["W"], g_ref["W"], SAME_RTOL, what=f"huber {style} vs m.define")


def test_different_sums_are_not_merged():
    m = gc.Model("cse_different")
    x, y = m.input("x", D), m.target("y")
    W, A = m.param("W", D, init=U), m.param("A", (D, D), init=U)
    k = gc.index("k")
    i = gc.index("i")
    other_body = sp.Sum(W[k] * x[k] ** 2, (k, 0, D - 1))
    other_extent = sp.Sum(W[k] * x[k], (k, 0, D - 2))
    same = sp.Sum(W[k] * x[k], (k, 0, D - 1))
    # the same body under another output index map: A @ x against A.T @ x
    Ax = m.define("Ax", D, lambda i: sp.Sum(A[i, k] * x[k], (k, 0, D - 1)))
    ATx = m.define("ATx", D, lambda i: sp.Sum(A[k, i] * x[k], (k, 0, D - 1)))
    m.loss((same - y) ** 2 + other_body * other_extent + same
           + sp.Sum(Ax[i] * ATx[i], (i, 0, D - 1)))
    prog = lower(m.spec())
    red = reductions(prog)
    assert len(red) == 6, [str(s) for s in prog.stages]    # same, other_body, other_extent, Ax, ATx, the dot
    assert {s.name for s in red} >= {"Ax", "ATx"}

    assert_matches_central_differences(m, xy_data(2), 3, "different sums vs FD")


def test_a_sum_shared_across_definitions_and_helpers():
    """A dense layer inlined twice (an output and the loss), a named sum and the same sum written
    inline in another definition, and a softmax's logsumexp taken twice: each computed once."""
    m = gc.Model("cse_across")
    x, y, label = m.input("x", D), m.target("y"), m.target("label", dtype="int32")
    w, b = m.param("w", (1, D), init=U), m.param("b", 1, init=0.1)
    V = m.param("V", (3, D), init=U)
    k = gc.index("k")
    z = (w @ x + b)[0]                                    # inlined in "p" and in the loss
    m.output("p", gc.sigmoid(z))
    s = m.define("s", sp.Sum(V[0, k] * x[k], (k, 0, D - 1)))
    t = m.define("t", sp.tanh(sp.Sum(V[0, k] * x[k], (k, 0, D - 1))))   # the sum of "s" again
    logits = V @ x
    m.loss(gc.bce_with_logits(z, y) + s * t + gc.softmax_cross_entropy(logits, label)
           - gc.log_softmax(logits)[0] / 3)
    prog = lower(m.spec())
    text = [str(st) for st in prog.stages]
    sums = [st for st in reductions(prog) if st.op == "sum"]
    maxes = [st for st in reductions(prog) if st.op == "max"]
    # w.x, V[0].x ("s"), V @ x, sum of exp: one each
    assert len(sums) == 4 and len(maxes) == 1, text
    assert prog.stage("t").body.has(sp.Symbol("s", real=True)), text

    data = xy_data(4, y=lambda rng: rng.uniform(size=N), label=lambda rng: rng.integers(0, 3, N).astype(np.int32))
    assert_matches_central_differences(m, data, 5, "shared across definitions vs FD")


def test_an_intermediate_a_helper_makes_twice_is_made_once():
    """``h`` is a tensor expression: each ``@`` materializes it into its own ``~`` tensor; the second
    (and the second ``W @ x`` inside it) is dropped, and both products read the first."""
    m = gc.Model("cse_twice")
    x, y = m.input("x", D), m.target("y")
    W, V, Q = m.param("W", (5, D), init=U), m.param("V", (1, 5), init=U), m.param("Q", (1, 5), init=U)
    h = gc.relu(W @ x)
    m.loss(((V @ h)[0] * (Q @ h)[0] - y) ** 2)
    prog = lower(m.spec())
    text = [str(st) for st in prog.stages]
    assert sum("Max(0" in t for t in text) == 1 and len(reductions(prog)) == 3, text   # W @ x, V @ h, Q @ h

    assert_matches_central_differences(m, xy_data(8), 9, "helper intermediate made once vs FD")


def test_a_named_sum_after_the_same_inline_sum_is_a_copy_of_it():
    m = gc.Model("cse_named_after")
    x, y = m.input("x", D), m.target("y")
    W = m.param("W", D, init=U)
    k, j = gc.index("k"), gc.index("j")
    h = m.define("h", sp.exp(sp.Sum(W[k] * x[k], (k, 0, D - 1)) / D))
    s = m.output("s", sp.Sum(W[j] * x[j], (j, 0, D - 1)))       # the name stays, the sum is not redone
    m.loss((h + s - y) ** 2)
    prog = lower(m.spec())
    (red,) = reductions(prog)
    assert red.name != "s" and prog.stage("s").body == sp.Symbol(red.name, real=True)

    data = xy_data(6)
    data["x"] /= 3
    mod, params = assert_matches_central_differences(m, data, 7, "named copy vs FD")
    np.testing.assert_allclose(mod.forward(params, x=data["x"])["s"], data["x"] @ params["W"], rtol=1e-13)


def build_mlp():
    m = gc.Model("cse_mlp")
    x, label = m.input("x", 6), m.target("label", dtype="int32")
    W1, b1 = m.param("W1", (8, 6), init=U), m.param("b1", 8, init=0.1)
    W2, b2 = m.param("W2", (8, 8), init=U), m.param("b2", 8, init=0.1)
    W3, b3 = m.param("W3", (4, 8), init=U), m.param("b3", 4)
    h1 = gc.relu(W1 @ x + b1)
    h2 = gc.tanh(gc.dense(h1, W2, b2))
    logits = m.output("logits", W3 @ h2 + b3)
    m.loss(gc.softmax_cross_entropy(logits, label))
    m.regularize(1e-4 * gc.sum_squares(W1, W2, W3))
    return m


def test_an_mlp_built_with_helpers_lowers_to_as_many_stages_as_before():
    # counted with the lowering before stages were shared (commit 3681438): nothing in it repeats
    prog = lower(build_mlp().spec())
    assert len(prog.stages) == 13, [str(s) for s in prog.stages]
    assert len(reductions(prog)) == 8, [str(s) for s in prog.stages]
