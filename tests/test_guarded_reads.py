"""Zero padding as a guarded read, and index arithmetic with // and %.

A stage ``P[c, i, j] = x[c, i - 1, j - 1] if 1 <= i <= H and 1 <= j <= W else 0`` reads ``x`` in
range only where its guard holds; the IR checks the reads over that box, and the backward pass
loops over it only (``dx[c, i, j] += dP[c, i + 1, j + 1]``), so no adjoint is written out of range.
A read ``h[f // 9, (f % 9) // 3, f % 3]`` (a flatten) is checked by interval arithmetic and printed
as C's integer division and remainder. Checked against central differences, and against PyTorch's
``conv2d(padding=1)`` and ``reshape`` where it is installed.
"""
import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.errors import ModelError
from gradcheck import assert_close, central_differences

C, H, W = 2, 4, 4


def padded_cnn(name="padflat"):
    """conv 3x3 padding 1 on the input and on a hidden map, a flatten by // and %, a dense layer."""
    m = gc.Model(name)
    x, y = m.input("x", (C, H, W)), m.target("y")
    K1 = m.param("K1", (3, C, 3, 3), init=gc.init.uniform(-0.5, 0.5))
    K2 = m.param("K2", (2, 3, 3, 3), init=gc.init.uniform(-0.5, 0.5))
    Wd = m.param("W", (1, 2 * H * W), init=gc.init.uniform(-0.5, 0.5))

    def pad(t, c_):
        return m.define(m.auto_name(), (c_, H + 2, W + 2), lambda c, i, j: sp.Piecewise(
            (t[c, i - 1, j - 1], sp.And(i >= 1, i < H + 1, j >= 1, j < W + 1)), (0, True)))

    def conv(P, K, o_, c_):
        c, k, l = m.fresh_index(), m.fresh_index(), m.fresh_index()
        return m.define(m.auto_name(), (o_, H, W), lambda o, i, j: sp.Sum(
            K[o, c, k, l] * P[c, i + k, j + l], (c, 0, c_ - 1), (k, 0, 2), (l, 0, 2)))

    h = m.materialize(gc.tanh(conv(pad(x, C), K1, 3, C)))
    z = conv(pad(h, 3), K2, 2, 3)
    f = m.define("f", 2 * H * W, lambda q: z[q // (H * W), (q % (H * W)) // W, q % W])
    s = m.output("s", (Wd @ f)[0])
    m.loss((s - y) ** 2)
    return m


@pytest.fixture(scope="module")
def cnn():
    return gc.compile_model(padded_cnn(), dtype="float64")


def data(n=19, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, C, H, W)), "y": rng.normal(size=n)}


def test_padded_convolutions_and_flatten_match_central_differences(cnn):
    p, d = cnn.init_params(seed=3), data()
    _, g = cnn.loss_and_grad(p, **d)
    fd = central_differences(cnn, p, d)
    got = np.concatenate([g[k].ravel() for k in p])
    assert_close(got, fd, rtol=1e-7, floor=1e-6, what="padded CNN against central differences")


def test_padded_convolutions_and_flatten_match_pytorch(cnn):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p, d = cnn.init_params(seed=3), data()
    L, g = cnn.loss_and_grad(p, **d)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    h = torch.tanh(F.conv2d(torch.tensor(d["x"]), t["K1"], padding=1))
    z = F.conv2d(h, t["K2"], padding=1)
    s = (z.reshape(len(d["y"]), -1) @ t["W"].T)[:, 0]
    tl = ((s - torch.tensor(d["y"])) ** 2).mean()
    tl.backward()
    assert abs(L - tl.item()) <= 1e-13 * abs(tl.item())
    for k in p:
        np.testing.assert_allclose(g[k], t[k].grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=k)
    out = cnn.forward(p, x=d["x"])["s"]
    np.testing.assert_allclose(out, s.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_build_agrees():
    m32 = gc.compile_model(padded_cnn("padflat32"), dtype="float32")
    m64 = gc.compile_model(padded_cnn("padflat64"), dtype="float64")
    p, d = m64.init_params(seed=1), data(40)
    L32, g32 = m32.loss_and_grad({k: v.astype(np.float32) for k, v in p.items()},
                                 x=d["x"].astype(np.float32), y=d["y"].astype(np.float32))
    L64, g64 = m64.loss_and_grad(p, **d)
    assert abs(L32 - L64) <= 1e-5 * abs(L64)
    for k in p:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _model():
    m = gc.Model("bad")
    x, y = m.input("x", 6), m.target("y")
    w = m.param("w", 6, init=0.5)
    return m, x, y, w


def test_a_read_out_of_range_without_a_guard_is_refused():
    m, x, y, w = _model()
    m.define("p", 8, lambda i: x[i - 1])
    m.loss(y)
    with pytest.raises(ModelError, match=r"index i\.\d+ - 1 of input 'x' runs over -1\.\.6"):
        gc.compile_model(m)


def test_a_guard_that_does_not_cover_the_read_is_refused():
    m, x, y, w = _model()
    p = m.define("p", 8, lambda i: sp.Piecewise((x[i - 1], i >= 1), (0, True)))    # i = 7 reads x[6]
    k = gc.index("k")
    m.loss(sp.Sum(p[k] * w[k], (k, 0, 5)) - y)
    with pytest.raises(ModelError, match=r"of input 'x' runs over 0\.\.6, outside dimension 0 of size 6"):
        gc.compile_model(m)


def test_a_guard_that_never_holds_is_named():
    m, x, y, w = _model()
    p = m.define("p", 8, lambda i: sp.Piecewise((x[i - 1], sp.And(i >= 5, i < 3)), (0, True)))
    k = gc.index("k")
    m.loss(sp.Sum(p[k] * w[k], (k, 0, 5)) - y)
    with pytest.raises(ModelError, match="never holds"):
        gc.compile_model(m)


def test_a_remainder_outside_an_index_is_refused():
    m, x, y, w = _model()
    p = m.define("p", 6, lambda i: x[i] * sp.Mod(i, 2))
    m.loss((p @ w) - y)
    with pytest.raises(ModelError, match="may appear in tensor indices only"):
        gc.compile_model(m)


def test_floor_division_of_a_negative_index_is_refused():
    m, x, y, w = _model()
    p = m.define("p", 6, lambda i: x[(i - 1) // 2 + 1])       # in range, but C's / would round up at i = 0
    m.loss((p @ w) - y)
    with pytest.raises(ModelError, match="can be negative"):
        gc.compile_model(m)


def test_index_arithmetic_ranges():
    from gradc.ir import index_range
    f, g = sp.Symbol("f", integer=True), sp.Symbol("g", integer=True)
    assert index_range(f // 9, {f: 27}) == (0, 2)
    assert index_range((f % 9) // 3, {f: 27}) == (0, 2)
    assert index_range(f % 3, {f: 2}) == (0, 1)
    assert index_range(2 * (f // 4) + g, {f: 8, g: 2}) == (0, 3)
    with pytest.raises(ValueError, match="affine"):
        index_range(f * g, {f: 2, g: 2})
