"""The kernel IR: each node kind printed alone by each target's template (golden snippets), and the
arrays a node names, which is how a function knows what to declare.

Each snippet is the whole text of one node; a change to a template's printing of a kind shows here
first, before any end-to-end test."""
import pytest

from gradc.codegen import kir
from gradc.codegen.c import templates
from gradc.codegen.kir import (Acc, Accumulate, AllSamples, Assign, ChunkLoop, Decl, Expr, LaneLoop, LaneReduction,
                               LaneSum, Loop, MaxInto, Nest, OverChunks, RankOneUpdate, Range, SampleLoop, Var, lit)

G = Expr("G_W[l0]", {"G_W"})
D = Expr("D_z[(l0)*GC_L + b]", {"D_z"})
X = Expr("X_x[(l1)*GC_L + b]", {"X_x"})


def c(node):
    return templates().get_template("c/kir.j2").make_module({"M": "m"}).stmt(node, 0)


def cu(node):
    return templates().get_template("cuda/kir.j2").make_module({"M": "m"}).stmt(node, 0)


@pytest.mark.parametrize("node, text", [
    (Decl("c0", X), "const m_real c0 = X_x[(l1)*GC_L + b];\n"),
    (Var("acc", lit("0")), "m_real acc = 0;\n"),
    (Assign(G, lit("acc")), "G_W[l0] = acc;\n"),
    (Accumulate(G, D), "G_W[l0] += D_z[(l0)*GC_L + b];\n"),
    (MaxInto("acc", lit("v")), "if (v > acc) acc = v;\n"),
    (Loop((Range("l0", 4), Range("l1", 8, 2)), (Accumulate(G, X),)),
     "for (int l0 = 0; l0 < 4; ++l0) {\n    for (int l1 = 0; l1 < 8; l1 += 2) {\n"
     "        G_W[l0] += X_x[(l1)*GC_L + b];\n    }\n}\n"),
    (LaneLoop((Assign(D, X),)),
     "GC_SIMD(omp simd)\nfor (int b = 0; b < GC_L; ++b) {\n    D_z[(l0)*GC_L + b] = X_x[(l1)*GC_L + b];\n}\n"),
    (LaneReduction((Acc("acc0", "0"),), (), (Range("l1", 2),), (Accumulate(lit("acc0"), X),), (Assign(D, lit("acc0")),)),
     "GC_SIMD(omp simd)\nfor (int b = 0; b < GC_L; ++b) {\n    m_real acc0 = 0;\n"
     "    for (int l1 = 0; l1 < 2; ++l1) {\n        acc0 += X_x[(l1)*GC_L + b];\n    }\n"
     "    D_z[(l0)*GC_L + b] = acc0;\n}\n"),
    (LaneSum(("r0",), (G,), (Accumulate(lit("r0"), D),)),
     "{\n    m_real r0 = 0;\n    GC_SIMD(omp simd reduction(+:r0))\n    for (int b = 0; b < GC_L; ++b) {\n"
     "        r0 += D_z[(l0)*GC_L + b];\n    }\n    G_W[l0] += r0;\n}\n"),
    (SampleLoop((Range("l0", 3),), (Accumulate(G, D),)),
     "for (int b = 0; b < nb; ++b) {\n    for (int l0 = 0; l0 < 3; ++l0) {\n"
     "        G_W[l0] += D_z[(l0)*GC_L + b];\n    }\n}\n"),
    (Nest("z[l0] = ...  (model.py:3)", (Range("l0", 3),), body=(Assign(D, X),)),
     "{ /* z[l0] = ...  (model.py:3) */\n    for (int l0 = 0; l0 < 3; ++l0) {\n"
     "        D_z[(l0)*GC_L + b] = X_x[(l1)*GC_L + b];\n    }\n}\n"),
])
def test_c_prints_each_kind(node, text):
    assert c(node) == text


def test_c_prints_a_call_of_a_shared_function_and_knows_what_it_touches():
    from gradc.codegen.kir import Call
    call = Call("m_sample_forward_loss", ("params", "ws"), frozenset({"V_h", "X_x"}))
    assert c(call) == "m_sample_forward_loss(params, ws);\n"
    assert kir.arrays([call]) == {"V_h", "X_x"}


def test_c_prints_a_rank_one_update_without_a_unit_coefficient():
    upd = RankOneUpdate(src="X_x", mirror="M_x", d="D_z", grad="G_W", rows=4, cols=2, unroll=2, coef="")
    text = c(upd)
    assert "G_W[(i + 1) * 2 + k] += a1;" in text and "1 * a" not in text
    assert "M_x[b * 2 + k] = X_x[k * GC_L + b];" in text
    assert c(RankOneUpdate("X_x", "M_x", "D_z", "G_W", 4, 2, 2, "0.5")).count("+= 0.5 * a") == 2


@pytest.mark.parametrize("node, text", [
    (Assign(G, lit("acc_")), "GC_W(G_W[l0]) = acc_;\n"),
    (Accumulate(lit("acc_"), D), "acc_ += D_z[(l0)*GC_L + b];\n"),
    (ChunkLoop((Accumulate(lit("acc_"), D),)),
     "for (int b = ch_ * GC_CHUNK; b < n && b < (ch_ + 1) * GC_CHUNK; ++b) {\n    acc_ += D_z[(l0)*GC_L + b];\n}\n"),
    (AllSamples((Accumulate(G, D),)), "for (int b = 0; b < n; ++b) {\n    GC_W(G_W[l0]) += D_z[(l0)*GC_L + b];\n}\n"),
    (OverChunks(Expr("part_[c_]", {"part_"})), "for (int c_ = 0; c_ < nch_; ++c_) acc_ += part_[c_];\n"),
])
def test_cuda_prints_each_kind_writes_through_the_race_check(node, text):
    assert cu(node) == text


def test_nodes_list_the_arrays_they_read_and_write():
    nest = Nest("n", (Range("l0", 3),), pre=(Decl("c0", X),), body=(LaneSum(("r0",), (G,), (Accumulate(lit("r0"), D),)),))
    assert nest.names() == {"X_x", "G_W", "D_z"}
    assert kir.arrays([nest, Assign(Expr("V_h[b]", {"V_h"}), lit("0"))]) == {"X_x", "G_W", "D_z", "V_h"}
    assert RankOneUpdate("X_x", "M_x", "D_z", "G_W", 4, 2, 2, "").names() == {"X_x", "M_x", "D_z", "G_W"}


def test_nodes_are_immutable_and_compare_by_value():
    a, b = Accumulate(G, D), Accumulate(Expr("G_W[l0]", {"G_W"}), Expr("D_z[(l0)*GC_L + b]", {"D_z"}))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.target = X


def test_nodes_tell_what_they_write_from_what_they_read():
    from gradc.codegen.kir import Expr
    store = Assign(Expr("V_h[b]", {"V_h"}, "V_h"), X)
    add = Accumulate(Expr("G_E[(X_u[b])*4 + l0]", {"G_E", "X_u"}, "G_E"), D)
    assert store.writes() == {"V_h"} and store.reads() == {"X_x"}
    assert add.writes() == {"G_E"} and add.reads() == {"G_E", "X_u", "D_z"}
    loop = LaneLoop((store, add))
    assert loop.writes() == {"V_h", "G_E"} and loop.reads() == {"X_x", "G_E", "X_u", "D_z"}


def test_a_built_nest_writes_its_stage_and_reads_its_operands():
    import gradc as gc
    from gradc.autodiff import differentiate
    from gradc.codegen.c import Builder
    from gradc.ir import lower
    m = gc.Model("t")
    x, y = m.input("x", 2), m.target("y")
    W = m.param("W", (3, 2))
    h = m.define("h", 3, gc.tanh(W @ x))
    m.loss((h.sum() - y) ** 2)
    prog = lower(m.spec())
    B = Builder(prog, differentiate(prog), "float64")
    nest = B.forward_nest(prog.stage("h"))
    assert nest.writes() == {"V_h"} and "V_h" not in nest.reads()
