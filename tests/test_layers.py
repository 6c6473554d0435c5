"""gradc.layers against PyTorch: every helper's value and gradient (w.r.t. every parameter and the
layer's input) equal ``torch.nn.functional``'s (or ``torch.nn.GRU``/``LSTM``'s) to 1e-12 relative
in float64, and bad arguments raise a ModelError naming the helper and the argument.

Each compiled model holds several cases, each with its own input, parameters and output, so that
the file compiles a few models rather than one per case. A case's layer input is ``x + dx``, x a
per-sample input and dx a parameter, so the gradient of dx is the gradient w.r.t. the layer's
input; the loss is sum(out * T) for a random per-sample target T, so every output element's
gradient is checked.

Run: ``python -m pytest -q tests/test_layers.py``
"""
from dataclasses import dataclass, field

import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc import layers as L

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-12
N = 3                      # samples in a batch


@dataclass
class Case:
    """One layer under test: ``build(m, xin, **params)`` returns gradc outputs (one tensor
    expression or a tuple), ``ref(xin, **params)`` the same from torch with a batch dimension."""
    name: str
    in_shape: tuple
    params: dict
    build: object
    ref: object
    data: object = None            # rng -> (N, *in_shape) input data (default: standard normal)
    input_grad: bool = True
    values: dict = field(default_factory=dict)


def close(got, want, what):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    floor = 1e-12 * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    err = np.abs(got - want)
    bad = err > RTOL * np.abs(want) + floor
    assert not bad.any(), f"{what}: max error {err.max():.3g} at {np.argwhere(bad)[0]} (want {want.ravel()[:6]})"


def check(model_name, cases, seed=0):
    """Compile all ``cases`` in one model and compare outputs, loss and gradients with torch."""
    rng = np.random.default_rng(seed)
    m = gc.Model(model_name)
    loss = 0
    outs = {}
    for c in cases:
        x = m.input(f"{c.name}_x", c.in_shape)
        xin = x
        if c.input_grad:
            xin = x + m.param(f"{c.name}_dx", c.in_shape)
            c.values["dx"] = rng.normal(scale=0.3, size=c.in_shape)
        P = {}
        for p, shape in c.params.items():
            P[p] = m.param(f"{c.name}_{p}", shape)
            c.values[p] = rng.normal(scale=0.5, size=shape)
        got = c.build(m, xin, **P)
        got = got if isinstance(got, tuple) else (got,)
        outs[c.name] = []
        for j, o in enumerate(got):
            name = f"{c.name}_out{j}"
            oo = m.output(name, o)
            T = m.target(f"{c.name}_T{j}", oo.shape)
            loss = loss + (oo * T).sum()
            outs[c.name].append((name, oo.shape))
    m.loss(loss)
    mod = gc.compile_model(m, dtype="float64")

    params, data, inputs = {}, {}, {}
    t_loss = 0
    t_params, t_outs = {}, {}
    for c in cases:
        X = c.data(rng) if c.data else rng.normal(size=(N,) + c.in_shape)
        data[f"{c.name}_x"] = inputs[f"{c.name}_x"] = X
        tp = {k: torch.tensor(v, requires_grad=True) for k, v in c.values.items()}
        t_params[c.name] = tp
        for k, v in c.values.items():
            params[f"{c.name}_{k}"] = v
        xin = torch.tensor(X) + tp["dx"] if c.input_grad else torch.tensor(X)
        want = c.ref(xin, **{k: v for k, v in tp.items() if k != "dx"})
        want = want if isinstance(want, tuple) else (want,)
        assert len(want) == len(outs[c.name]), c.name
        t_outs[c.name] = want
        for (name, shape), w in zip(outs[c.name], want):
            assert tuple(w.shape) == (N,) + shape, (name, tuple(w.shape), shape)
            T = rng.normal(size=(N,) + shape)
            data[name.replace("_out", "_T")] = T
            t_loss = t_loss + (w * torch.tensor(T)).sum() / N
    t_loss.backward()

    fwd = mod.forward(params, **inputs)
    for c in cases:
        for (name, _), w in zip(outs[c.name], t_outs[c.name]):
            close(fwd[name], w.detach().numpy(), f"{name} value")
    lv, g = mod.loss_and_grad(params, **data)
    close(lv, t_loss.item(), "loss")
    for c in cases:
        for k, v in t_params[c.name].items():
            close(g[f"{c.name}_{k}"], v.grad.numpy(), f"gradient of {c.name}_{k}")
    return mod


# ---- convolutions ---------------------------------------------------------------------------

def test_conv2d_strides_dilations_and_groups():
    check("conv2d", [
        Case("plain", (3, 6, 6), {"W": (4, 3, 3, 3), "b": (4,)},
             lambda m, x, W, b: L.conv2d(x, W, b),
             lambda x, W, b: F.conv2d(x, W, b)),
        Case("strided", (2, 7, 6), {"W": (3, 2, 2, 3)},
             lambda m, x, W: gc.relu(L.conv2d(x, W, stride=(2, 1), dilation=(1, 2))),
             lambda x, W: F.relu(F.conv2d(x, W, stride=(2, 1), dilation=(1, 2)))),
        Case("depthwise", (3, 5, 5), {"W": (3, 1, 3, 3), "b": (3,)},
             lambda m, x, W, b: L.conv2d(x, W, b, groups=3),
             lambda x, W, b: F.conv2d(x, W, b, groups=3)),
        Case("one_channel", (1, 5, 5), {"W": (2, 1, 2, 2), "b": (2,)},
             lambda m, x, W, b: L.conv2d(x, W, b, stride=2),
             lambda x, W, b: F.conv2d(x, W, b, stride=2)),
    ])


def test_conv2d_groups_with_several_outputs_per_group():
    # 4 channels in 2 groups, 3 outputs a group: read as (group, output in group) with // and %
    check("conv2d_groups", [
        Case("groups", (4, 5, 5), {"W": (6, 2, 2, 2), "b": (6,)},
             lambda m, x, W, b: L.conv2d(x, W, b, groups=2),
             lambda x, W, b: F.conv2d(x, W, b, groups=2)),
    ])


@pytest.mark.filterwarnings("ignore:Using padding='same'")      # torch's note on its own padded copy
def test_conv_padding():
    check("conv_pad", [
        Case("pad1", (2, 5, 5), {"W": (3, 2, 3, 3), "b": (3,)},
             lambda m, x, W, b: L.conv2d(x, W, b, padding=1),
             lambda x, W, b: F.conv2d(x, W, b, padding=1)),
        Case("pad_pair_stride", (2, 6, 5), {"W": (2, 2, 3, 2)},
             lambda m, x, W: L.conv2d(x, W, stride=2, padding=(2, 1)),
             lambda x, W: F.conv2d(x, W, stride=2, padding=(2, 1))),
        # an even kernel and a dilation: PyTorch puts the odd one of the total on the bottom/right
        Case("same", (2, 5, 6), {"W": (2, 2, 2, 4), "b": (2,)},
             lambda m, x, W, b: L.conv2d(x, W, b, padding="same", dilation=(1, 1)),
             lambda x, W, b: F.conv2d(x, W, b, padding="same")),
        Case("same_dilated", (2, 6, 6), {"W": (2, 2, 3, 2)},
             lambda m, x, W: L.conv2d(x, W, padding="same", dilation=(2, 3)),
             lambda x, W: F.conv2d(x, W, padding="same", dilation=(2, 3))),
        Case("valid", (2, 4, 4), {"W": (2, 2, 3, 3)},
             lambda m, x, W: L.conv2d(x, W, padding="valid"),
             lambda x, W: F.conv2d(x, W, padding="valid")),
        Case("c1d_pad", (2, 7), {"W": (3, 2, 3), "b": (3,)},
             lambda m, x, W, b: L.conv1d(x, W, b, stride=2, padding=1, dilation=2),
             lambda x, W, b: F.conv1d(x, W, b, stride=2, padding=1, dilation=2)),
        Case("c1d_same", (2, 6), {"W": (2, 2, 4)},
             lambda m, x, W: L.conv1d(x, W, padding="same"),
             lambda x, W: F.conv1d(x, W, padding="same")),
        Case("c1d_groups", (4, 6), {"W": (2, 2, 3)},
             lambda m, x, W: L.conv1d(x, W, groups=2),
             lambda x, W: F.conv1d(x, W, groups=2)),
        Case("pad", (2, 3, 4), {},
             lambda m, x: L.pad(x, [(1, 0), 2]),
             lambda x: F.pad(x, (2, 2, 1, 0))),
    ])


# ---- pooling and flatten --------------------------------------------------------------------

def test_pooling():
    check("pool", [
        Case("max2", (2, 6, 6), {},
             lambda m, x: L.max_pool2d(x, 2),
             lambda x: F.max_pool2d(x, 2)),
        Case("max_overlap", (2, 7, 6), {},
             lambda m, x: L.max_pool2d(x, (3, 2), stride=(2, 1)),
             lambda x: F.max_pool2d(x, (3, 2), stride=(2, 1))),
        Case("max1d", (2, 7), {},
             lambda m, x: L.max_pool1d(x, 3, stride=2),
             lambda x: F.max_pool1d(x, 3, stride=2)),
        Case("avg2", (2, 6, 5), {},
             lambda m, x: L.avg_pool2d(x, 2),
             lambda x: F.avg_pool2d(x, 2)),
        Case("avg1d", (2, 7), {},
             lambda m, x: L.avg_pool1d(x, 3, stride=2),
             lambda x: F.avg_pool1d(x, 3, stride=2)),
        Case("gap", (3, 4, 5), {},
             lambda m, x: L.global_avg_pool(x),
             lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1)),
        Case("gap1d", (3, 5), {},
             lambda m, x: L.global_avg_pool(x),
             lambda x: x.mean(-1)),
    ])


def test_avg_pool_padding_counts_the_zeros():
    check("avg_pad", [
        Case("avg2_pad", (2, 6, 5), {},
             lambda m, x: L.avg_pool2d(x, 3, stride=2, padding=1),
             lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=True)),
        Case("avg1d_pad", (2, 6), {},
             lambda m, x: L.avg_pool1d(x, 2, stride=1, padding=1),
             lambda x: F.avg_pool1d(x, 2, stride=1, padding=1)),
    ])


def test_flatten_into_a_dense_layer():
    check("flatten", [
        Case("flat3", (2, 3, 4), {"W": (5, 24), "b": (5,)},
             lambda m, x, W, b: W @ L.flatten(gc.relu(x)) + b,
             lambda x, W, b: F.linear(F.relu(x).flatten(1), W, b)),
        Case("flat4", (2, 2, 3, 2), {},
             lambda m, x: L.flatten(x),
             lambda x: x.flatten(1)),
        Case("flat2", (3, 4), {},
             lambda m, x: L.flatten(x),
             lambda x: x.flatten(1)),
    ])


def test_lenet_block_as_one_model():
    """conv (padded) -> relu -> max-pool -> conv -> relu -> avg-pool -> flatten -> dense."""
    def build(m, x, K1, c1, K2, c2, W, b):
        h = L.max_pool2d(gc.relu(L.conv2d(x, K1, c1, padding=1)), 2)
        h = L.avg_pool2d(gc.relu(L.conv2d(h, K2, c2)), 2)
        return W @ L.flatten(h) + b

    def ref(x, K1, c1, K2, c2, W, b):
        h = F.max_pool2d(F.relu(F.conv2d(x, K1, c1, padding=1)), 2)
        h = F.avg_pool2d(F.relu(F.conv2d(h, K2, c2)), 2)
        return F.linear(h.flatten(1), W, b)
    check("lenet_block", [Case("net", (1, 8, 8), {"K1": (3, 1, 3, 3), "c1": (3,), "K2": (4, 3, 3, 3),
                                                  "c2": (4,), "W": (2, 4), "b": (2,)}, build, ref)])


# ---- normalization --------------------------------------------------------------------------

def const(value, shape):
    return lambda rng: np.full((N,) + shape, value)


def test_norms():
    check("norms", [
        Case("ln_all", (2, 3, 4), {"w": (2, 3, 4), "b": (2, 3, 4)},
             lambda m, x, w, b: L.layer_norm(x, weight=w, bias=b),
             lambda x, w, b: F.layer_norm(x, (2, 3, 4), w, b)),
        Case("ln_last", (3, 5), {"w": (5,), "b": (5,)},
             lambda m, x, w, b: L.layer_norm(x, 5, w, b, eps=1e-3),
             lambda x, w, b: F.layer_norm(x, (5,), w, b, eps=1e-3)),
        Case("ln_plain", (6,), {},
             lambda m, x: L.layer_norm(x),
             lambda x: F.layer_norm(x, (6,))),
        Case("gn", (4, 3, 2), {"w": (4,), "b": (4,)},
             lambda m, x, w, b: L.group_norm(x, 2, w, b),
             lambda x, w, b: F.group_norm(x, 2, w, b)),
        Case("gn1", (3, 4), {"w": (3,)},
             lambda m, x, w: L.group_norm(x, 1, weight=w),
             lambda x, w: F.group_norm(x, 1, w)),
        Case("gn_c", (3, 2, 2), {"b": (3,)},
             lambda m, x, b: L.group_norm(x, 3, bias=b),
             # a weight of ones: torch 2.13's backward of group_norm with bias but no weight fails
             lambda x, b: F.group_norm(x, 3, torch.ones(3, dtype=torch.float64), b)),
        Case("rms", (2, 5), {"w": (2, 5)},
             lambda m, x, w: L.rms_norm(x, w),
             lambda x, w: F.rms_norm(x, (2, 5), w)),
        Case("rms_last", (3, 4), {"w": (4,)},
             lambda m, x, w: L.rms_norm(x, w, eps=1e-6, normalized_shape=4),
             lambda x, w: F.rms_norm(x, (4,), w, eps=1e-6)),
    ])


def test_norms_of_a_constant_input_stay_finite():
    """Zero variance: the two-pass variance is exactly 0 (no negative E[x^2] - E[x]^2 under a
    square root); rms_norm of zeros is 0 with the tiny default eps."""
    check("norms_const", [
        Case("ln", (2, 4), {"w": (2, 4), "b": (2, 4)},
             lambda m, x, w, b: L.layer_norm(x, weight=w, bias=b),
             lambda x, w, b: F.layer_norm(x, (2, 4), w, b),
             data=const(0.75, (2, 4)), input_grad=False),
        Case("gn", (4, 3), {"w": (4,)},
             lambda m, x, w: L.group_norm(x, 2, weight=w),
             lambda x, w: F.group_norm(x, 2, w),
             data=const(-1.5, (4, 3)), input_grad=False),
        Case("rms", (5,), {"w": (5,)},
             lambda m, x, w: L.rms_norm(x, w),
             lambda x, w: F.rms_norm(x, (5,), w),
             data=const(0.0, (5,)), input_grad=False),
    ])


# ---- activations ----------------------------------------------------------------------------

def test_activations():
    check("acts", [
        Case("leaky", (7,), {}, lambda m, x: L.leaky_relu(x), lambda x: F.leaky_relu(x)),
        Case("leaky2", (7,), {}, lambda m, x: L.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
        Case("elu", (7,), {}, lambda m, x: L.elu(x), lambda x: F.elu(x)),
        Case("elu2", (2, 3), {}, lambda m, x: L.elu(x, alpha=0.5), lambda x: F.elu(x, alpha=0.5)),
        Case("gelu", (2, 4), {}, lambda m, x: L.gelu(x), lambda x: F.gelu(x)),
        Case("gelu_tanh", (8,), {}, lambda m, x: L.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
        Case("silu", (8,), {}, lambda m, x: L.silu(x), lambda x: F.silu(x)),
    ])


def test_activations_work_on_scalars_and_matrices():
    t = sp.Symbol("t", real=True)
    assert L.leaky_relu(t, 0.1).subs(t, -2) == pytest.approx(-0.2)
    assert float(L.elu(t).subs(t, -1).evalf()) == pytest.approx(np.expm1(-1))
    assert float(L.gelu(t).subs(t, 1).evalf()) == pytest.approx(F.gelu(torch.tensor(1.0, dtype=torch.float64)).item())
    M = L.silu(sp.Matrix([0, 1]))
    assert isinstance(M, sp.MatrixBase) and M.shape == (2, 1) and M[0] == 0


# ---- recurrent cells ------------------------------------------------------------------------

FEAT, HID, STEPS = 3, 4, 5


def torch_cell(kind, W_ih, W_hh, b_ih, b_hh):
    cell = (torch.nn.GRUCell if kind == "gru" else torch.nn.LSTMCell)(FEAT, HID, dtype=torch.float64)
    # the cell's own parameters replaced by the test's leaves (gradients flow to them)
    for name, v in (("weight_ih", W_ih), ("weight_hh", W_hh), ("bias_ih", b_ih), ("bias_hh", b_hh)):
        delattr(cell, name)
        setattr(cell, name, v)
    return cell


def test_cells_one_step():
    check("cells", [
        Case("gru", (FEAT,), {"h": (HID,), "W_ih": (3 * HID, FEAT), "W_hh": (3 * HID, HID),
                              "b_ih": (3 * HID,), "b_hh": (3 * HID,)},
             lambda m, x, h, W_ih, W_hh, b_ih, b_hh: L.gru_cell(x, h, W_ih, W_hh, b_ih, b_hh),
             lambda x, h, W_ih, W_hh, b_ih, b_hh: torch_cell("gru", W_ih, W_hh, b_ih, b_hh)(
                 x, h.expand(N, HID))),
        Case("lstm", (FEAT,), {"h": (HID,), "c": (HID,), "W_ih": (4 * HID, FEAT), "W_hh": (4 * HID, HID),
                               "b_ih": (4 * HID,), "b_hh": (4 * HID,)},
             lambda m, x, h, c, W_ih, W_hh, b_ih, b_hh: L.lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh),
             lambda x, h, c, W_ih, W_hh, b_ih, b_hh: torch_cell("lstm", W_ih, W_hh, b_ih, b_hh)(
                 x, (h.expand(N, HID), c.expand(N, HID)))),
    ])


def torch_rnn(kind, W_ih, W_hh, b_ih, b_hh):
    rnn = (torch.nn.GRU if kind == "gru" else torch.nn.LSTM)(FEAT, HID, batch_first=True, dtype=torch.float64)
    for name, v in (("weight_ih_l0", W_ih), ("weight_hh_l0", W_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
        delattr(rnn, name)
        setattr(rnn, name, v)
    rnn._flat_weights = [W_ih, W_hh, b_ih, b_hh]
    return rnn


def test_unrolled_gru_and_lstm_match_torch_rnns():
    def gru(m, xs, h0, W_ih, W_hh, b_ih, b_hh):
        h, hs = L.unroll(lambda x, h: L.gru_cell(x, h, W_ih, W_hh, b_ih, b_hh), xs, h0, return_all=True)
        return h, hs[1]

    def gru_ref(xs, h0, W_ih, W_hh, b_ih, b_hh):
        out, hn = torch_rnn("gru", W_ih, W_hh, b_ih, b_hh)(xs, h0.expand(1, N, HID).contiguous())
        return hn[0], out[:, 1]

    def lstm(m, xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
        return L.unroll(lambda x, h, c: L.lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh), xs, (h0, c0))

    def lstm_ref(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
        _, (hn, cn) = torch_rnn("lstm", W_ih, W_hh, b_ih, b_hh)(
            xs, (h0.expand(1, N, HID).contiguous(), c0.expand(1, N, HID).contiguous()))
        return hn[0], cn[0]

    def lstm_zero(m, xs, W_ih, W_hh):
        return L.unroll(lambda x, h, c: L.lstm_cell(x, h, c, W_ih, W_hh), xs, (None, None), steps=3)[0]

    def lstm_zero_ref(xs, W_ih, W_hh):
        cell = torch.nn.LSTMCell(FEAT, HID, bias=False, dtype=torch.float64)
        for name, v in (("weight_ih", W_ih), ("weight_hh", W_hh)):
            delattr(cell, name)
            setattr(cell, name, v)
        h = c = torch.zeros(N, HID, dtype=torch.float64)
        for t in range(3):
            h, c = cell(xs[:, t], (h, c))
        return h

    g, l4 = 3 * HID, 4 * HID
    check("rnns", [
        Case("gru", (STEPS, FEAT), {"h0": (HID,), "W_ih": (g, FEAT), "W_hh": (g, HID), "b_ih": (g,),
                                    "b_hh": (g,)}, gru, gru_ref),
        Case("lstm", (STEPS, FEAT), {"h0": (HID,), "c0": (HID,), "W_ih": (l4, FEAT), "W_hh": (l4, HID),
                                     "b_ih": (l4,), "b_hh": (l4,)}, lstm, lstm_ref),
        Case("lstm0", (STEPS, FEAT), {"W_ih": (l4, FEAT), "W_hh": (l4, HID)}, lstm_zero, lstm_zero_ref),
    ])


# ---- argument errors ------------------------------------------------------------------------

def errors_model():
    m = gc.Model("errors")
    return m, m.input("x", (4, 6, 6)), m.input("s", (4, 6))


@pytest.mark.parametrize("call, message", [
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 3, 3, 3))),
     "conv2d: weight has 3 input channels per group but x has 4 channels"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3))), r"conv2d: weight must have rank 4, got shape \(2, 4, 3\)"),
    (lambda m, x, s: L.conv2d(s, m.param("W", (2, 4, 3, 3))), r"conv2d: x must have rank 3, got shape \(4, 6\)"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (3, 2, 3, 3)), groups=3), "conv2d: groups=3 does not divide the 4 channels"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (3, 2, 3, 3)), groups=2), "conv2d: groups=2 does not divide the 3 output channels"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), m.param("b", 3)), r"conv2d: bias must have shape \(2,\)"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), stride=0), "conv2d: stride must be >= 1, got 0"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), stride=(1, 2, 1)), "conv2d: stride must be an int or a sequence of 2 ints"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), padding=-1), "conv2d: padding must be >= 0"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), padding="same", stride=2), "conv2d: padding='same' needs stride 1"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), padding="full"), "conv2d: padding must be an int"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 7, 3))), "conv2d: the kernel spans 7 positions"),
    (lambda m, x, s: L.conv2d(x, m.param("W", (2, 4, 3, 3)), dilation=3), "conv2d: the kernel spans 7 positions .* dilation 3"),
    (lambda m, x, s: L.conv1d(s, m.param("W", (2, 4, 3)), groups=0), "conv1d: groups must be a positive int"),
    (lambda m, x, s: L.conv2d(np.ones((4, 6, 6)), m.param("W", (2, 4, 3, 3))), "conv2d: x must be a gradc tensor"),
    (lambda m, x, s: L.max_pool2d(x, 2, padding=1), "max_pool2d: padding=1 is not supported"),
    (lambda m, x, s: L.max_pool2d(x, 0), "max_pool2d: kernel_size must be >= 1"),
    (lambda m, x, s: L.max_pool2d(x, 7), "max_pool2d: kernel_size 7 is larger than"),
    (lambda m, x, s: L.avg_pool1d(s, 2, padding=2), "avg_pool1d: padding 2 is more than half the kernel size 2"),
    (lambda m, x, s: L.avg_pool2d(s, 2), r"avg_pool2d: x must have rank 3, got shape \(4, 6\)"),
    (lambda m, x, s: L.pad(x, [1]), "pad: pads has 1 entries but x has 2 spatial dimensions"),
    (lambda m, x, s: L.pad(x, (1, -1)), "pad: pads must be >= 0"),
    (lambda m, x, s: L.layer_norm(x, (6, 5)), r"layer_norm: normalized_shape \(6, 5\) is not a trailing part"),
    (lambda m, x, s: L.layer_norm(x, 6, weight=m.param("w", 5)), r"layer_norm: weight must have shape \(6,\)"),
    (lambda m, x, s: L.layer_norm(x, eps=0), "layer_norm: eps must be > 0"),
    (lambda m, x, s: L.group_norm(x, 3), "group_norm: num_groups=3 does not divide the 4 channels"),
    (lambda m, x, s: L.group_norm(x, 2, bias=m.param("b", 2)), r"group_norm: bias must have shape \(4,\)"),
    (lambda m, x, s: L.rms_norm(x, m.param("w", (6, 6))), r"rms_norm: weight must have shape \(4, 6, 6\)"),
    (lambda m, x, s: L.gelu(x, "erf"), "gelu: approximate must be 'none' or 'tanh'"),
    (lambda m, x, s: L.leaky_relu(x, "a"), "leaky_relu: negative_slope must be a number"),
    (lambda m, x, s: L.gru_cell(s, None, m.param("A", (12, 4)), m.param("B", (12, 4))),
     r"gru_cell: x must have rank 1, got shape \(4, 6\)"),
    (lambda m, x, s: L.gru_cell(m.param("v", 5), None, m.param("A", (12, 4)), m.param("B", (12, 4))),
     "gru_cell: W_ih has 4 columns .* but x has 5 elements"),
    (lambda m, x, s: L.gru_cell(m.param("v", 4), None, m.param("A", (13, 4)), m.param("B", (12, 4))),
     "gru_cell: W_ih has 13 rows, not a multiple of 3"),
    (lambda m, x, s: L.lstm_cell(m.param("v", 4), m.param("h", 3), None, m.param("A", (12, 4)), m.param("B", (12, 4))),
     r"lstm_cell: W_hh must have shape \(12, 3\) \(hidden_size 3 from W_ih\), got \(12, 4\)"),
    (lambda m, x, s: L.lstm_cell(m.param("v", 4), m.param("h", 4), None, m.param("A", (12, 4)), m.param("B", (12, 3))),
     r"lstm_cell: h must have shape \(3,\), got \(4,\)"),
    (lambda m, x, s: L.lstm_cell(m.param("v", 4), None, m.param("c", 4), m.param("A", (12, 4)), m.param("B", (12, 3))),
     r"lstm_cell: c must have shape \(3,\), got \(4,\)"),
    (lambda m, x, s: L.unroll(lambda a, h: h, s, None, steps=5), "unroll: steps must be an int from 1 to 4"),
    (lambda m, x, s: L.unroll(lambda a, h: h, x, None), r"unroll: xs must have rank 2, got shape \(4, 6, 6\)"),
])
def test_bad_arguments_name_the_helper_and_argument(call, message):
    m, x, s = errors_model()
    with pytest.raises(gc.ModelError, match=message) as e:
        call(m, x, s)
    assert e.value.where[0] == __file__          # the user's line, not gradc's


def test_a_convolution_is_one_reduction_over_a_padded_map():
    """The form the register tiles recognize, as LeNet-5 written by hand: a Sum of weight times a
    strided, dilated read of the input, plus the bias, over a stage of guarded reads."""
    m = gc.Model("form")
    x = m.input("x", (2, 5, 5))
    W, b = m.param("W", (3, 2, 3, 3)), m.param("b", 3)
    o, i, j = sp.symbols("o i j", integer=True)
    z = L.conv2d(x, W, b, stride=2, padding=1, dilation=(1, 2))[o, i, j]
    (pad,) = m.defs
    assert pad.shape == (2, 7, 7)
    c, p, q = pad.idx
    X = x.base
    assert pad.body == sp.Piecewise((X[c, p - 1, q - 1], sp.And(p >= 1, p < 6, q >= 1, q < 6)), (0, True))
    s, = [a for a in z.args if isinstance(a, sp.Sum)]
    assert z == s + b[o]
    (ch, _, _), (k, _, _), (l, _, _) = s.limits
    P = sp.IndexedBase(sp.Symbol(pad.name, real=True))
    assert s.function == W[o, ch, k, l] * P[ch, 2 * i + k, 2 * j + 2 * l]
