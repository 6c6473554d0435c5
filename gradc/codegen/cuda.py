"""Render a program and its gradient as CUDA C++: one kernel per loop nest, host launchers, and a C ABI.

The stages are the C target's (``codegen.c``): the same printer, the same statements. Only the
schedule differs. Every per-sample value lives on the device with the sample innermost across the
whole batch, ``T[i * n + b]``, so consecutive threads (consecutive samples) touch consecutive
addresses. Each loop nest becomes kernels whose threads never communicate:

* a forward stage: one thread per (sample, output element), the reduction in the thread;
* a backward update of a per-sample adjoint: one thread per (sample, element it owns);
* a sum over the batch (a parameter's gradient, the loss): a two-level reduction in a fixed
  order: one thread per (chunk of GC_CHUNK samples, element) writes a partial sum, then one thread
  per element adds the partials chunk by chunk. No atomics: two runs give identical bits;
* a scatter through an int32 input (an embedding row): one thread per column it owns, the
  samples in order.

Because no kernel needs its threads to run together, the same source also builds as plain C++ with
``-DGRADC_CUDA_EMULATE``: each launch becomes a loop over the threads. The tests run that build on
the CPU against the C target; a GPU runs the real one.

Example::

    src = render_cuda(prog, differentiate(prog), "float32")
    open("mnist.cu", "w").write(src.c)
"""
from dataclasses import dataclass

import sympy as sp

from .. import abi
from ..autodiff import adjoint_symbol
from ..ir import INT, unflat
from ..simplify import cse_block, live_stages
from . import kir
from .c import DTYPES, Source, Builder, helper_functions, stage_comment, templates
from .kir import (Accumulate, AllSamples, Assign, ChunkLoop, Decl, Decode, Expr, Loop, MaxInto, OverChunks,
                  Range, Var, lit)

CHUNK = 32          # samples per partial sum in a reduction over the batch


@dataclass
class Kernel:
    """One kernel: ``items`` threads (a C expression), each finding its indices by ``decode`` and
    running ``body`` (kernel-IR statements) over the pointers ``decls``."""
    name: str
    comment: str
    items: str              # C expression: the number of threads
    decode: Decode          # how a thread's indices follow from t_
    body: tuple             # kernel-IR statements
    decls: list = None      # (type, name, init) pointers the body uses


class _CudaBuilder(Builder):
    """Plans the kernels of one function."""
    pad_planes = False      # a thread per sample and element: no planes of lanes to pad

    def __init__(self, prog, grad, dtype):
        super().__init__(prog, grad, dtype)
        self.kernels = []
        self.max_partial = 1      # elements of the widest reduction over the batch
        self._forward_done = {}

    def outer_updates(self, adj):
        """None here: the C target's rank-1 kernels (and the sample-major mirrors they need in the
        workspace) have no counterpart; a weight gradient is a reduction kernel like any other."""
        return []

    # ---- helpers -------------------------------------------------------
    def _kernel(self, comment, items, decode, body):
        k = Kernel(f"{self.model}_k{len(self.kernels)}", comment, items, decode, tuple(body))
        self.kernels.append(k)
        return k

    @staticmethod
    def _decode(vars_, per_sample, chunked=False):
        """How the thread index t_ splits into the sample b (fastest), the chunk ch_ and the loop
        variables ``vars_`` [(C name, extent)], the first slowest."""
        return Decode(tuple(([("b", "n")] if per_sample else []) + ([("ch_", "nch_")] if chunked else [])
                            + list(reversed(vars_))))

    @staticmethod
    def _count(vars_, per_sample, chunked=False):
        terms = [str(ext) for _, ext in vars_]
        if per_sample:
            terms.append("(long)n")
        if chunked:
            terms.append("(long)nch_")
        return " * ".join(["1L"] + terms)

    @staticmethod
    def _loops(vars_, stmts):
        """``stmts`` in sequential loops over vars_ [(name, extent)], the first outermost."""
        if not vars_:
            return list(stmts)
        return [Loop(tuple(Range(v, ext) for v, ext in vars_), tuple(stmts))]

    # ---- forward -------------------------------------------------------
    def forward(self, st):
        """The kernel of a forward stage (planned once, launched by every function that needs it)."""
        done = self._forward_done.get(st.name)
        if done is not None:
            return done
        k = self._forward(st)
        self._forward_done[st.name] = k
        return k

    def _forward(self, st):
        t = self.prog.tensors[st.name]
        lanes = st.scope == "sample"
        red_vars = [k for k, _ in st.red]
        pr, names = self.printer(list(st.idx) + red_vars)
        comment = stage_comment(st, self.c, names)
        if st.elements is not None:
            temps, vals = cse_block(st.elements)
            outer, _ = self._temps(pr, names, temps, [])
            body = outer + [Assign(pr.ref(st.name, unflat(e, t.shape)), pr.expr(v)) for e, v in enumerate(vals)]
            return self._kernel(comment, self._count([], lanes), self._decode([], lanes), body)
        outs = [(names[k], n) for k, n in zip(st.idx, t.shape)]
        temps, (val,) = cse_block([st.body])
        outer, inner = self._temps(pr, names, temps, red_vars)
        target = pr.ref(st.name, st.idx)
        if st.op == "assign":
            body = outer + [Assign(target, pr.expr(val))]
        else:
            init = lit("0") if st.op == "sum" else self._max_init()
            step = [Accumulate(lit("acc_"), pr.expr(val))] if st.op == "sum" else \
                [Decl("v_", pr.expr(val)), MaxInto("acc_", lit("v_"))]
            body = outer + [Var("acc_", init)] + \
                self._loops([(names[k], n) for k, n in st.red], inner + step) + [Assign(target, lit("acc_"))]
        return self._kernel(comment, self._count(outs, lanes), self._decode(outs, lanes), body)

    # ---- backward ------------------------------------------------------
    def backward(self, adj):
        st = adj.stage
        t = self.prog.tensors[st.name]
        red_vars = [k for k, _ in st.red]
        pr, names = self.printer(list(st.idx) + red_vars)
        if st.elements is not None:
            loops = []
        else:
            loops = list(zip(st.idx, t.shape)) + list(st.red)
        groups = {}
        for u in adj.updates:
            groups.setdefault(u.tensor, []).append(u)
        lanes = st.scope == "sample"
        for tensor, ups in groups.items():
            self._update_kernels(st, tensor, ups, loops, pr, names, lanes)

    def _owned(self, ups, loop_syms):
        """Loop variables that are a whole index component, at the same position, in every update:
        threads that differ in one of them write different elements."""
        owned = []
        for pos, comp in enumerate(ups[0].idx):
            comp = sp.sympify(comp)
            if comp in loop_syms and comp not in owned and \
                    all(len(u.idx) > pos and sp.sympify(u.idx[pos]) == comp for u in ups):
                owned.append(comp)
        return owned

    def _simple(self, ups, loop_syms):
        """One update whose index is loop variables (distinct) and constants: its target is fixed
        for a thread that owns those variables."""
        if len(ups) != 1:
            return False
        comps = [sp.sympify(c) for c in ups[0].idx]
        syms = [c for c in comps if not c.is_Integer]
        return all(c in loop_syms for c in syms) and len(set(syms)) == len(syms)

    def _update_kernels(self, st, tensor, ups, loops, pr, names, lanes):
        loop_syms = [k for k, _ in loops]
        adj = adjoint_symbol(tensor).name
        blocked = self.blocked(tensor)
        temps, vals = cse_block([u.expr for u in ups])
        for sym, _ in temps:
            names.setdefault(sym, f"c{len(names)}")
        decls = [Decl(names[sym], pr.expr(e), "int" if isinstance(e, sp.logic.boolalg.Boolean) else "")
                 for sym, e in temps]
        adds = [Accumulate(pr.ref(adj, u.idx), pr.expr(v)) for u, v in zip(ups, vals)]
        label = stage_comment(st, self.c, {k: names[k] for k in loop_syms if k in names},
                              f"backward into {self.c.get(tensor, tensor)}")
        simple = self._simple(ups, loop_syms)
        owned = self._owned(ups, loop_syms)
        rest = [(names[k], n) for k, n in loops if k not in owned]
        own = [(names[k], n) for k, n in loops if k in owned]
        if blocked:
            # a per-sample adjoint: the sample's thread owns its elements
            if simple:
                body = [Var("acc_", lit("0"))] + self._loops(rest, decls + [Accumulate(lit("acc_"), adds[0].value)]) + \
                    [Accumulate(adds[0].target, lit("acc_"))]
                self._kernel(label, self._count(own, True), self._decode(own, True), body)
            else:
                self._kernel(label + " (sample by sample)", self._count(own, True), self._decode(own, True),
                             self._loops(rest, decls + adds))
            return
        if lanes and simple:
            # a sum over the batch into a fixed element: partial sums per chunk, then over chunks
            E = 1
            for _, n in own:
                E *= n
            self.max_partial = max(self.max_partial, E)
            e_expr = " + ".join([f"{v} * {_stride(own, j)}" for j, (v, _) in enumerate(own)]) or "0"
            body1 = [Var("acc_", lit("0")),
                     ChunkLoop(tuple(self._loops(rest, decls + [Accumulate(lit("acc_"), adds[0].value)]))),
                     Assign(Expr(f"part_[(long)ch_ * {E} + ({e_expr})]", {"part_"}), lit("acc_"))]
            self._kernel(label + ": partial sums over chunks of samples", self._count(own, False, True),
                         self._decode(own, False, True), body1)
            body2 = [Var("acc_", lit("0")), OverChunks(Expr(f"part_[(long)c_ * {E} + ({e_expr})]", {"part_"})),
                     Accumulate(adds[0].target, lit("acc_"))]
            self._kernel(label + ": the chunks in order", self._count(own, False), self._decode(own, False), body2)
            return
        # a scatter (an index read through an int32 input) or an irregular index: threads own what
        # they can, the samples and the other loops run in order inside each
        body = self._loops(rest, decls + adds)
        if lanes:
            body = [AllSamples(tuple(body))]
        self._kernel(label + (" (samples in order)" if lanes else ""), self._count(own, False),
                     self._decode(own, False), body)

    # ---- the functions -------------------------------------------------
    def plan(self, roots, backward):
        """Kernels of one function, in launch order, by phase."""
        prog = self.prog
        live = live_stages(prog, roots)
        phases = {"batch": [self.forward(s) for s in live if s.scope == "batch"],
                  "sample": [self.forward(s) for s in live if s.scope == "sample"]}
        phases["sample_bwd"], phases["batch_bwd"] = [], []
        if backward:
            for a in self.grad.adjoints:
                if a.stage.scope == "sample":
                    start = len(self.kernels)
                    self.backward(a)
                    phases["sample_bwd"] += self.kernels[start:]
            for a in self.grad.adjoints:
                if a.stage.scope == "batch":
                    start = len(self.kernels)
                    self.backward(a)
                    phases["batch_bwd"] += self.kernels[start:]
        return phases


def _stride(own, j):
    s = 1
    for _, n in own[j + 1:]:
        s *= n
    return s


def render_cuda(prog, grad, dtype="float64"):
    """Render ``prog`` (with its ``grad``) as CUDA source (``.c`` holds the .cu text), header and cffi cdef."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    B = _CudaBuilder(prog, grad, dtype)
    M = B.model
    c = B.c
    funcs = {}
    for key, roots, backward in (("forward", prog.outputs, False), ("loss", [prog.loss, prog.reg], False),
                                 ("loss_grad", [prog.loss, prog.reg], True)):
        funcs[key] = B.plan(roots, backward)
    kernels = B.kernels
    all_decls = B.decls(None, True)
    for k in kernels:
        used = kir.arrays(k.body)
        k.decls = [d for d in all_decls if d[1] in used]
    L = B.layout
    outputs = [dict(name=c[o], size=prog.tensors[o].size, offset=L["values"][o].c(), blocked=B.blocked(o))
               for o in prog.outputs]
    adj_off = dict(L["sample_adj"], **L["batch_adj"])
    staged = []         # host inputs and targets, copied to the device sample-major, then gathered
    real_off, int_off = 0, 0
    for t in prog.inputs + prog.targets:
        pre = "in_" if t.kind == "input" else "tg_"
        is_int = t.dtype == INT
        staged.append(dict(arg=pre + c[t.name], dst=("X_" if t.kind == "input" else "Y_") + c[t.name],
                           size=t.size, int=is_int, off=int_off if is_int else real_off,
                           lanes=L["lanes_in"][t.name].c(), kind=t.kind,
                           ctype="const int32_t" if is_int else f"const {M}_real",
                           bounds=prog.int_bounds.get(t.name)))
        if is_int:
            int_off += t.size
        else:
            real_off += t.size
    loss_st = prog.stage(prog.loss)
    ctx = dict(
        M=M, MU=M.upper(), real=B.real_t, dtype=dtype, suffix="f" if dtype == "float32" else "",
        lit=(lambda x: f"{x}F" if dtype == "float32" else x), chunk=CHUNK,
        kernels=kernels, f=funcs, params=L["params"], n_params=L["n_params"], ws=L["ws"], ints=L["ints"],
        sample_adj=L["sample_adj_range"], batch_adj=L["batch_adj_range"], max_partial=B.max_partial,
        staged=staged, stage_reals=real_off, stage_ints=int_off, outputs=outputs,
        out_reals=sum(o["size"] for o in outputs),
        inputs=[s for s in staged if s["kind"] == "input"], targets=[s for s in staged if s["kind"] == "target"],
        loss="V_" + c[prog.loss], loss_adj="D_" + c[prog.loss], loss_per_sample=loss_st.scope == "sample",
        reg=("V_" + c[prog.reg]) if prog.reg else None, reg_adj=("D_" + c[prog.reg]) if prog.reg else None,
        helpers=helper_functions(B.helpers, dtype), errors=abi.error_codes("cuda"), loss_off=L["values"][prog.loss].c(), loss_adj_off=adj_off[prog.loss].c(),
        reg_off=L["values"][prog.reg].c() if prog.reg else None,
        reg_adj_off=adj_off[prog.reg].c() if prog.reg else None,
    )
    env = templates()
    cu = env.get_template("cuda/model.cu.j2").render(ctx)
    h = env.get_template("cuda/model.h.j2").render(ctx)
    cdef = env.get_template("cuda/cdef.j2").render(ctx)
    layout = dict(L, c_names=c, prefix=M, max_partial=B.max_partial, stage_reals=real_off, stage_ints=int_off)
    return Source(M, cu, h, cdef, layout)
