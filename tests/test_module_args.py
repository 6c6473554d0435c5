"""Call arguments of a generated module: a bad one raises ValueError naming it; what can be
converted safely (lists, float32 data, int64 ids, non-contiguous arrays) gives the same answer."""
import numpy as np
import pytest

import gradc

SRC = """\
import sympy as sp
import gradc as gc
m = gc.Model("args_model")
x = m.input("x", 3)
u = m.input("u", dtype="int32")             # a row of E
y = m.target("y")
c = m.target("c", dtype="int32")            # an entry of C
W = m.param("W", (2, 3), init=gc.init.uniform(-1, 1))
E = m.param("E", (5, 2), init=gc.init.uniform(-1, 1))
C = m.param("C", 3, init=gc.init.uniform(-1, 1))
b = m.param("b", init=0.1)
h = W @ x
k = gc.index("k")
s = m.output("s", sp.Sum(h[k] * E[u, k], (k, 0, 1)) + b)
m.loss((s - y) ** 2 + C[c] ** 2)
"""

N = 4
FNS = ["forward", "loss", "loss_and_grad"]
TARGETS = ("y", "c")


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    path = tmp_path_factory.mktemp("args") / "model.py"
    path.write_text(SRC)
    return gradc.load(str(path))


@pytest.fixture
def p(mod):
    return mod.init_params(seed=1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return dict(x=rng.normal(size=(N, 3)), u=np.array([0, 4, 2, 1], dtype=np.int32),
                y=rng.normal(size=N), c=np.array([2, 0, 1, 2], dtype=np.int32))


def call(mod, fn, params, **data):
    """Call ``fn`` of the module; forward takes the inputs only."""
    if fn == "forward":
        data = {k: v for k, v in data.items() if k not in TARGETS}
    return getattr(mod, fn)(params, **data)


def reference(p, x, u, y, c):
    """The model in numpy: outputs, loss and gradient."""
    h = x @ p["W"].T                                   # (N, 2)
    s = np.sum(h * p["E"][u], axis=1) + p["b"]
    r = s - y
    loss = np.mean(r ** 2 + p["C"][c] ** 2)
    n = len(y)
    g = {"W": np.einsum("n,ni,nj->ij", 2 * r / n, p["E"][u], x), "E": np.zeros_like(p["E"]),
         "C": np.zeros_like(p["C"]), "b": np.sum(2 * r / n)}
    np.add.at(g["E"], u, (2 * r / n)[:, None] * h)
    np.add.at(g["C"], c, 2 * p["C"][c] / n)
    return {"s": s}, loss, g


def assert_same(a, b, rtol=1e-12):
    """Results of two calls (a dict of outputs, a loss, or (loss, grads)) agree."""
    if isinstance(a, tuple):
        assert_same(a[0], b[0], rtol)
        assert_same(a[1], b[1], rtol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-14)
    else:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14)


def raises(mod, fn, params, *words, **data):
    with pytest.raises(ValueError) as ei:
        call(mod, fn, params, **data)
    msg = str(ei.value)
    for w in words:
        assert w in msg, f"{w!r} missing from {msg!r}"
    return msg


# ---- the baseline --------------------------------------------------------

@pytest.mark.parametrize("fn", FNS)
def test_good_arguments_give_the_numpy_reference(mod, p, data, fn):
    out, loss, g = reference(p, **data)
    want = {"forward": out, "loss": loss, "loss_and_grad": (loss, g)}[fn]
    assert_same(call(mod, fn, p, **data), want, rtol=1e-10)


# ---- shapes --------------------------------------------------------------

@pytest.mark.parametrize("fn", FNS)
def test_input_with_wrong_shape_names_argument_and_both_shapes(mod, p, data, fn):
    raises(mod, fn, p, "'x'", "(4, 2)", "(batch, 3)", **dict(data, x=data["x"][:, :2]))


@pytest.mark.parametrize("fn", FNS)
def test_one_sample_without_batch_axis_is_rejected(mod, p, data, fn):
    raises(mod, fn, p, "'x'", "(3,)", "(batch, 3)", x=data["x"][0], u=data["u"][:1], y=data["y"][:1],
           c=data["c"][:1])


def test_target_with_extra_axis_is_rejected(mod, p, data):
    raises(mod, "loss", p, "'y'", "(4, 1)", **dict(data, y=data["y"][:, None]))


def test_int32_input_with_extra_axis_is_rejected(mod, p, data):
    raises(mod, "loss", p, "'u'", "(4, 1)", **dict(data, u=data["u"][:, None]))


@pytest.mark.parametrize("fn", FNS)
def test_parameter_with_wrong_shape_names_it_and_both_shapes(mod, p, data, fn):
    raises(mod, fn, dict(p, W=p["W"].T), "'W'", "(3, 2)", "(2, 3)", **data)


def test_scalar_parameter_given_as_vector_is_rejected(mod, p, data):
    raises(mod, "loss", dict(p, b=[0.1]), "'b'", "(1,)", "()", **data)


@pytest.mark.parametrize("fn", FNS)
def test_mismatched_batch_sizes_name_both_arguments_and_sizes(mod, p, data, fn):
    raises(mod, fn, p, "'u'", "3", "'x'", "4", **dict(data, u=data["u"][:3]))


def test_target_with_other_batch_size_names_it(mod, p, data):
    raises(mod, "loss_and_grad", p, "'y'", "5", **dict(data, y=np.zeros(5)))


@pytest.mark.parametrize("fn", FNS)
def test_empty_batch_is_rejected(mod, p, data, fn):
    raises(mod, fn, p, "empty", **{k: v[:0] for k, v in data.items()})


def test_ragged_list_for_real_input_is_rejected_naming_it(mod, p):
    raises(mod, "loss", p, "'x'", x=[[1.0, 2.0, 3.0], [1.0, 2.0]], u=[0, 1], y=[0.0, 1.0], c=[0, 1])


def test_ragged_list_for_int32_input_is_rejected_naming_it(mod, p, data):
    raises(mod, "loss", p, "'u'", x=data["x"][:2], u=[[0], [1, 2]], y=data["y"][:2], c=data["c"][:2])


# ---- dtypes --------------------------------------------------------------

@pytest.mark.parametrize("fn", FNS)
def test_complex_input_is_rejected_naming_argument_and_dtype(mod, p, data, fn):
    raises(mod, fn, p, "'x'", "complex", **dict(data, x=data["x"] + 1j))


def test_string_input_is_rejected_naming_it(mod, p, data):
    raises(mod, "loss", p, "'x'", **dict(data, x=data["x"].astype(str)))


def test_none_input_is_rejected_naming_it(mod, p, data):
    raises(mod, "loss", p, "'x'", **dict(data, x=None))


@pytest.mark.parametrize("bad", [np.float64, np.float32, np.complex128, np.bool_, np.str_],
                         ids=["float64", "float32", "complex", "bool", "str"])
def test_non_integer_ids_for_int32_input_are_rejected(mod, p, data, bad):
    raises(mod, "loss", p, "'u'", "int", **dict(data, u=data["u"].astype(bad)))


def test_float_labels_for_int32_target_are_rejected(mod, p, data):
    raises(mod, "loss_and_grad", p, "'c'", "int", **dict(data, c=[2.0, 0.0, 1.0, 2.0]))


@pytest.mark.parametrize("ids", [[0, 1, 2**40, 2], [0, -2**40, 1, 2]], ids=["above", "below"])
def test_ids_outside_the_int32_range_are_rejected(mod, p, data, ids):
    raises(mod, "loss", p, "'u'", "int32", **dict(data, u=np.array(ids, dtype=np.int64)))


def test_uint64_ids_beyond_int32_are_rejected(mod, p, data):
    raises(mod, "forward", p, "'u'", "int32", x=data["x"], u=np.array([0, 1, 2**63 + 5, 2], dtype=np.uint64))


@pytest.mark.parametrize("value", [1j, "0.1", None], ids=["complex", "str", "None"])
def test_parameter_that_is_not_real_is_rejected_naming_it(mod, p, data, value):
    raises(mod, "loss", dict(p, b=value), "'b'", **data)


# ---- names ---------------------------------------------------------------

@pytest.mark.parametrize("fn", FNS)
def test_missing_input_is_named(mod, p, data, fn):
    raises(mod, fn, p, "missing", "'x'", **{k: v for k, v in data.items() if k != "x"})


@pytest.mark.parametrize("fn", ["loss", "loss_and_grad"])
def test_missing_target_is_named(mod, p, data, fn):
    raises(mod, fn, p, "missing", "'c'", **{k: v for k, v in data.items() if k != "c"})


@pytest.mark.parametrize("fn", FNS)
def test_unknown_argument_is_named(mod, p, data, fn):
    raises(mod, fn, p, "unknown", "'z'", **dict(data, z=data["y"]))


def test_misspelt_argument_is_reported(mod, p, data):
    d = dict(data)
    d["X"] = d.pop("x")
    raises(mod, "loss", p, "'x'", **d)


def test_target_passed_to_forward_is_unknown(mod, p, data):
    with pytest.raises(ValueError, match="unknown argument 'y'"):
        mod.forward(p, x=data["x"], u=data["u"], y=data["y"])


@pytest.mark.parametrize("fn", FNS)
def test_missing_parameter_is_named(mod, p, data, fn):
    raises(mod, fn, {k: v for k, v in p.items() if k != "E"}, "missing", "'E'", **data)


@pytest.mark.parametrize("fn", FNS)
def test_unknown_parameter_is_named(mod, p, data, fn):
    raises(mod, fn, dict(p, W2=p["W"]), "unknown", "'W2'", **data)


def test_params_that_are_not_a_dict_are_rejected(mod, p, data):
    raises(mod, "loss", list(p.values()), "params", **data)


# ---- indices -------------------------------------------------------------

@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("bad", [5, -1], ids=["too_big", "negative"])
def test_int32_index_out_of_range_names_argument_sample_and_range(mod, p, data, fn, bad):
    u = data["u"].copy()
    u[2] = bad
    raises(mod, fn, p, "'u'", "sample 2", str(bad), "0..4", **dict(data, u=u))


def test_int32_target_index_out_of_range_names_it_and_the_sample(mod, p, data):
    raises(mod, "loss_and_grad", p, "'c'", "sample 3", "0..2", **dict(data, c=[2, 0, 1, 3]))


# ---- what is accepted ----------------------------------------------------

@pytest.mark.parametrize("fn", FNS)
def test_python_lists_give_the_same_results_as_arrays(mod, p, data, fn):
    lists = {k: v.tolist() for k, v in data.items()}
    plist = {k: np.asarray(v).tolist() for k, v in p.items()}
    assert_same(call(mod, fn, plist, **lists), call(mod, fn, p, **data))


@pytest.mark.parametrize("fn", FNS)
def test_float32_data_into_float64_model_gives_the_float64_results_of_the_same_values(mod, p, data, fn):
    d32 = dict(data, x=data["x"].astype(np.float32), y=data["y"].astype(np.float32))
    d64 = dict(data, x=d32["x"].astype(np.float64), y=d32["y"].astype(np.float64))
    assert_same(call(mod, fn, p, **d32), call(mod, fn, p, **d64))


def test_float32_parameters_are_accepted(mod, p, data):
    p32 = {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    assert_same(mod.loss_and_grad(p32, **data), mod.loss_and_grad(p64, **data))


@pytest.mark.parametrize("fn", FNS)
def test_int64_ids_into_int32_input_give_the_same_results(mod, p, data, fn):
    d64 = dict(data, u=data["u"].astype(np.int64), c=data["c"].astype(np.int64))
    assert_same(call(mod, fn, p, **d64), call(mod, fn, p, **data))


@pytest.mark.parametrize("fn", FNS)
def test_non_contiguous_arrays_give_the_same_results_as_contiguous(mod, p, data, fn):
    # Fortran order, a strided view, a reversed view and a column of a 2-d array
    xf = np.asfortranarray(data["x"])
    u2 = np.repeat(data["u"], 2)[::2]
    yr = data["y"][::-1].copy()[::-1]
    c2 = np.stack([data["c"], data["c"] + 7], axis=1)[:, 0]
    pw = {k: (np.asfortranarray(v) if np.ndim(v) == 2 else v) for k, v in p.items()}
    pw["C"] = np.repeat(p["C"], 3)[::3]
    for a in (xf, u2, yr, c2, pw["W"], pw["C"]):
        assert not a.flags.c_contiguous
    assert_same(call(mod, fn, pw, x=xf, u=u2, y=yr, c=c2), call(mod, fn, p, **data))


def test_grads_come_back_keyed_and_shaped_like_params(mod, p, data):
    _, g = mod.loss_and_grad(p, **data)
    assert {k: np.shape(v) for k, v in g.items()} == {k: np.shape(v) for k, v in p.items()}


# ---- an int32 vector whose elements index different tables ---------------

IDS_SRC = """\
import gradc as gc
m = gc.Model("args_ids")
ids = m.input("ids", 2, dtype="int32")      # ids[0]: a row of U (5 rows), ids[1]: a row of V (8 rows)
y = m.target("y")
U = m.param("U", (5, 2), init=gc.init.uniform(-1, 1))
V = m.param("V", (8, 2), init=gc.init.uniform(-1, 1))
s = m.output("s", U[ids[0], 0] * V[ids[1], 0] + U[ids[0], 1] * V[ids[1], 1])
m.loss((s - y) ** 2)
"""


@pytest.fixture(scope="module")
def ids_mod(tmp_path_factory):
    path = tmp_path_factory.mktemp("args_ids") / "model.py"
    path.write_text(IDS_SRC)
    return gradc.load(str(path))


def test_int32_vector_element_out_of_its_table_names_argument_and_sample(ids_mod):
    p = ids_mod.init_params()
    with pytest.raises(ValueError) as ei:
        ids_mod.loss(p, ids=[[1, 2], [1, 8]], y=[0.0, 0.0])
    assert "'ids'" in str(ei.value) and "sample 1" in str(ei.value)


def test_int32_vector_elements_indexing_tables_of_different_sizes_accept_their_own_range(ids_mod):
    p = ids_mod.init_params()
    ids = np.array([[1, 7], [4, 5]])
    L = ids_mod.loss(p, ids=ids, y=[0.0, 0.0])
    s = np.sum(p["U"][ids[:, 0]] * p["V"][ids[:, 1]], axis=1)
    assert L == pytest.approx(np.mean(s ** 2), rel=1e-12)


def test_a_model_without_inputs_or_targets_takes_only_its_parameters(tmp_path):
    path = tmp_path / "noinput.py"
    path.write_text('import sympy as sp\nimport gradc as gc\nm = gc.Model("noinput")\n'
                    'w = m.param("w", 3, init=1.5)\nk = gc.index("k")\n'
                    'm.loss(sp.Sum(w[k] ** 2, (k, 0, 2)))\n')
    mod = gradc.load(str(path))
    p = mod.init_params()
    L, g = mod.loss_and_grad(p)
    assert L == pytest.approx(3 * 1.5 ** 2)
    np.testing.assert_allclose(g["w"], 2 * 1.5 * np.ones(3))
    assert mod.loss(p) == pytest.approx(L)


# ---- the fused steps check their arguments as the other functions do ----------------------------

STEPS = ["sgd_step", "adam_step", "SGD.train_step", "Adam.train_step"]


def fused_step(mod, how, params, **data):
    """One fused step ``how`` on ``params`` (updated in place); returns the loss."""
    from gradc import optim
    if how == "sgd_step":
        return mod.sgd_step(params, 0.1, **data)
    if how == "adam_step":
        return mod.adam_step(params, mod.adam_state(), lr=0.1, **data)
    opt = (optim.SGD if how == "SGD.train_step" else optim.Adam)(params, lr=0.1)
    L = opt.train_step(mod, **data)
    assert opt._fused is not None, "the fused path was not taken"
    return L


@pytest.mark.parametrize("how", STEPS)
def test_fused_steps_give_the_same_step_for_data_that_converts(mod, data, how):
    ref = mod.init_params(seed=1)
    L = fused_step(mod, how, ref, **data)
    u2 = np.repeat(data["u"], 2)[::2]
    for conv in (dict(data, x=np.asfortranarray(data["x"])), dict(data, u=u2, y=data["y"][::-1].copy()[::-1]),
                 dict(data, x=data["x"].astype(np.float32)), dict(data, u=data["u"].astype(np.int64)),
                 {k: v.tolist() for k, v in data.items()}):
        q = mod.init_params(seed=1)
        want = L if conv["x"] is not None and np.asarray(conv["x"]).dtype != np.float32 else None
        got = fused_step(mod, how, q, **conv)
        if want is None:        # float32 data: the float64 step of the same (rounded) values
            r = mod.init_params(seed=1)
            want = fused_step(mod, how, r, **dict(data, x=data["x"].astype(np.float32).astype(np.float64)))
            np.testing.assert_array_equal(q.flat, r.flat)
        else:
            np.testing.assert_array_equal(q.flat, ref.flat)
        assert got == want


@pytest.mark.parametrize("how", STEPS)
@pytest.mark.parametrize("bad,words", [
    (lambda d: dict(d, x=d["x"][:, :2]), ("'x'", "(4, 2)", "(batch, 3)")),
    (lambda d: dict(d, x=d["x"][0], u=d["u"][:1], y=d["y"][:1], c=d["c"][:1]), ("'x'", "(3,)")),
    (lambda d: dict(d, y=d["y"][:, None]), ("'y'", "(4, 1)")),
    (lambda d: dict(d, y=np.float64(1.0)), ("'y'",)),
    (lambda d: dict(d, u=d["u"][:3]), ("'u'", "3", "'x'", "4")),
    (lambda d: {k: v[:0] for k, v in d.items()}, ("empty",)),
    (lambda d: dict(d, x=d["x"] + 1j), ("'x'", "complex")),
    (lambda d: dict(d, x=None), ("'x'",)),
    (lambda d: dict(d, u=d["u"].astype(np.float64)), ("'u'", "int")),
    (lambda d: dict(d, u=np.array([0, 1, 2**40, 2])), ("'u'", "int32")),
    (lambda d: {k: v for k, v in d.items() if k != "c"}, ("missing", "'c'")),
    (lambda d: dict(d, z=d["y"]), ("unknown", "'z'")),
    (lambda d: dict(d, u=np.array([0, 4, 5, 1], np.int32)), ("'u'", "sample 2", "0..4")),
    (lambda d: dict(d, c=np.array([2, 0, 1, 3], np.int32)), ("'c'", "sample 3", "0..2")),
], ids=["x-shape", "no-batch-axis", "y-extra-axis", "y-scalar", "batch-sizes", "empty", "complex", "none",
        "float-ids", "int32-range", "missing", "unknown", "u-range", "c-range"])
def test_fused_steps_refuse_bad_arguments_by_name_and_change_nothing(mod, data, how, bad, words):
    q = mod.init_params(seed=1)
    before = q.flat.copy()
    with pytest.raises(ValueError) as ei:
        fused_step(mod, how, q, **bad(data))
    for w in words:
        assert w in str(ei.value), f"{w!r} missing from {ei.value}"
    np.testing.assert_array_equal(q.flat, before)
