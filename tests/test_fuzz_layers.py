"""Fuzzing the NumPy habits of tensor expressions, zero padding and ``gradc.layers``.

``fuzz.sample_cases(n, focus=fuzz.NEW_OPS)`` draws random models in which 3 in 5
steps are one of the generator's newer operations, and keeps those that use one:

* ``view``: slices with steps and negative bounds, negative indices, ``x[:, None]``,
  ``...``, ``.sum(axis)``, ``.mean(axis)``, ``.reshape(...)``, ``.flatten()``,
  ``L.flatten``, a vector broadcast over a matrix (``W + v``, ``u[:, None] * v``);
* ``pad``: zero padding written as a guarded read, ``m.define`` of
  ``sp.Piecewise((t[c, i - p, j - q], sp.And(i >= p, i < p + H, ...)), (0, True))``, and ``L.pad``;
* ``act``, ``conv``, ``pool``, ``norm``, ``rnn``: ``gradc.layers``' activations,
  ``conv1d``/``conv2d`` (stride, padding, 'same', dilation, groups, bias),
  max/avg/global pools, ``layer_norm``/``group_norm``/``rms_norm``, ``gru_cell``,
  ``lstm_cell`` and ``unroll``.

Each model goes through the same checks as test_fuzz.py (forward and loss against the
oracle's element-wise SymPy, the float64 gradient against finite differences, float32
against float64 on every 5th). The oracle's layer references (fuzz/oracle.py) are
PyTorch's definitions written with plain loops; the last tests compare them with
PyTorch itself where it is installed, so that the oracle, not only gradc, is checked.

Run: ``python -m pytest -q tests/test_fuzz_layers.py`` (``GRADC_FUZZ_LAYER_MODELS`` models, 40 by default).
"""
import os

import numpy as np
import pytest
import sympy as sp

pytest.importorskip("hypothesis")

import fuzz  # noqa: E402
from fuzz import oracle as O  # noqa: E402
from fuzz.generator import ACTIVATIONS, HAVE_LAYERS, NEW_OPS, uses  # noqa: E402

N_LAYERS = int(os.environ.get("GRADC_FUZZ_LAYER_MODELS", "40"))


@pytest.fixture(scope="module")
def layer_run():
    cases = fuzz.sample_cases(N_LAYERS, label="layers", focus=NEW_OPS)
    return {i: (cases[i], status, msg) for i, status, msg, _ in fuzz.run_cases(cases)}


@pytest.mark.parametrize("i", range(N_LAYERS))
def test_random_model_with_new_constructs(layer_run, i):
    case, status, msg = layer_run[i]
    assert uses(case, NEW_OPS), case
    if status == "skipped":
        pytest.skip(msg)
    if status == "failed":
        pytest.fail(f"{case!r}\n{msg}", pytrace=False)


def test_layer_models_cover_every_new_construct(layer_run):
    if N_LAYERS < 30:
        pytest.skip("coverage is asserted for 30 models or more")
    seen = set().union(*[case.features for case, _, _ in layer_run.values()])
    want = ["view_slice", "view_negative_index", "view_newaxis", "view_ellipsis", "view_sum_axis",
            "view_mean_axis", "view_reshape", "view_flatten", "broadcast_trailing", "broadcast_outer",
            "broadcast_column", "pad_read", "pad_function", "pad_redundant"]
    if HAVE_LAYERS:
        want += ["act_" + a[0] for a in ACTIVATIONS] + [
            "pad_layers", "layers_flatten", "conv1d", "conv2d", "conv_stride", "conv_dilation", "conv_groups",
            "conv_padding", "conv_same", "conv_bias", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
            "avg_pool_padding", "global_avg_pool", "layer_norm", "group_norm", "rms_norm", "gru_cell",
            "lstm_cell", "unroll_gru", "unroll_lstm"]
    missing = [f for f in want if f not in seen]
    assert not missing, f"no model of the layer sample exercises {missing}"


# ---- the oracle's references against PyTorch ------------------------------------------------------
def _obj(a):
    """A float array as an object array of SymPy Floats (what the references compute with)."""
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(*a.shape):
        out[idx] = sp.Float(float(a[idx]))
    return out


def _num(a):
    return np.array([float(e) for e in np.ravel(a)]).reshape(np.shape(a))


def _ident(a):
    return a


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("nd, stride, pads, dilation, groups", [
    (1, (1,), ((0, 0),), (1,), 1), (1, (2,), ((1, 1),), (2,), 2), (1, (1,), ((1, 2),), (3,), 1),
    (2, (1, 1), ((0, 0), (0, 0)), (1, 1), 1), (2, (2, 1), ((1, 1), (2, 2)), (1, 2), 2),
    (2, (1, 1), ((1, 2), (0, 1)), (2, 1), 4)])
def test_oracle_conv_is_pytorchs(torch, nd, stride, pads, dilation, groups):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(4,) + (7,) * nd)
    w = rng.uniform(-1, 1, size=(4, 4 // groups) + (3,) * nd)
    b = rng.uniform(-1, 1, size=4)
    got = _num(O.conv(_obj(x), _obj(w), _obj(b), stride, pads, dilation, groups))
    flat = [p for pair in reversed(pads) for p in pair]            # F.pad: last dimension first
    xp = F.pad(torch.tensor(x)[None], flat)
    conv = F.conv1d if nd == 1 else F.conv2d
    want = conv(xp, torch.tensor(w), torch.tensor(b), stride=stride, dilation=dilation, groups=groups)[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kernel, dilation", [((2,), (1,)), ((4,), (1,)), ((3, 2), (2, 3)), ((2, 4), (1, 1))])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_oracle_same_padding_is_pytorchs(torch, kernel, dilation):
    F = torch.nn.functional
    nd = len(kernel)
    rng = np.random.default_rng(4)
    x, w = rng.uniform(-1, 1, size=(2,) + (6,) * nd), rng.uniform(-1, 1, size=(3, 2) + kernel)
    got = _num(O.conv(_obj(x), _obj(w), None, (1,) * nd, O.same_pads(kernel, dilation), dilation, 1))
    conv = F.conv1d if nd == 1 else F.conv2d
    want = conv(torch.tensor(x)[None], torch.tensor(w), padding="same", dilation=dilation)[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("nd", [1, 2])
def test_oracle_pools_are_pytorchs(torch, nd):
    F = torch.nn.functional
    x = np.random.default_rng(1).uniform(-1, 1, size=(2,) + (6,) * nd)
    t = torch.tensor(x)[None]
    k, s = (3,) * nd, (2,) * nd
    mx = (F.max_pool1d if nd == 1 else F.max_pool2d)(t, k, s)[0]
    np.testing.assert_allclose(_num(O.max_pool(_obj(x), k, s)), mx.numpy(), rtol=1e-15)
    av = (F.avg_pool1d if nd == 1 else F.avg_pool2d)(t, k, s, padding=1, count_include_pad=True)[0]
    np.testing.assert_allclose(_num(O.avg_pool(_obj(x), k, s, (1,) * nd)), av.numpy(), rtol=1e-12)


def test_oracle_norms_are_pytorchs(torch):
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(4, 3, 5))
    t = torch.tensor(x)
    rows = [[(a,) + q for q in np.ndindex(3, 5)] for a in range(4)]        # layer_norm over (3, 5)
    got = _num(O.normalize(_obj(x), rows, sp.Float(1e-5), _ident))
    np.testing.assert_allclose(got, F.layer_norm(t, (3, 5)).numpy(), rtol=1e-10, atol=1e-12)
    groups = [[(c,) + q for c in range(2 * g, 2 * g + 2) for q in np.ndindex(3, 5)] for g in range(2)]
    got = _num(O.normalize(_obj(x), groups, sp.Float(0.1), _ident))
    np.testing.assert_allclose(got, F.group_norm(t[None], 2, eps=0.1)[0].numpy(), rtol=1e-10, atol=1e-12)
    last = [[(a, b, c) for c in range(5)] for a in range(4) for b in range(3)]  # rms_norm over the last dim
    got = _num(O.rms_normalize(_obj(x), last, sp.Float(1e-3), _ident))
    np.testing.assert_allclose(got, F.rms_norm(t, (5,), eps=1e-3).numpy(), rtol=1e-10, atol=1e-12)


def test_oracle_recurrent_cells_are_pytorchs(torch):
    rng = np.random.default_rng(3)
    F_, H = 4, 3
    x, h, c = rng.uniform(-1, 1, F_), rng.uniform(-1, 1, H), rng.uniform(-1, 1, H)
    for gates, Cell in ((3, torch.nn.GRUCell), (4, torch.nn.LSTMCell)):
        cell = Cell(F_, H).double()
        ws = [p.detach().numpy() for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
        tx, th, tc = (torch.tensor(v)[None] for v in (x, h, c))
        if gates == 3:
            got = _num(O.gru_cell(_obj(x), _obj(h), *map(_obj, ws), _ident))
            want = cell(tx, th)[0].detach().numpy()
            np.testing.assert_allclose(got, want, rtol=1e-12)
            got0 = _num(O.gru_cell(_obj(x), None, *map(_obj, ws), _ident))
            np.testing.assert_allclose(got0, cell(tx)[0].detach().numpy(), rtol=1e-12)
        else:
            gh, gc_ = O.lstm_cell(_obj(x), _obj(h), _obj(c), *map(_obj, ws), _ident)
            wh, wc = cell(tx, (th, tc))
            np.testing.assert_allclose(_num(gh), wh[0].detach().numpy(), rtol=1e-12)
            np.testing.assert_allclose(_num(gc_), wc[0].detach().numpy(), rtol=1e-12)


def test_oracle_activations_are_pytorchs(torch):
    F = torch.nn.functional
    v = np.linspace(-3, 3, 13) + 0.01
    want = {"leaky_relu": F.leaky_relu, "leaky_relu_slope": lambda t: F.leaky_relu(t, 0.2), "elu": F.elu,
            "elu_alpha": lambda t: F.elu(t, 0.5), "gelu": F.gelu,
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu}
    assert set(want) == {a[0] for a in ACTIVATIONS}
    for name, _, fn, _, _ in ACTIVATIONS:
        got = [float(fn(sp.Float(e))) for e in v]
        np.testing.assert_allclose(got, want[name](torch.tensor(v)).numpy(), rtol=1e-12, err_msg=name)
