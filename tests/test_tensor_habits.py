"""The tensor habits of NumPy and PyTorch users, and PyTorch's default initialization.

Slices (``x[2:5]``, ``h[:, 0]``, ``x[::2]``, ``W[0]``, ``x[-1]``, ``x[:, None]``, ``...``),
``.T``, ``.sum(axis)``, ``.mean(axis)``, ``.reshape``/``.flatten`` and NumPy broadcasting build
tensor expressions whose compiled values equal NumPy's; a SymPy function given a tensor says which
gradc helper to use (never a bare ``SympifyError``); a weight declared without ``init`` is drawn as
PyTorch draws the same layer's.
"""
import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.errors import ModelError


@pytest.fixture(scope="module")
def views():
    """One model whose outputs are views and reductions of its inputs, times a parameter."""
    m = gc.Model("views")
    x, X, y = m.input("x", 6), m.input("X", (3, 4)), m.target("y")
    a = m.param("a", init=1.0)
    outs = {
        "slice": x[2:5] * a, "step": x[::2] * a, "neg": x[-1] * a + 0 * x[0], "rev": x[::-1] * a,
        "col": X[:, 0] * a, "row": X[1] * a, "T": X.T * a, "newaxis": (X + x[:3][:, None]) * a,
        "bcast": (X * x[:4]) * a, "sum0": X.sum(0) * a, "sum1": X.sum(-1) * a, "mean": X.mean() * a,
        "mean1": X.mean(1) * a, "sum01": X.sum((0, 1)) * a, "flat": X.flatten() * a,
        "reshape": X.reshape(2, 6) * a, "reshape3": X.reshape(2, -1, 3) * a, "ell": X[..., 1] * a,
    }
    for k, v in outs.items():
        m.output(k, v)
    m.loss((a * x[0] - y) ** 2)
    return gc.compile_model(m, dtype="float64")


def test_views_and_reductions_equal_numpy(views):
    rng = np.random.default_rng(0)
    x, X = rng.normal(size=(5, 6)), rng.normal(size=(5, 3, 4))
    out = views.forward({"a": np.array(2.0)}, x=x, X=X)
    want = {
        "slice": x[:, 2:5], "step": x[:, ::2], "neg": x[:, -1], "rev": x[:, ::-1], "col": X[:, :, 0],
        "row": X[:, 1], "T": X.transpose(0, 2, 1), "newaxis": X + x[:, :3, None], "bcast": X * x[:, None, :4],
        "sum0": X.sum(1), "sum1": X.sum(-1), "mean": X.mean((1, 2)), "mean1": X.mean(2),
        "sum01": X.sum((1, 2)), "flat": X.reshape(5, -1), "reshape": X.reshape(5, 2, 6),
        "reshape3": X.reshape(5, 2, 2, 3), "ell": X[..., 1],
    }
    for k, w in want.items():
        np.testing.assert_allclose(out[k], 2.0 * w, rtol=1e-14, atol=1e-14, err_msg=k)


def test_a_flattened_hidden_map_differentiates_like_pytorch():
    torch = pytest.importorskip("torch")
    m = gc.Model("flat_hidden")
    x, y = m.input("x", (2, 3, 3)), m.target("y")
    A = m.param("A", (2, 3, 3), init=gc.init.uniform(-1, 1))
    W = m.param("W", (1, 18), init=gc.init.uniform(-1, 1))
    b = m.param("b", 3, init=gc.init.uniform(-1, 1))
    h = gc.tanh(A * x + b)                               # b broadcast over the last dimension
    s = m.output("s", (W @ h.flatten())[0])
    m.loss((s - y) ** 2)
    mod = gc.compile_model(m, dtype="float64")
    p = mod.init_params(seed=1)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(7, 2, 3, 3)), rng.normal(size=7)
    L, g = mod.loss_and_grad(p, x=X, y=Y)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    ts = (torch.tanh(t["A"] * torch.tensor(X) + t["b"]).reshape(7, 18) @ t["W"].T)[:, 0]
    tl = ((ts - torch.tensor(Y)) ** 2).mean()
    tl.backward()
    assert abs(L - tl.item()) <= 1e-14
    for k in p:
        np.testing.assert_allclose(g[k], t[k].grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("f,hint", [(sp.exp, r"gc\.exp\(t\)"), (sp.tanh, r"gc\.tanh\(t\)"),
                                    (sp.sin, r"t\.map\(sympy\.sin\)"), (sp.Abs, r"gc\.abs\(t\)"),
                                    (lambda t: sp.Max(0, t), r"gc\.relu\(t\)")])
def test_a_sympy_function_given_a_tensor_names_the_gradc_way(f, hint):
    m = gc.Model("habits")
    x = m.input("x", 3)
    with pytest.raises(ModelError, match=hint) as e:
        f(x)
    assert "input 'x' of shape (3,)" in str(e.value)
    assert e.value.where[0] == __file__            # the user's line, not SymPy's


def test_sympy_symbols_still_combine_with_tensors():
    m = gc.Model("habits2")
    x = m.input("x", 3)
    a = sp.Symbol("a")
    assert (a * x).shape == (3,) and (x * a + sp.Integer(2)).shape == (3,) and (2 * a * x).shape == (3,)
    with pytest.raises(ModelError, match="needs a scalar"):
        sp.Symbol("b") + sp.sin(a) * sp.Add(x, 1)


@pytest.mark.parametrize("build,msg", [
    (lambda x, X: X[1, 2, 3], "rank 2 but was indexed with 3 indices"),
    (lambda x, X: x[3:3], "is empty"),
    (lambda x, X: x[::0], "nonzero step"),
    (lambda x, X: x[1.5:], "int bounds"),
    (lambda x, X: x[6], r"index 6 out of range"),
    (lambda x, X: x[-7], r"index -7 out of range|must be"),
    (lambda x, X: X + x, r"do not broadcast: size 4 against 6"),
    (lambda x, X: X.sum(2), "axis 2 is not a dimension"),
    (lambda x, X: X.sum((1, -1)), "names a dimension twice"),
    (lambda x, X: X.reshape(5, -1), r"cannot view .* as \(5, -1\)"),
    (lambda x, X: x[x], "must be an int, an index symbol or a slice"),
    (lambda x, X: x[..., ...], "more than one"),
])
def test_bad_views_are_named(build, msg):
    m = gc.Model("bad_views")
    x, X = m.input("x", 6), m.input("X", (3, 4))
    with pytest.raises(ModelError, match=msg):
        build(x, X)


def test_a_weight_without_init_is_drawn_as_pytorch_draws_it():
    m = gc.Model("defaults")
    x, y = m.input("x", (3, 5, 5)), m.target("y")
    W = m.param("W", (16, 2))
    K = m.param("K", (4, 3, 3, 3))
    b, s = m.param("b", 16), m.param("s")
    Z = m.param("Z", (4, 4), init=0)
    m.loss((W @ x[0, 0, :2] + b).sum() * s + K[0, 0, 0, 0] * x[0, 0, 0] + Z[0, 0] - y)
    p = gc.compile_model(m).init_params(seed=0)
    for name, fan_in in (("W", 2), ("K", 27)):
        bound = 1 / np.sqrt(fan_in)      # nn.Linear(2, 16).weight, nn.Conv2d(3, 4, 3).weight
        v = p[name]
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound, name
        assert len(np.unique(v)) == v.size, name               # no two equal: rows differ
    assert not p["b"].any() and p["s"] == 0 and not p["Z"].any()


def test_a_tanh_mlp_without_init_learns():
    """Without init, every weight was zero: a tanh MLP stayed at log 2 with identical rows."""
    m = gc.Model("noinit")
    x, y = m.input("x", 2), m.target("y")
    W1, b1, W2, b2 = m.param("W1", (16, 2)), m.param("b1", 16), m.param("W2", (1, 16)), m.param("b2", 1)
    z = m.output("z", (W2 @ gc.tanh(W1 @ x + b1) + b2)[0])
    m.loss(gc.bce_with_logits(z, y))
    mod = gc.compile_model(m)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    Y = (X[:, 0] * X[:, 1] > 0).astype(float)           # XOR-like: needs the hidden layer
    p = mod.init_params(seed=0)
    opt = gc.optim.Adam(p, lr=0.05)
    for _ in range(300):
        _, g = mod.loss_and_grad(p, x=X, y=Y)
        opt.step(g)
    assert mod.loss(p, x=X, y=Y) < 0.3 < np.log(2)
    assert len(np.unique(np.round(p["W1"][:, 0], 12))) == 16


def test_embedding_of_a_vector_of_ids_is_pytorchs():
    """gc.embedding(E, tokens) with tokens an int32 vector input: a (T, D) gather, as F.embedding."""
    m = gc.Model("embseq")
    tok, y = m.input("tok", 5, dtype="int32"), m.target("y")
    E = m.param("E", (7, 3), init=gc.init.uniform(-1, 1))
    w = m.param("w", 3, init=gc.init.uniform(-1, 1))
    X = gc.embedding(E, tok)
    assert X.shape == (5, 3)
    s = m.output("s", (gc.tanh(X) @ w).mean())
    m.loss((s - y) ** 2)
    mod = gc.compile_model(m, dtype="float64")
    p = mod.init_params(seed=0)
    rng = np.random.default_rng(0)
    T, Y = rng.integers(0, 7, size=(9, 5)).astype(np.int32), rng.normal(size=9)
    L, g = mod.loss_and_grad(p, tok=T, y=Y)
    h = np.tanh(p["E"][T]) @ p["w"]                 # NumPy's fancy indexing as the reference
    np.testing.assert_allclose(mod.forward(p, tok=T)["s"], h.mean(1), rtol=1e-14)
    assert abs(L - ((h.mean(1) - Y) ** 2).mean()) <= 1e-14
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    ts = (torch.tanh(torch.nn.functional.embedding(torch.tensor(T).long(), t["E"])) @ t["w"]).mean(1)
    ((ts - torch.tensor(Y)) ** 2).mean().backward()
    for k in p:
        np.testing.assert_allclose(g[k], t[k].grad.numpy(), rtol=1e-12, atol=1e-16, err_msg=k)
    with pytest.raises(ValueError, match="argument 'tok'.*outside 0..6"):
        mod.loss(p, tok=np.full((2, 5), 7, np.int32), y=np.zeros(2))


def test_embedding_names_bad_ids():
    m = gc.Model("embbad")
    E = m.param("E", (7, 3))
    with pytest.raises(ModelError, match="int32 input"):
        gc.embedding(E, m.input("xf", 4))
    with pytest.raises(ModelError, match=r"vector of shape \(T,\)"):
        gc.embedding(E, m.input("ids2", (2, 2), dtype="int32"))
    with pytest.raises(ModelError, match="not an integer"):
        gc.embedding(E, sp.Symbol("a"))
    with pytest.raises(ModelError, match="rank-2 parameter table"):
        gc.embedding(m.param("v", 3), 0)
