"""The C printer alone: a SymPy expression in, C text (and the arrays it reads) out.

One line per rule, no compiler run: the fast tests below the end-to-end ones.
"""
import pytest
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from gradc.codegen.c import Printer
from gradc.functions import Sigmoid, Softplus

x, y = sp.symbols("x y", real=True)
W = sp.IndexedBase(sp.Symbol("W", real=True))
k = sp.Symbol("k", integer=True)
WHERE = {"x": ("X_x", (), "real", True, None), "y": ("P_y", (), "real", False, None),
         "W": ("P_W", (3, 4), "real", False, None), "u": ("X_u", (), "int32", True, None)}


def show(e, dtype="float64", names=None):
    return Printer(dtype, WHERE, names or {k: "l1"}, "double" if dtype == "float64" else "float").expr(e)


@pytest.mark.parametrize("expr, text", [
    (x + y, "X_x[b] + P_y[0]"),
    (x ** 2, "(X_x[b]*X_x[b])"),
    (x ** -3, "(1.0/(X_x[b]*X_x[b]*X_x[b]))"),
    (sp.sqrt(x), "sqrt(X_x[b])"),
    (sp.Abs(x), "fabs(X_x[b])"),
    (sp.Max(0, x), "gc_max(0, X_x[b])"),
    (sp.Min(x, y, 1), "gc_min(1, gc_min(X_x[b], P_y[0]))"),
    (Sigmoid(x), "gc_sigmoid(X_x[b])"),
    (Softplus(y), "gc_softplus(P_y[0])"),
    (log1p(x), "log1p(X_x[b])"),
    (expm1(x), "expm1(X_x[b])"),
    (sp.pi * x, "3.1415926535897932*X_x[b]"),
    (W[2, k] * x, "X_x[b]*P_W[(2)*4 + l1]"),
    (sp.Piecewise((x, x > 0), (0, True)), "((X_x[b] > 0) ? (X_x[b]) : (0))"),
])
def test_printer_prints(expr, text):
    assert show(expr).text == text


@pytest.mark.parametrize("expr, text", [
    (sp.exp(x), "expf(X_x[b])"),
    (Sigmoid(x), "gc_sigmoidf(X_x[b])"),
    (log1p(x), "log1pf(X_x[b])"),
    (x ** -2, "(1.0F/(X_x[b]*X_x[b]))"),
])
def test_printer_prints_float32_functions_with_their_suffix(expr, text):
    assert show(expr, "float32").text == text


def test_printer_records_the_arrays_an_expression_reads():
    assert show(W[0, k] * x + y).names == {"P_W", "X_x", "P_y"}


def test_printer_records_an_index_input_read_inside_a_subscript():
    u = sp.Symbol("u", integer=True)
    assert show(W[u, k]).names == {"P_W", "X_u"}


def test_printer_records_the_helper_functions_it_prints():
    p = Printer("float64", WHERE, {}, "double")
    p.expr(Sigmoid(x) + sp.Max(x, y))
    assert p.helpers == {"sigmoid", "max"}


def test_printer_ref_is_an_element_of_a_block_of_samples():
    p = Printer("float64", WHERE, {k: "l1"}, "double")
    assert p.ref("W", (1, k)).text == "P_W[(1)*4 + l1]"
    assert p.ref("x", ()).text == "X_x[b]"


def test_printer_drops_a_leading_zero_row():
    assert show(W[0, k]).text == "P_W[l1]"
