"""The primitives table (``gradc.functions.PRIMITIVES``): one entry declares a function for the front
end, the printer, both targets' helpers, ``gradc.nn`` and the tests' oracles.

log1p and expm1 were added through the table alone; here each api primitive is compiled and its
values checked against the table's numpy reference, its gradient against central differences and
against ``sympy.diff`` of the same model written out by hand.
"""
import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.codegen.c import Printer, helper_functions
from gradc.functions import PRIMITIVES, SUPPORTED_FUNCTIONS, numpy_functions
from gradcheck import all_coords, assert_close, central_differences, pick, sympy_oracle

API = [p for p in PRIMITIVES if p.api]
x = sp.Symbol("x", real=True)


def test_every_api_primitive_is_a_gradc_helper_and_supported():
    for p in API:
        assert callable(getattr(gc, p.api)), p.api
        assert p.sympy in SUPPORTED_FUNCTIONS
        assert getattr(gc, p.api).__doc__


def test_log1p_and_expm1_came_in_through_the_table():
    names = {p.name for p in API}
    assert {"log1p", "expm1", "sigmoid", "softplus"} <= names
    assert numpy_functions()["log1p"] is np.log1p


@pytest.mark.parametrize("dtype, suffix", [("float64", ""), ("float32", "f")])
def test_every_printable_primitive_prints_with_the_dtype_suffix(dtype, suffix):
    where = {"x": ("X_x", (), "real", True, None)}
    for p in PRIMITIVES:
        if not (p.c or p.helper):
            continue
        e = p.sympy(*[sp.Symbol(a, real=True) for a in ("x", "y")[:len(p.params)]]) if p.name not in ("max", "min") \
            else p.sympy(x, sp.Symbol("y", real=True))
        names = {sp.Symbol("y", real=True): "y"}
        text = Printer(dtype, where, names, "double").expr(e).text
        name = p.helper or p.c
        assert text.startswith(name + suffix + "("), (p.name, text)


def test_helpers_are_emitted_only_when_used_in_the_tables_order():
    hs = helper_functions({"softplus", "sigmoid"}, "float32")
    assert [h["name"] for h in hs] == ["gc_sigmoidf", "gc_softplusf"]
    assert any("expf(" in line for line in hs[0]["body"])
    assert helper_functions(set(), "float64") == []


def _unary_model(p):
    m = gc.Model(f"prim_{p.name}")
    xi, y = m.input("x", 3), m.target("y")
    a, b = m.param("a", init=0.5), m.param("b", init=0.1)
    f = getattr(gc, p.api)
    u = m.define("u", 3, lambda i: a * xi[i] + b)
    h = m.output("h", f(u))
    m.loss((h.sum() - y) ** 2)
    return m


@pytest.mark.parametrize("p", API, ids=lambda p: p.name)
def test_each_api_primitive_computes_its_numpy_reference_and_its_gradient(p):
    mod = gc.compile_model(_unary_model(p))
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(0.05, 0.9, (7, 3)), rng.normal(size=7)
    params = {"a": np.array(0.7), "b": np.array(-0.2)}
    out = mod.forward(params, x=X)["h"]
    np.testing.assert_allclose(out, p.numpy(0.7 * X - 0.2), rtol=1e-13)
    L, g = mod.loss_and_grad(params, x=X, y=Y)
    coords = all_coords(params)
    assert_close(pick(g, coords), central_differences(mod, params, {"x": X, "y": Y}, coords), 1e-6,
                 what=f"{p.name}: gradient vs central differences")

    def f(t):      # gradc's own functions written out in plain SymPy for the oracle
        e = p.sympy(t)
        return e.rewrite(sp.exp) if type(e).__module__.startswith("gradc") else e

    def per_sample(P, d):
        return (sum(f(P["a"][()] * d["x"][i] + P["b"][()]) for i in range(3)) - d["y"]) ** 2
    L_ref, g_ref = sympy_oracle(mod.param_shapes, per_sample, params, {"x": X, "y": Y})
    assert L == pytest.approx(L_ref, rel=1e-12)
    assert_close(pick(g, coords), pick(g_ref, coords), 1e-11, what=f"{p.name}: gradient vs sympy.diff")
