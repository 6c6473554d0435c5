"""Render a program and its gradient as one C99 translation unit and header.

Python decides *what* each loop nest computes (statements whose right-hand
sides are printed SymPy expressions); ``templates/c/*.j2`` decide how the
code is laid out. Output is byte-identical from run to run.

Example::

    src = render(prog, differentiate(prog), "float64")
    open("moons.c", "w").write(src.c)
"""
import re
from dataclasses import dataclass
from importlib import resources

import jinja2
import numpy as np
import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.printing.c import C99CodePrinter

from ..autodiff import adjoint_symbol
from ..ir import INT, reads, unflat
from ..simplify import cse_block, live_stages
from .names import Namer, ident

DTYPES = {"float64": "double", "float32": "float"}


@dataclass
class Source:
    name: str       # the C prefix of every symbol
    c: str          # NAME.c
    h: str          # NAME.h
    cdef: str       # declarations for cffi
    layout: dict    # offsets and sizes, for the Python module


class Printer(C99CodePrinter):
    """C99 printer that knows where each tensor lives.

    ``where[name]`` is (pointer, shape, dtype); loop variables and temporaries
    print under the names in ``names``.
    """

    def __init__(self, dtype, where, names, real_t):
        settings = {"type_aliases": {real: float32}} if dtype == "float32" else {}
        super().__init__(settings)
        self.where = where
        self.names = names
        self.real_t = real_t
        self.suffix = "f" if dtype == "float32" else ""

    def flat(self, name, idx):
        ptr, shape, _, blocked = self.where[name]
        expr = ""
        for d, e in enumerate(idx):
            term = self.index(sp.sympify(e))
            expr = term if d == 0 else f"({expr})*{shape[d]} + {term}"
        if blocked:        # a block of samples, the sample innermost
            return f"{ptr}[b]" if not shape else f"{ptr}[({expr})*GC_L + b]"
        return f"{ptr}[0]" if not shape else f"{ptr}[{expr}]"

    def index(self, e):
        if e.is_Integer:
            return str(int(e))
        if isinstance(e, sp.Indexed) or (isinstance(e, sp.Symbol) and e.name in self.where):
            return self.read(e, cast=False)
        return self._print(e)

    def read(self, e, cast=True):
        if isinstance(e, sp.Indexed):
            name, idx = e.base.label.name, e.indices
        else:
            name, idx = e.name, ()
        s = self.flat(name, idx)
        if cast and self.where[name][2] == INT:
            return f"(({self.real_t}){s})"
        return s

    def _print_Indexed(self, e):
        return self.read(e)

    def _print_Symbol(self, e):
        if e in self.names:
            return self.names[e]
        if e.name in self.where:
            return self.read(e)
        raise KeyError(f"no C name for symbol {e}")

    _print_Dummy = _print_Symbol

    # M_PI and M_E are not C99, and would be doubles in a float32 build: print the number
    def _print_NumberSymbol(self, e):
        return self._print(sp.Float(e.evalf(20), 20))

    _print_Pi = _print_Exp1 = _print_EulerGamma = _print_GoldenRatio = _print_Catalan = _print_NumberSymbol

    # derivatives of nested Max/Min can hold boolean-valued Piecewise; C99 needs no stdbool for 1/0
    def _print_BooleanTrue(self, e):
        return "1"

    def _print_BooleanFalse(self, e):
        return "0"

    def _print_Pow(self, e):
        b, x = e.args
        if x.is_Integer and 2 <= int(x) <= 4:
            f = self.parenthesize(b, 70)
            return "(" + "*".join([f] * int(x)) + ")"
        if x.is_Integer and -4 <= int(x) <= -2:
            f = self.parenthesize(b, 70)
            one = "1.0F" if self.suffix else "1.0"
            return f"({one}/(" + "*".join([f] * -int(x)) + "))"
        return super()._print_Pow(e)

    def _print_Piecewise(self, e):
        out = self._print(e.args[-1].expr)
        if e.args[-1].cond != True:  # noqa: E712 (a SymPy boolean)
            raise ValueError("a Piecewise needs a final (value, True) branch")
        for val, cond in reversed(e.args[:-1]):
            out = f"(({self._print(cond)}) ? ({self._print(val)}) : ({out}))"
        return out

    def _print_Abs(self, e):
        # always the real fabs: an integer-valued argument (an int32 input) is cast to real, and C's
        # int abs() would need <stdlib.h>
        return f"fabs{self.suffix}({self._print(e.args[0])})"

    def _print_Sigmoid(self, e):
        return f"gc_sigmoid{self.suffix}({self._print(e.args[0])})"

    def _print_Softplus(self, e):
        return f"gc_softplus{self.suffix}({self._print(e.args[0])})"

    def _print_Max(self, e):
        return self._minmax(e, ">")

    def _print_Min(self, e):
        return self._minmax(e, "<")

    def _minmax(self, e, op):
        # a ternary, not fmax: the value of the first argument wins ties, as
        # in the derivative rule, and the code does not depend on libm's fmax
        args = [self._print(a) for a in e.args]
        out = args[-1]
        for a in reversed(args[:-1]):
            out = f"gc_{'max' if op == '>' else 'min'}{self.suffix}({a}, {out})"
        return out


_env = None


def _templates():
    global _env
    if _env is None:
        loader = jinja2.FunctionLoader(lambda n: resources.files("gradc.templates").joinpath(n).read_text())
        _env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return _env


_digest = []


def template_digest():
    """A hash of everything that generates code: the C templates and gradc's own generator
    modules, so that a changed generator never loads an artifact the old one made."""
    if _digest:
        return _digest[0]
    import hashlib
    import os
    h = hashlib.sha256()
    for sub in ("c", "cuda"):
        root = resources.files("gradc.templates").joinpath(sub)
        for name in sorted(p.name for p in root.iterdir() if p.name.endswith(".j2")):
            h.update(f"{sub}/{name}".encode() + root.joinpath(name).read_bytes())
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rel in ("model.py", "nn.py", "functions.py", "rewrite.py", "ir.py", "autodiff.py", "simplify.py",
                "build.py", "codegen/c.py", "codegen/cuda.py", "codegen/names.py"):
        with open(os.path.join(pkg, rel), "rb") as f:
            h.update(rel.encode() + f.read())
    _digest.append(h.hexdigest())
    return _digest[0]


ABI_VERSION = 1


LANES = 16     # samples per block; overridable when compiling: -DNAME_LANES=1 for single-sample devices


class _Off:
    """A workspace offset or size: ``const + lanes * per_lane`` (lanes is a C macro)."""

    def __init__(self, const=0, lane=0):
        self.const, self.lane = const, lane

    def __add__(self, o):
        return _Off(self.const + o.const, self.lane + o.lane)

    def c(self):
        if not self.lane:
            return str(self.const)
        lanes = "GC_L" if self.lane == 1 else f"{self.lane} * GC_L"
        return lanes if not self.const else f"{self.const} + {lanes}"

    def at(self, lanes):
        return self.const + self.lane * lanes


class _Builder:
    """Plans the loop nests. Every per-sample tensor is stored for a block of GC_L samples,
    element-major with the sample innermost (``T[i * GC_L + b]``), so each statement runs in
    an innermost loop over the block's samples that the C compiler vectorizes; parameter
    gradients are sums over that loop."""

    def __init__(self, prog, grad, dtype, inference_only=False):
        self.prog, self.grad, self.dtype = prog, grad, dtype
        self.inference_only = inference_only
        self.real_t = DTYPES[dtype]
        names = Namer()
        self.model = ident(prog.name, "model")
        self.rt = self.model + "_real"
        self.c = {t.name: names(t.name) for t in prog.tensors.values()}
        self.layout = self._layout()

    # ---- memory --------------------------------------------------------
    def _size(self, name):
        t = self.prog.tensors[name]
        return _Off(t.size) if t.scope == "batch" else _Off(0, t.size)

    def _layout(self):
        prog = self.prog
        off, params = 0, []
        for t in prog.params:
            params.append(dict(name=t.name, c=self.c[t.name], offset=off, size=t.size, shape=list(t.shape)))
            off += t.size
        # an inference-only build keeps just what the outputs need
        stages = live_stages(prog, prog.outputs) if self.inference_only else prog.stages
        ws, values = _Off(), {}
        for st in stages:
            values[st.name] = ws
            ws = ws + self._size(st.name)
        adj_stages = [] if self.inference_only else [a.stage.name for a in self.grad.adjoints]
        sample_adj, batch_adj = {}, {}
        sample_begin = ws
        for n in adj_stages:
            if prog.tensors[n].scope == "sample":
                sample_adj[n] = ws
                ws = ws + self._size(n)
        sample_end = batch_begin = ws
        for n in adj_stages:
            if prog.tensors[n].scope == "batch":
                batch_adj[n] = ws
                ws = ws + self._size(n)
        batch_end = ws
        mirrors = {}          # sample-major copies of what outer-product updates read
        if not self.inference_only:
            for a in self.grad.adjoints:
                for _, _, r in self.outer_updates(a):
                    if r not in mirrors:
                        mirrors[r] = ws
                        ws = ws + _Off(0, prog.tensors[r].size)
        lanes_in, ints = {}, _Off()
        for t in prog.inputs + prog.targets:     # the block's inputs, gathered sample-innermost
            if t.dtype == INT:
                lanes_in[t.name] = ints
                ints = ints + _Off(0, t.size)
            else:
                lanes_in[t.name] = ws
                ws = ws + _Off(0, t.size)
        return dict(params=params, n_params=off, values=values, sample_adj=sample_adj, batch_adj=batch_adj,
                    sample_adj_range=(sample_begin, sample_end), batch_adj_range=(batch_begin, batch_end),
                    lanes_in=lanes_in, mirrors=mirrors, ws=ws, ints=ints)

    def blocked(self, name):
        t = self.prog.tensors[name]
        return t.kind in ("input", "target") or t.scope == "sample"

    def where(self):
        """Where every tensor and adjoint lives inside a function body: (pointer, shape, dtype, blocked)."""
        prog, L = self.prog, self.layout
        w = {}
        for t in prog.tensors.values():
            pre = {"param": "P_", "input": "X_", "target": "Y_", "stage": "V_"}[t.kind]
            w[t.name] = (pre + self.c[t.name], t.shape, t.dtype, self.blocked(t.name))
        for t in prog.params:
            w[adjoint_symbol(t.name).name] = ("G_" + self.c[t.name], t.shape, t.dtype, False)
        for n in list(L["sample_adj"]) + list(L["batch_adj"]):
            t = prog.tensors[n]
            w[adjoint_symbol(n).name] = ("D_" + self.c[n], t.shape, t.dtype, self.blocked(n))
        return w

    # ---- loop nests ----------------------------------------------------
    def printer(self, loops):
        names = {k: f"l{j}" for j, k in enumerate(loops)}
        return Printer(self.dtype, self.where(), names, self.real_t), names

    def _temps(self, printer, names, temps, red_vars):
        """Split CSE temporaries into those that vary with the reduction loops and those that do not."""
        inner, outer, varying = [], [], set(red_vars)
        for sym, e in temps:
            names[sym] = f"c{len(names)}" if sym not in names else names[sym]
            if e.free_symbols & varying:
                varying.add(sym)
                inner.append(("decl", names[sym], printer.doprint(e)))
            else:
                outer.append(("decl", names[sym], printer.doprint(e)))
        return outer, inner

    def forward_nest(self, st):
        t = self.prog.tensors[st.name]
        red_vars = [k for k, _ in st.red]
        pr, names = self.printer(list(st.idx) + red_vars)
        loops = [(names[k], n, 1) for k, n in zip(st.idx, t.shape)]
        inner = [(names[k], n, 1) for k, n in st.red]
        lanes = st.scope == "sample"

        def block(stmts):     # statements of one sample, run for every sample of the block
            return [("lanes", stmts)] if lanes else stmts
        if st.elements is not None:
            temps, vals = cse_block(st.elements)
            outer, _ = self._temps(pr, names, temps, [])
            body = outer + [("set", pr.flat(st.name, unflat(e, t.shape)), pr.doprint(v))
                            for e, v in enumerate(vals)]
            return dict(loops=[], pre=[], inner=[], body=block(body), post=[],
                        comment=f"{self.c[st.name]} (unrolled)")
        temps, (val,) = cse_block([st.body])
        outer, inner_t = self._temps(pr, names, temps, red_vars)
        target = pr.flat(st.name, st.idx)
        if st.op == "assign":
            return dict(loops=loops, pre=[], inner=[], body=block(outer + [("set", target, pr.doprint(val))]),
                        post=[], comment=self.c[st.name])
        init = "0" if st.op == "sum" else ("-HUGE_VALF" if self.dtype == "float32" else "-HUGE_VAL")
        if lanes:
            U = _unroll(t.shape[0], 8) if st.idx else 1
            return self._lane_reduction(st, pr, names, loops, inner, init, U)
        pre = outer + [("var", "acc", init)]
        if st.op == "sum":
            body = inner_t + [("add", "acc", pr.doprint(val))]
        else:
            body = inner_t + [("decl", "v", pr.doprint(val)), ("max", "acc", "v")]
        return dict(loops=loops, pre=pre, inner=inner, body=body, post=[("set", target, "acc")],
                    comment=f"{self.c[st.name]}: {st.op} over {len(inner)} loop(s)")

    def _lane_reduction(self, st, pr, names, loops, inner, init, U):
        """A per-sample reduction, vectorized along the block's samples with the reduction loops
        inside (outer-loop vectorization): each sample's accumulators stay in registers for the
        whole reduction. With U > 1 the first output loop is unrolled U times and jammed: U
        accumulators share each load of the reduced operand (a register-blocked dot product)."""
        i0 = st.idx[0] if st.idx else None
        accs, pre_t, body, post = [], [], [], []
        red_vars = [k for k, _ in st.red]
        for u in range(U):
            bd = st.body if i0 is None else st.body.xreplace({i0: i0 + u})
            temps, (val,) = cse_block([bd])
            outer, inner_t = self._temps(pr, names, temps, red_vars)
            a = f"acc{u}"
            accs.append((a, init))
            pre_t += outer
            if st.op == "sum":
                body += inner_t + [("add", a, pr.doprint(val))]
            else:
                body += inner_t + [("decl", f"v{u}", pr.doprint(val)), ("max", a, f"v{u}")]
            idx = st.idx if i0 is None else (i0 + u,) + tuple(st.idx[1:])
            post.append(("set", pr.flat(st.name, idx), a))
        if U > 1:
            loops = [(loops[0][0], loops[0][1], U)] + loops[1:]
        how = f", {U} outputs at a time" if U > 1 else ""
        return dict(loops=loops, pre=[], inner=[], body=[("lanes_acc", accs, pre_t, inner, body, post)], post=[],
                    comment=f"{self.c[st.name]}: {st.op} over {len(inner)} loop(s){how}")

    def outer_updates(self, adj):
        """The updates of a per-sample dense layer's adjoint that are outer products,
        dP[i, k] += c * dT[i] * R[k] (T[i] = sum_k P[i, k] * R[k]): these run as
        rank-1 updates over the block, vectorized along k, instead of per-element lane sums."""
        st = adj.stage
        if st.scope != "sample" or st.elements is not None or len(st.idx) != 1 or len(st.red) != 1:
            return []
        (i,), (k, _) = st.idx, st.red[0]
        out = []
        for u in adj.updates:
            if self.blocked(u.tensor) or tuple(u.idx) != (i, k):
                continue
            coef, rest = u.expr.as_coeff_Mul()
            fs = rest.args if isinstance(rest, sp.Mul) else ()
            if len(fs) != 2 or not all(isinstance(f, sp.Indexed) for f in fs):
                continue
            d = [f for f in fs if f.base.label.name == adjoint_symbol(st.name).name and tuple(f.indices) == (i,)]
            r = [f for f in fs if f.base.label.name in self.prog.tensors and tuple(f.indices) == (k,)
                 and self.blocked(f.base.label.name)]
            if len(d) == 1 and len(r) == 1:
                out.append((u, coef, r[0].base.label.name))
        return out

    def backward_nest(self, adj):
        st = adj.stage
        t = self.prog.tensors[st.name]
        red_vars = [k for k, _ in st.red]
        pr, names = self.printer(list(st.idx) + red_vars)
        loops = [] if st.elements is not None else [(names[k], n, 1) for k, n in zip(st.idx, t.shape)]
        inner = [] if st.elements is not None else [(names[k], n, 1) for k, n in st.red]
        # a per-sample reduction's adjoint: U copies of the first output loop share their loads
        U = _unroll(t.shape[0]) if st.scope == "sample" and st.red and st.idx else 1
        if U > 1:
            loops = [(loops[0][0], loops[0][1], U)] + loops[1:]
        outer_ups = self.outer_updates(adj)
        gathered = self.gathered_updates(adj)
        skip = {id(u) for u, _, _ in outer_ups} | {id(u) for u in gathered}
        updates = [(u, {} if U == 1 else {st.idx[0]: st.idx[0] + j}) for j in range(U)
                   for u in adj.updates if id(u) not in skip]
        temps, vals = cse_block([u.expr.xreplace(sub) for u, sub in updates])
        outer, inner_t = self._temps(pr, names, temps, red_vars)
        comment = f"d/d {self.c[st.name]}" + (" (unrolled)" if st.elements is not None else "")
        def idx(u, sub):
            return tuple(sp.sympify(i).xreplace(sub) for i in u.idx)
        if st.scope == "batch":
            stmts = [("add", pr.flat(adjoint_symbol(u.tensor).name, idx(u, sub)), pr.doprint(v))
                     for (u, sub), v in zip(updates, vals)]
            if inner:
                return [dict(loops=loops, pre=outer, inner=inner, body=inner_t + stmts, post=[], comment=comment)]
            return [dict(loops=loops, pre=[], inner=[], body=outer + stmts, post=[], comment=comment)]
        # a per-sample stage: per-sample adjoints are updated lane by lane; adjoints of parameters
        # and of once-per-batch tensors receive the sum over the block's samples
        # (a scatter-add through an int32 input, dE[u, k], goes lane by lane and is never vectorized:
        # two samples of a block may name the same row)
        stmts, sums, scatters = [], [], []
        for (u, sub), v in zip(updates, vals):
            target = pr.flat(adjoint_symbol(u.tensor).name, idx(u, sub))
            if self.blocked(u.tensor):
                stmts.append(("add", target, pr.doprint(v)))
            elif any(reads(sp.sympify(i), self.prog.tensors) for i in u.idx):
                scatters.append(("add", target, pr.doprint(v)))
            else:
                r = f"r{len(sums)}"
                sums.append((r, target))
                stmts.append(("add", r, pr.doprint(v)))
        temps = outer + inner_t
        body = [("lanes_sum", sums, temps + stmts)] if sums else [("lanes", temps + stmts)] if stmts else []
        nests = [self._outer_nest(st, t, u, coef, r) for u, coef, r in outer_ups]
        nests += [self._gather_nest(st, t, u, pr, names) for u in gathered]
        if body:
            nests.append(dict(loops=loops, pre=[], inner=inner, body=body, post=[], comment=comment))
        if scatters:
            # sample by sample, the nest's loops inside: one sample's row is contiguous (vectorized),
            # and each gradient element still receives the samples in order
            nests.append(dict(loops=[], pre=[], inner=[], body=[("lanes_outer", loops + inner, temps + scatters)],
                              post=[], comment=comment + ", scattered sample by sample"))
        return nests

    def gathered_updates(self, adj):
        """Updates of a per-sample adjoint, inside a per-sample reduction's nest, whose target is
        indexed by some of the loop variables and summed over the others (the input gradient of a
        dense layer, dx[k] += dz[i] * W[i, k]): these run with the target's variables outside and
        the sum inside, in registers, instead of a read-modify-write of the target per term."""
        st = adj.stage
        if st.scope != "sample" or not st.red or st.elements is not None:
            return []
        loop_syms = list(st.idx) + [k for k, _ in st.red]
        out = []
        for u in adj.updates:
            comps = [sp.sympify(c) for c in u.idx]
            if self.blocked(u.tensor) and comps and all(c in loop_syms for c in comps) \
                    and len(set(comps)) == len(comps) < len(loop_syms):
                out.append(u)
        return out

    def _gather_nest(self, st, t, u, pr, names):
        ext = dict(zip(st.idx, t.shape))
        ext.update(dict(st.red))
        loop_syms = list(st.idx) + [k for k, _ in st.red]
        comps = [sp.sympify(c) for c in u.idx]
        own = [v for v in loop_syms if v in comps]
        rest = [v for v in loop_syms if v not in comps]
        U = _unroll(ext[own[0]], 8)
        target = adjoint_symbol(u.tensor).name
        accs, pre_t, body, post = [], [], [], []
        for j in range(U):
            sub = {own[0]: own[0] + j}
            temps, (val,) = cse_block([u.expr.xreplace(sub)])
            outer, inner_t = self._temps(pr, names, temps, rest)
            a = f"acc{j}"
            accs.append((a, "0"))
            pre_t += outer
            body += inner_t + [("add", a, pr.doprint(val))]
            post.append(("add", pr.flat(target, tuple(c.xreplace(sub) for c in comps)), a))
        loops = [(names[own[0]], ext[own[0]], U)] + [(names[v], ext[v], 1) for v in own[1:]]
        inner = [(names[v], ext[v], 1) for v in rest]
        return dict(loops=loops, pre=[], inner=[], body=[("lanes_acc", accs, pre_t, inner, body, post)], post=[],
                    comment=f"d/d {self.c[st.name]}: {self.c[u.tensor]}, summed in registers"
                    + (f", {U} at a time" if U > 1 else ""))

    def _outer_nest(self, st, t, u, coef, r):
        """dP[i, k] += coef * dT[i] * R[k] summed over the block: for each sample, U rows of dP
        take a rank-1 update along k from a sample-major copy of R."""
        w = self.where()
        K = self.prog.tensors[r].size
        return dict(outer=dict(
            src=w[r][0], mirror="M_" + self.c[r], K=K, I=t.shape[0], U=_unroll(t.shape[0], 8),
            d=w[adjoint_symbol(st.name).name][0], g=w[adjoint_symbol(u.tensor).name][0],
            coef=pr_number(coef, self.dtype)),
            loops=[], pre=[], inner=[], body=[], post=[],
            comment=f"d/d {self.c[st.name]}: {self.c[u.tensor]} by rank-1 updates over the block")

    # ---- functions -----------------------------------------------------
    def function(self, roots, backward):
        prog = self.prog
        live = live_stages(prog, roots)
        batch = [s for s in live if s.scope == "batch"]
        sample = [s for s in live if s.scope == "sample"]
        f = dict(batch=[self.forward_nest(s) for s in batch], sample=[self.forward_nest(s) for s in sample])
        used = set()
        for st in live:
            used.add(st.name)
            for b in st.bodies():
                used |= {n for n, _, _ in reads(b, prog.tensors)}
        if backward:
            adjs = self.grad.adjoints
            f["sample_bwd"] = [n for a in adjs if a.stage.scope == "sample" for n in self.backward_nest(a)]
            f["batch_bwd"] = [n for a in adjs if a.stage.scope == "batch" for n in self.backward_nest(a)]
            for a in adjs:
                used.add(a.stage.name)
                used |= {u.tensor for u in a.updates}
        f["used"] = used
        return f

    def decls(self, used, backward, outputs=()):
        """Pointer declarations for the tensors a function touches, in a stable order."""
        prog, L = self.prog, self.layout
        out = []
        for p in L["params"]:
            if p["name"] in used:
                out.append(("const " + self.rt, "P_" + p["c"], f"params + {p['offset']}"))
                if backward:
                    out.append((self.rt, "G_" + p["c"], f"grad + {p['offset']}"))
        for st in prog.stages:
            if (st.name in used or st.name in outputs) and st.name in L["values"]:
                out.append((self.rt, "V_" + self.c[st.name], f"ws + {L['values'][st.name].c()}"))
        if backward:
            for kind in ("sample_adj", "batch_adj"):
                for n, off in L[kind].items():
                    out.append((self.rt, "D_" + self.c[n], f"ws + {off.c()}"))
            for n, off in L["mirrors"].items():
                out.append((self.rt, "M_" + self.c[n], f"ws + {off.c()}"))
        for t in prog.inputs + prog.targets:
            if t.name in used:
                pre = "X_" if t.kind == "input" else "Y_"
                off = L["lanes_in"][t.name].c()
                out.append(("int32_t", pre + self.c[t.name], f"wsi + {off}") if t.dtype == INT
                           else (self.rt, pre + self.c[t.name], f"ws + {off}"))
        return out

    def gathers(self, used):
        """Copies of the inputs and targets a function reads into its sample-innermost block buffers."""
        out = []
        for t in self.prog.inputs + self.prog.targets:
            if t.name in used:
                pre = "X_" if t.kind == "input" else "Y_"
                arg = ("in_" if t.kind == "input" else "tg_") + self.c[t.name]
                out.append(dict(dst=pre + self.c[t.name], src=arg, size=t.size))
        return out

    def int_checks(self, used):
        """Range checks of int32 inputs used as indices: one loop when every element has one bound."""
        out = []
        for name, bounds in self.prog.int_bounds.items():
            t = self.prog.tensors[name]
            if name not in used:
                continue
            ptr = ("in_" if t.kind == "input" else "tg_") + self.c[name]
            if all(b is not None for b in bounds) and len(set(bounds)) == 1:
                out.append(dict(ptr=ptr, size=t.size, bound=bounds[0], elems=None))
            else:
                out.append(dict(ptr=ptr, size=t.size, bound=None,
                                elems=[(j, b) for j, b in enumerate(bounds) if b is not None]))
        return out

    def args(self, kinds):
        out = []
        for t in self.prog.tensors.values():
            if t.kind in kinds:
                ct = "const int32_t" if t.dtype == INT else f"const {self.model}_real"
                pre = "in_" if t.kind == "input" else "tg_"
                out.append(dict(ctype=ct, arg=pre + self.c[t.name], name=self.c[t.name], kind=t.kind,
                                size=t.size, shape=list(t.shape), dtype=t.dtype, dropout=t.dropout))
        return out


def render(prog, grad, dtype="float64", inference_only=False):
    """Render ``prog`` (with its ``grad``) as C source, header and cffi cdef.

    ``inference_only`` renders ``forward`` alone (``grad`` may then be None), with a
    workspace holding just what the outputs need.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    B = _Builder(prog, grad, dtype, inference_only)
    M = B.model
    outputs = [dict(name=B.c[o], size=prog.tensors[o].size, shape=list(prog.tensors[o].shape),
                    value="V_" + B.c[o], blocked=B.blocked(o)) for o in prog.outputs]
    loss_st = prog.stage(prog.loss)
    c = lambda n: B.c[n]  # noqa: E731
    extra = {"forward": ["V_" + o["name"] for o in outputs],
             "loss": ["V_" + c(prog.loss)] + (["V_" + c(prog.reg)] if prog.reg else []),
             "loss_grad": ["V_" + c(prog.loss), "D_" + c(prog.loss)]
             + (["V_" + c(prog.reg), "D_" + c(prog.reg)] if prog.reg else [])}
    ins = ["in_" + B.c[t.name] for t in prog.inputs]
    tgs = ["tg_" + B.c[t.name] for t in prog.targets]
    args = {"forward": ["params"] + ins + ["out_" + o["name"] for o in outputs],
            "loss": ["params"] + ins + tgs + ["loss"],
            "loss_grad": ["params"] + ins + tgs + ["loss", "grad"]}
    wanted = [("forward", prog.outputs, False)]
    if not inference_only:
        wanted += [("loss", [prog.loss, prog.reg], False), ("loss_grad", [prog.loss, prog.reg], True)]
    funcs = {}
    for key, roots, backward in wanted:
        f = B.function(roots, backward)
        decls = B.decls(f["used"], backward, prog.outputs if key == "forward" else ())
        checks = B.int_checks(f["used"])
        gathers = B.gathers(f["used"])
        # declare exactly the pointers the statements use: no unused variables
        text = " ".join(_texts(n[part]) for k in ("batch", "sample", "sample_bwd", "batch_bwd")
                        for n in f.get(k, []) for part in ("pre", "body", "post"))
        text += " " + " ".join(" ".join(str(v) for v in n["outer"].values())
                               for k in ("sample_bwd", "batch_bwd") for n in f.get(k, []) if "outer" in n)
        used = set(re.findall(r"[A-Za-z_]\w*", text)) | set(extra[key])
        all_decls = decls
        decls = [d for d in decls if d[1] in used]
        gathers = [g for g in gathers if g["dst"] in used]
        funcs[key] = dict(f, decls=decls, checks=checks, gathers=gathers, args=args[key],
                          ints=any(d[2].startswith("wsi") for d in decls))
        if key == "loss_grad":
            # loss_grad is two functions: the blocks of samples (run once, or once per thread), then
            # what runs once per batch; each declares exactly the pointers it uses
            per_sample = loss_st.scope == "sample"
            texts = {"part": ["batch", "sample", "sample_bwd"], "finish": ["batch_bwd"]}
            seeds = {"part": [c(prog.loss), ] if per_sample else [],
                     "finish": ([] if per_sample else [c(prog.loss)]) + ([c(prog.reg)] if prog.reg else [])}
            for part, keys in texts.items():
                t = " ".join(_texts(n[q]) for k in keys for n in f.get(k, []) for q in ("pre", "body", "post"))
                t += " " + " ".join(" ".join(str(v) for v in n["outer"].values())
                                    for k in keys for n in f.get(k, []) if "outer" in n)
                u = set(re.findall(r"[A-Za-z_]\w*", t)) | {p + n for n in seeds[part] for p in ("V_", "D_")}
                ds = [d for d in all_decls if d[1] in u]
                funcs[key][part + "_decls"] = ds
                funcs[key][part + "_ints"] = any(d[2].startswith("wsi") for d in ds)
    real_ins = [t for t in prog.inputs if t.dropout is None]
    generic = None
    if len(prog.inputs) == 1 and real_ins and len(prog.targets) == 1 and len(outputs) == 1:
        tg = prog.targets[0]
        generic = dict(input_size=real_ins[0].size, target_size=tg.size, target_int=tg.dtype == INT,
                       target_ctype="int32_t" if tg.dtype == INT else M + "_real", output_size=outputs[0]["size"])
    ctx = dict(
        M=M, MU=M.upper(), real=B.real_t, dtype=dtype, real_bytes=4 if dtype == "float32" else 8,
        inference_only=inference_only, abi_version=ABI_VERSION, generic=generic,
        inputs=B.args(("input",)), targets=B.args(("target",)), outputs=outputs,
        params=B.layout["params"], n_params=B.layout["n_params"], ws=B.layout["ws"], ints=B.layout["ints"],
        lanes=LANES, sample_adj=B.layout["sample_adj_range"], batch_adj=B.layout["batch_adj_range"],
        loss="V_" + B.c[prog.loss], loss_adj="D_" + B.c[prog.loss], loss_per_sample=loss_st.scope == "sample",
        reg=("V_" + B.c[prog.reg]) if prog.reg else None, reg_adj=("D_" + B.c[prog.reg]) if prog.reg else None,
        f=funcs, suffix="f" if dtype == "float32" else "", lit=(lambda x: f"{x}F" if dtype == "float32" else x),
    )
    env = _templates()
    c = env.get_template("c/model.c.j2").render(ctx)
    h = env.get_template("c/model.h.j2").render(ctx)
    cdef = env.get_template("c/cdef.j2").render(ctx)
    layout = dict(B.layout, c_names=B.c, prefix=M)
    return Source(M, c, h, cdef, layout)


def pr_number(x, dtype):
    """A numeric coefficient as a C literal of the model's type."""
    return Printer(dtype, {}, {}, DTYPES[dtype]).doprint(sp.sympify(x))


def _unroll(extent, most=4):
    """How many outputs of a per-sample reduction to compute at once (at most ``most``)."""
    for u in (8, 4, 2):
        if u <= most and extent % u == 0:
            return u
    return 1


def _texts(stmts):
    """The text of a statement list, nested lane blocks included (to find the names it uses)."""
    out = []
    for st in stmts:
        if st[0] == "lanes":
            out.append(_texts(st[1]))
        elif st[0] == "lanes_outer":
            out.append(_texts(st[2]))
        elif st[0] == "lanes_acc":
            out.append(" ".join(a for a, _ in st[1]) + " " + _texts(st[2] + st[4] + st[5]))
        elif st[0] == "lanes_sum":
            out.append(" ".join(f"{r} {t}" for r, t in st[1]) + " " + _texts(st[2]))
        else:
            out.append(f"{st[1]} {st[2]}")
    return " ".join(out)


def c_literal(x, dtype):
    """The shortest C literal that reads back as exactly ``x`` in ``dtype`` (float32: with F)."""
    v = np.float32(x) if dtype == "float32" else np.float64(x)
    if v == 0 or 1e-4 <= abs(v) < 1e7:
        s = np.format_float_positional(v, unique=True, trim="0")
    else:
        s = np.format_float_scientific(v, unique=True, trim="0")
    return s + ("F" if dtype == "float32" else "")


def render_weights(src, params, dtype):
    """``NAME_weights.c``: the parameter values as one const array, for embedding."""
    rows = []
    for p in src.layout["params"]:
        a = np.asarray(params[p["name"]], dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"parameter {p['name']!r} holds NaN or Inf; refusing to export it")
        lits = [c_literal(v, dtype) for v in a]
        rows.append(dict(p, rows=[", ".join(lits[i:i + 6]) for i in range(0, len(lits), 6)]))
    M = src.name
    return _templates().get_template("c/weights.c.j2").render(M=M, MU=M.upper(), params=rows)

