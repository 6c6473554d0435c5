"""Lowering seen as text: the stages a model becomes (``str(Stage)``), one model per rule.

Fast: no differentiation and no compiler. Example of what they pin::

    z[i] = sum_{k<2} W[i, k]*x[k]      # a dense layer's reduction stage
    h[i] = Max(0, b[i] + z[i])         # its elementwise epilogue
"""
import re

import sympy as sp

import gradc as gc
from gradc.ir import lower


def stages(m):
    """The program's stages as text, with the front end's generated index names made readable."""
    return [re.sub(r"i\.\d+(\.\w+)?", "i", str(s)) for s in lower(m.spec()).stages]


def test_a_dense_layer_splits_into_a_reduction_and_an_elementwise_stage():
    m = gc.Model("d")
    x, y = m.input("x", 2), m.target("y")
    W, b = m.param("W", (3, 2)), m.param("b", 3)
    h = m.define("h", 3, gc.relu(W @ x + b))
    m.loss((h.sum() - y) ** 2)
    text = stages(m)
    assert any(re.fullmatch(r"~r\d+\[i\] = sum_\{i<2\} W\[i, i\]\*x\[i\]", s) for s in text), text
    assert "h[i] = Max(0, b[i] + ~r1[i])" in text, text


def test_a_scalar_model_is_one_stage_of_rank_zero():
    m = gc.Model("s")
    x, y = m.input("x"), m.target("y")
    a = m.param("a")
    m.loss((a * x - y) ** 2)
    (loss,) = stages(m)
    assert loss.startswith("~loss") and "a*x - y" in loss.replace("(", "").replace(")", "")


def test_a_parameter_only_regularizer_is_a_batch_stage():
    m = gc.Model("r")
    x = m.input("x")
    a = m.param("a")
    m.loss(a * x)
    m.regularize(a ** 2)
    prog = lower(m.spec())
    assert {s.name: s.scope for s in prog.stages}[prog.reg] == "batch"


def test_a_stage_records_the_line_where_its_expression_was_written():
    m = gc.Model("w")
    x = m.input("x", 2)
    W, V = m.param("W", (3, 2)), m.param("V", (1, 3))
    h = gc.relu(W @ x)                          # written here...
    line = h.where[1]
    m.loss((V @ h)[0])                          # ...and made a stage here, where it is consumed
    prog = lower(m.spec())
    relu = [s for s in prog.stages if "Max" in str(s.body)]
    assert relu and relu[0].where[1] == line


def test_logsumexp_lowers_to_a_max_stage_and_a_shifted_sum():
    m = gc.Model("l")
    z = m.input("z", 4)
    m.loss(gc.logsumexp(z) * m.param("a"))
    text = stages(m)
    assert any(s.startswith("~") and "max_{i<4}" in s for s in text), text
    assert any("exp(" in s and "sum_{i<4}" in s for s in text), text


def test_elementwise_stage_of_a_tensor_expression_keeps_its_body_symbolic():
    m = gc.Model("e")
    x = m.input("x", 3)
    h = m.define("h", 3, gc.tanh(x) * 2)
    m.loss(h.sum() * m.param("a"))
    assert "h[i] = 2*tanh(x[i])" in stages(m)
    assert isinstance(lower(m.spec()).stage("h").body, sp.Expr)
