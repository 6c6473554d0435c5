"""Render a program and its gradient as one C99 translation unit and header.

Python decides *what* each loop nest computes, as kernel-IR statements (``kir``) whose right-hand
sides are printed SymPy expressions; ``templates/c/*.j2`` decide how the code is laid out. Output
is byte-identical from run to run.

The generated C reads like the model: every nest carries the formula of its stage and the file
and line where the user wrote it; the forward pass of a block of samples is static functions
called from ``forward``, ``loss`` and the gradient pass; parameter offsets use the header's macros.

Example::

    src = render(prog, differentiate(prog), "float64")
    open("moons.c", "w").write(src.c)
"""
import os
from dataclasses import dataclass
from importlib import resources

import jinja2
import numpy as np
import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.printing.c import C99CodePrinter

from .. import abi
from .._version import __version__
from ..autodiff import adjoint_symbol
from ..functions import PRIMITIVE_OF, PRIMITIVES
from ..ir import INT, reads, unflat
from ..isa import host as host_isa
from ..simplify import cse_block, live_stages
from . import kir
from . import per_lane
from .kir import (Acc, Accumulate, Assign, Decl, Expr, LaneLoop, LaneReduction, LaneSum, LaneTile, MaxInto,
                  Nest, RankOneUpdate, Range, SampleLoop, Var, lit)
from .names import Namer, ident

DTYPES = {"float64": "double", "float32": "float"}


@dataclass
class Source:
    name: str       # the C prefix of every symbol
    c: str          # NAME.c (NAME.cu for target cuda)
    h: str          # NAME.h
    cdef: str       # declarations for cffi
    layout: dict    # offsets and sizes, for the Python module


class Printer(C99CodePrinter):
    """C99 printer that knows where each tensor lives, and records what it prints.

    ``where[name]`` is (pointer, shape, dtype, blocked, padded stride); loop variables and temporaries print under
    the names in ``names``. ``expr(e)`` returns the text with the arrays it reads (``kir.Expr``);
    the primitives' helper functions it prints are added to ``helpers``.
    """

    def __init__(self, dtype, where, names, real_t, helpers=None):
        settings = {"type_aliases": {real: float32}} if dtype == "float32" else {}
        # no M_SQRT2 or M_2_SQRTPI (POSIX, not C99) for sqrt(2) or 2/sqrt(pi): numbers (_print_Pow)
        settings["math_macros"] = {}
        super().__init__(settings)
        self.where = where
        self.names = names
        self.real_t = real_t
        self.suffix = "f" if dtype == "float32" else ""
        self.helpers = set() if helpers is None else helpers
        self.touched = set()

    def expr(self, e):
        """``e`` printed, with the arrays it reads."""
        self.touched = set()
        text = self.doprint(e)
        return Expr(text, self.touched)

    def ref(self, name, idx):
        """The element ``name[idx]`` as an lvalue, with the arrays it names (index inputs included)."""
        self.touched = set()
        text = self.flat(name, idx)
        return Expr(text, self.touched, self.where[name][0])

    def flat(self, name, idx):
        ptr, shape, _, blocked, lead = self.where[name]
        self.touched.add(ptr)
        terms = [self.index(sp.sympify(e)) for e in idx]
        if lead and len(terms) > 1:     # padded planes: the first index strides over a plane and its pad
            expr = f"({terms[0]})*{lead} + {self._row_major(terms[1:], shape[1:])}"
        else:
            expr = self._row_major(terms, shape)
        if blocked:        # a block of samples, the sample innermost
            return f"{ptr}[b]" if not shape else f"{ptr}[({expr})*GC_L + b]"
        return f"{ptr}[0]" if not shape else f"{ptr}[{expr}]"

    @staticmethod
    def _row_major(terms, shape):
        expr = ""
        for d, term in enumerate(terms):
            expr = term if d == 0 or expr == "0" else f"({expr})*{shape[d]} + {term}"
        return expr

    def index(self, e):
        if e.is_Integer:
            return str(int(e))
        if isinstance(e, sp.Indexed) or (isinstance(e, sp.Symbol) and e.name in self.where):
            return self.read(e, cast=False)
        if e.has(sp.floor, sp.Mod):
            return self._int_index(e)
        return self._print(e)

    def _int_index(self, e):
        """Index arithmetic in C's ints: ``floor(f/9)`` is ``f / 9`` and ``Mod(f, 9)`` is ``f % 9``
        (the IR has checked that what is divided is never negative: ``ir.index_range``)."""
        if isinstance(e, sp.floor):
            num, den = sp.fraction(sp.together(e.args[0]))
            return f"(({self._int_index(num)}) / {int(den)})"
        if isinstance(e, sp.Mod):
            return f"(({self._int_index(e.args[0])}) % {int(e.args[1])})"
        if isinstance(e, sp.Add):
            return "(" + " + ".join(self._int_index(a) for a in e.args) + ")"
        if isinstance(e, sp.Mul):
            c, rest = e.as_coeff_Mul()
            return f"({int(c)}*{self._int_index(rest)})"
        return self.index(e)

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
        if not e.free_symbols and not (x.is_Integer and b.is_Integer):     # sqrt(2), pi**(-1/2)
            return self._print(sp.Float(e.evalf(20), 20))
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

    def _print_Function(self, e):
        p = PRIMITIVE_OF.get(type(e))
        if p is not None and p.helper:          # a primitive with a helper of gradc's (gc_sigmoid)
            self.helpers.add(p.name)
            return f"{p.helper}{self.suffix}({', '.join(self._print(a) for a in e.args)})"
        return super()._print_Function(e)

    def _print_Max(self, e):
        return self._minmax(e, PRIMITIVE_OF[sp.Max])

    def _print_Min(self, e):
        return self._minmax(e, PRIMITIVE_OF[sp.Min])

    def _minmax(self, e, p):
        self.helpers.add(p.name)
        args = [self._print(a) for a in e.args]
        out = args[-1]
        for a in reversed(args[:-1]):
            out = f"{p.helper}{self.suffix}({a}, {out})"
        return out


_env = None


def templates():
    """The Jinja environment over ``gradc/templates`` (strict: an undefined name is an error)."""
    global _env
    if _env is None:
        loader = jinja2.FunctionLoader(lambda n: resources.files("gradc.templates").joinpath(n).read_text())
        _env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return _env


def helper_functions(used, dtype):
    """The primitives' helper functions a source needs, in the table's order: dicts of ``name``,
    ``params`` and ``body`` (C text), which each target's template wraps in its qualifiers."""
    R, s = DTYPES[dtype], "f" if dtype == "float32" else ""
    env = templates()
    out = []
    for p in PRIMITIVES:
        if p.helper and p.name in used:
            body = env.from_string(p.c_body).render(R=R, s=s, lit=lambda x: f"{x}F" if s else x)
            out.append(dict(name=p.helper + s, params=p.params, body=body.splitlines()))
    return out


_digest = {}


def template_digest(target="c"):
    """A hash of everything that generates code for ``target``: its template folder, the shared
    one, and gradc's own generator modules, so that a changed generator never loads an artifact
    the old one made."""
    if target in _digest:
        return _digest[target]
    import hashlib

    from ..targets import get_target
    h = hashlib.sha256()
    for sub in (get_target(target).templates, "shared"):
        root = resources.files("gradc.templates").joinpath(sub)
        for name in sorted(p.name for p in root.iterdir() if p.name.endswith(".j2")):
            h.update(f"{sub}/{name}".encode() + root.joinpath(name).read_bytes())
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rel in ("model.py", "nn.py", "functions.py", "rewrite.py", "ir.py", "autodiff.py", "simplify.py",
                "abi.py", "targets.py", "build.py", "codegen/c.py", "codegen/cuda.py", "codegen/kir.py",
                "codegen/names.py"):
        with open(os.path.join(pkg, rel), "rb") as f:
            h.update(rel.encode() + f.read())
    _digest[target] = h.hexdigest()
    return _digest[target]


ABI_VERSION = abi.ABI_VERSION

LANES = 16     # samples per block


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


def comment_text(text, limit=110):
    """User text made safe inside a C comment: ASCII, one line, no ``*/``, at most ``limit`` chars."""
    t = " ".join(str(text).split())
    t = "".join(ch if " " <= ch <= "~" else "?" for ch in t).replace("*/", "* /").replace("/*", "/ *")
    return t if len(t) <= limit else t[:limit - 3] + "..."


def formula(st, c_names, loop_names):
    """A stage as a line of math in the generated code's names: ``t_1[l0] = Max(0, b1[l0] + r1[l0])``."""
    sub = {}
    for b in st.bodies():
        for n in sp.preorder_traversal(b):
            if isinstance(n, sp.Indexed) and n.base.label.name in c_names:
                sub[n.base] = sp.IndexedBase(c_names[n.base.label.name])
            elif isinstance(n, sp.Symbol) and n.name in c_names:
                sub[n] = sp.Symbol(c_names[n.name])
    sub.update({k: sp.Symbol(v) for k, v in loop_names.items()})
    lhs = c_names[st.name] + (f"[{', '.join(loop_names.get(k, str(k)) for k in st.idx)}]" if st.idx else "")
    if st.elements is not None:
        return f"{c_names[st.name]} = [{', '.join(str(e.xreplace(sub)) for e in st.elements)}]"
    body = str(st.body.xreplace(sub))
    if st.red:
        lim = ", ".join(f"{loop_names.get(k, k)}<{n}" for k, n in st.red)
        return f"{lhs} = {st.op}_{{{lim}}} {body}"
    return f"{lhs} = {body}"


def stage_comment(st, c_names, loop_names, what=""):
    """What a nest computes and where the user wrote it: ``t_1[l0] = Max(0, ...)  (model.py:12)``."""
    text = formula(st, c_names, loop_names)
    if what:
        text = f"{what}: {text}"
    where = f"({os.path.basename(st.where[0])}:{st.where[1]})" if st.where else ""
    where = comment_text(where, 50)
    return comment_text(text, 110 - len(where)) + ("  " + where if where else "")


def _fixed(pairs):
    """Loop variables of extent 1, held at 0 instead of looped over."""
    return {k: sp.Integer(0) for k, n in pairs if n == 1}


class Builder:
    """Plans the loop nests. Every per-sample tensor is stored for a block of GC_L samples,
    element-major with the sample innermost (``T[i * GC_L + b]``), so each statement runs in
    an innermost loop over the block's samples that the C compiler vectorizes; parameter
    gradients are sums over that loop."""

    def __init__(self, prog, grad, dtype, inference_only=False, isa=None, lanes=None, frozen=None):
        self.prog, self.grad, self.dtype = prog, grad, dtype
        self.lanes = LANES if lanes is None else lanes
        self.frozen = frozen or {}          # parameter -> its values, constants of the source
        self.isa = isa or host_isa()
        self.inference_only = inference_only
        self.real_t = DTYPES[dtype]
        names = Namer()
        self.model = ident(prog.name, "model")
        self.rt = self.model + "_real"
        self.c = {t.name: names(t.name) for t in prog.tensors.values()}
        self.helpers = set()
        self._lead = self._padded_planes()
        self.layout = self._layout()
        self._where = self._where_map()

    # ---- memory --------------------------------------------------------
    pad_planes = True       # the C target pads; CUDA's layout has no lanes to pad

    def _padded_planes(self):
        """{tensor: the stride of its first index, in elements} for the per-sample tensors whose
        planes (the elements under one value of the first index) would start a multiple of 1 KiB
        apart: those get one element more per plane. Without it a reduction over the first index
        (a convolution's output channels, in its input and kernel gradients) reads lines that all
        fall in the same few sets of a set-associative L1 cache and evict one another: a
        (16, 8, 8) map of float32 in blocks of 16 lanes has planes 4 KiB apart.

        Tensors read as flat runs stay dense: outputs (copied out), and what rank-1 updates read."""
        if not self.pad_planes:
            return {}
        flat = set(self.prog.outputs)
        if self.grad is not None and not self.inference_only:
            flat |= {r for a in self.grad.adjoints for _, _, r in self.outer_updates(a)}
        lane_bytes = self.lanes * (4 if self.dtype == "float32" else 8)
        out = {}
        for t in self.prog.tensors.values():
            if t.kind != "stage" or t.scope != "sample" or len(t.shape) < 2 or t.name in flat:
                continue
            plane = t.size // t.shape[0]
            if plane * lane_bytes % 1024 == 0:
                out[t.name] = plane + 1
        return out

    def _size(self, name):
        t = self.prog.tensors[name]
        if name in self._lead:
            return _Off(0, t.shape[0] * self._lead[name])
        return _Off(t.size) if t.scope == "batch" else _Off(0, t.size)

    def _layout(self):
        prog = self.prog
        off, params, foff, frozen = 0, [], 0, []
        for t in prog.params:
            if t.name in self.frozen:       # in gc_frozen[], a constant array of the source (flash)
                frozen.append(dict(name=t.name, c=self.c[t.name], offset=foff, size=t.size, shape=list(t.shape)))
                foff += t.size
                continue
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
        return dict(params=params, n_params=off, frozen=frozen, n_frozen=foff, values=values, sample_adj=sample_adj, batch_adj=batch_adj,
                    sample_adj_range=(sample_begin, sample_end), batch_adj_range=(batch_begin, batch_end),
                    lanes_in=lanes_in, mirrors=mirrors, ws=ws, ints=ints)

    def blocked(self, name):
        t = self.prog.tensors[name]
        return t.kind in ("input", "target") or t.scope == "sample"

    def _where_map(self):
        """Where every tensor and adjoint lives inside a function body: (pointer, shape, dtype,
        blocked, the stride of the first index when its planes are padded, else None)."""
        prog, L = self.prog, self.layout
        w = {}
        for t in prog.tensors.values():
            pre = {"param": "P_", "input": "X_", "target": "Y_", "stage": "V_"}[t.kind]
            w[t.name] = (pre + self.c[t.name], t.shape, t.dtype, self.blocked(t.name), self._lead.get(t.name))
        for t in prog.params:
            w[adjoint_symbol(t.name).name] = ("G_" + self.c[t.name], t.shape, t.dtype, False, None)
        for n in list(L["sample_adj"]) + list(L["batch_adj"]):
            t = prog.tensors[n]
            w[adjoint_symbol(n).name] = ("D_" + self.c[n], t.shape, t.dtype, self.blocked(n), self._lead.get(n))
        return w

    def where(self):
        return self._where

    # ---- loop nests ----------------------------------------------------
    def printer(self, loops):
        names = {k: f"l{j}" for j, k in enumerate(loops)}
        return Printer(self.dtype, self._where, names, self.real_t, self.helpers), names

    def _temps(self, printer, names, temps, red_vars):
        """Split CSE temporaries into those that vary with the reduction loops and those that do not."""
        inner, outer, varying = [], [], set(red_vars)
        for sym, e in temps:
            names[sym] = f"c{len(names)}" if sym not in names else names[sym]
            d = Decl(names[sym], printer.expr(e), "int" if isinstance(e, sp.logic.boolalg.Boolean) else "")
            if e.free_symbols & varying:
                varying.add(sym)
                inner.append(d)
            else:
                outer.append(d)
        return outer, inner

    def _max_init(self):
        return lit("-HUGE_VALF" if self.dtype == "float32" else "-HUGE_VAL")

    def forward_nest(self, st):
        t = self.prog.tensors[st.name]
        red_vars = [k for k, _ in st.red]
        pr, names = self.printer(list(st.idx) + red_vars)
        lanes = st.scope == "sample"

        def block(stmts):     # statements of one sample, run for every sample of the block
            return (LaneLoop(tuple(stmts)),) if lanes else tuple(stmts)
        if st.elements is not None:
            temps, vals = cse_block(st.elements)
            outer, _ = self._temps(pr, names, temps, [])
            body = outer + [Assign(pr.ref(st.name, unflat(e, t.shape)), pr.expr(v)) for e, v in enumerate(vals)]
            return Nest(stage_comment(st, self.c, names, "unrolled"), body=block(body))
        fix = _fixed(list(zip(st.idx, t.shape)) + list(st.red))
        loops = tuple(Range(names[k], n) for k, n in zip(st.idx, t.shape) if k not in fix)
        inner = tuple(Range(names[k], n) for k, n in st.red if k not in fix)
        comment = stage_comment(st, self.c, names)
        if lanes and st.op != "assign":
            return self._lane_reduction(st, t, pr, names, fix, comment)
        temps, (val,) = cse_block([st.body.xreplace(fix)])
        outer, inner_t = self._temps(pr, names, temps, red_vars)
        target = pr.ref(st.name, tuple(sp.sympify(i).xreplace(fix) for i in st.idx))
        if st.op == "assign":
            return Nest(comment, loops, body=block(outer + [Assign(target, pr.expr(val))]))
        init = lit("0") if st.op == "sum" else self._max_init()
        pre = tuple(outer) + (Var("acc", init),)
        if st.op == "sum":
            body = inner_t + [Accumulate(lit("acc"), pr.expr(val))]
        else:
            body = inner_t + [Decl("v", pr.expr(val)), MaxInto("acc", lit("v"))]
        return Nest(comment, loops, pre, inner, tuple(body), (Assign(target, lit("acc")),))

    def _lane_reduction(self, st, t, pr, names, fix, comment):
        """A per-sample reduction over a block of samples. With U > 1 the first output loop is
        unrolled U times and jammed: U accumulators share each load of the reduced operand (a
        register-blocked dot product, U sized for the vector registers: ``Builder.unroll``).
        Rendered as a register tile (``LaneTile``: the reduction loops outside, the lanes inside)
        unless some per-sample value is computed before the reduction; then as a ``LaneReduction``."""
        U = self.unroll(t.shape[0]) if st.idx else 1
        i0 = st.idx[0] if st.idx else None
        once = i0 is not None and t.shape[0] == U      # the unrolled loop runs once: no loop
        init = lit("0") if st.op == "sum" else self._max_init()
        red_vars = [k for k, _ in st.red]
        parts = []
        for u in range(U):
            sub = dict(fix)
            if i0 is not None:
                sub[i0] = sp.Integer(u) if once else i0 + u
            temps, (val,) = cse_block([st.body.xreplace(sub)])
            outer, inner_t = self._temps(pr, names, temps, red_vars)
            idx = tuple(sp.sympify(i).xreplace(sub) for i in st.idx)
            parts.append((outer, inner_t, pr.expr(val), lambda a, idx=idx: Assign(pr.ref(st.name, idx), lit(a))))
        loops = [Range(names[k], n) for k, n in zip(st.idx, t.shape) if k not in sub]
        if i0 is not None and not once and i0 not in fix:
            loops = [Range(names[i0], t.shape[0], U)] + loops
        inner = tuple(Range(names[k], n) for k, n in st.red if k not in fix)
        how = f"; {U} outputs at a time" if U > 1 else ""
        return Nest(comment + how, tuple(loops), body=(self._reduce(parts, init, st.op, inner),))

    def _reduce(self, parts, init, op, inner):
        """The statement of a register-blocked reduction: ``parts`` are, per accumulator, (temps
        computed before the reduction, temps inside it, the value reduced, a function from the
        accumulator's C reference to the statement that stores it, or the element its sum over
        the lanes is added to)."""
        # a tile when there is a reduction loop to keep the accumulators in registers across, or
        # when some accumulator is totalled over the lanes (a gathered parameter gradient whose
        # summed loops all have extent 1: the tile then has no loops, only the lane loop)
        need_total = any(not callable(store) for _, _, _, store in parts)
        tile = bool(inner or need_total) and not any(outer for outer, _, _, _ in parts)
        accs, pre_t, body, post, totals = [], [], [], [], []
        for u, (outer, inner_t, val, store) in enumerate(parts):
            a = f"acc{u}"
            ref = f"{a}[b]" if tile else a
            accs.append(Acc(a, init.text))
            pre_t += outer
            if op == "sum":
                body += inner_t + [Accumulate(lit(ref), val)]
            else:
                body += inner_t + [Decl(f"v{u}", val), MaxInto(ref, lit(f"v{u}"))]
            if callable(store):
                post.append(store(ref))
            else:
                totals.append(store)
        assert tile or not totals, "a sum over the lanes needs a tile"
        if tile:
            return LaneTile(tuple(accs), inner, tuple(body), tuple(post), tuple(totals))
        return LaneReduction(tuple(accs), tuple(pre_t), inner, tuple(body), tuple(post))

    def unroll(self, extent):
        """How many outputs of a per-sample reduction one pass computes: the largest divisor of
        ``extent`` up to 8 whose accumulators the vector registers hold (``gradc.isa``)."""
        if self.lanes == 1:     # one sample a block (an MCU's least-memory build): no vector to fill; least code
            return 1
        return _unroll(extent, min(8, self.isa.tile_budget(self.lanes, 4 if self.dtype == "float32" else 8)))

    def outer_updates(self, adj):
        """The updates of a per-sample dense layer's adjoint that are outer products,
        dP[i, k] += c * dT[i] * R[k] (T[i] = sum_k P[i, k] * R[k]; k may be several indices that
        run over all of R in order, T[i] = sum_{c,y,x} P[i, c, y, x] * R[c, y, x]): these run as
        rank-1 updates over the block, vectorized along k, instead of per-element lane sums."""
        st = adj.stage
        if st.scope != "sample" or st.elements is not None or len(st.idx) != 1 or not st.red:
            return []
        (i,), ks = st.idx, tuple(k for k, _ in st.red)
        ext = tuple(n for _, n in st.red)
        out = []
        for u in adj.updates:
            if self.blocked(u.tensor) or tuple(u.idx) != (i,) + ks:
                continue
            coef, rest = u.expr.as_coeff_Mul()
            fs = rest.args if isinstance(rest, sp.Mul) else ()
            if len(fs) != 2 or not all(isinstance(f, sp.Indexed) for f in fs):
                continue
            # R read whole, in order (R[k] of a dense layer; R[c, y, x] flattened, of a dense layer
            # over a feature map): the rows of dP are contiguous runs of R's elements
            d = [f for f in fs if f.base.label.name == adjoint_symbol(st.name).name and tuple(f.indices) == (i,)]
            r = [f for f in fs if f.base.label.name in self.prog.tensors and tuple(f.indices) == ks
                 and self.blocked(f.base.label.name) and self.prog.tensors[f.base.label.name].shape == ext]
            if len(d) == 1 and len(r) == 1:
                out.append((u, coef, r[0].base.label.name))
        return out

    def backward_nest(self, adj):
        st = adj.stage
        t = self.prog.tensors[st.name]
        red_vars = [k for k, _ in st.red]
        pr, names = self.printer(list(st.idx) + red_vars)
        pairs = [] if st.elements is not None else list(zip(st.idx, t.shape)) + list(st.red)
        fix = _fixed(pairs)
        # a per-sample reduction's adjoint: U copies of the first output loop share their loads
        U = _unroll(t.shape[0]) if st.scope == "sample" and st.red and st.idx else 1
        i0 = st.idx[0] if st.idx else None
        once = U > 1 and t.shape[0] == U
        loops = []
        if st.elements is None:
            for k, n in zip(st.idx, t.shape):
                if k in fix or (once and k == i0):
                    continue
                loops.append(Range(names[k], n, U if (U > 1 and k == i0) else 1))
        inner = tuple(Range(names[k], n) for k, n in ([] if st.elements is not None else st.red) if k not in fix)
        outer_ups = self.outer_updates(adj)
        gathered = self.gathered_updates(adj, {id(u) for u, _, _ in outer_ups})
        skip = {id(u) for u, _, _ in outer_ups} | {id(u) for u in gathered}

        def shift(j):
            sub = dict(fix)
            if U > 1:
                sub[i0] = sp.Integer(j) if once else i0 + j
            return sub
        updates = [(u, shift(j)) for j in range(U) for u in adj.updates if id(u) not in skip]
        temps, vals = cse_block([u.expr.xreplace(sub) for u, sub in updates])
        outer, inner_t = self._temps(pr, names, temps, red_vars)
        comment = stage_comment(st, self.c, names, "backward" + (" (unrolled)" if st.elements is not None else ""))

        def idx(u, sub):
            return tuple(sp.sympify(i).xreplace(sub) for i in u.idx)
        loops = tuple(loops)
        if st.scope == "batch":
            stmts = [Accumulate(pr.ref(adjoint_symbol(u.tensor).name, idx(u, sub)), pr.expr(v))
                     for (u, sub), v in zip(updates, vals)]
            if inner:
                return [Nest(comment, loops, tuple(outer), inner, tuple(inner_t + stmts))]
            return [Nest(comment, loops, body=tuple(outer + stmts))]
        # a per-sample stage: per-sample adjoints are updated lane by lane; adjoints of parameters
        # and of once-per-batch tensors receive the sum over the block's samples
        # (a scatter-add through an int32 input, dE[u, k], goes lane by lane and is never vectorized:
        # two samples of a block may name the same row)
        stmts, regs, targets, scatters = [], [], [], []
        for (u, sub), v in zip(updates, vals):
            target = pr.ref(adjoint_symbol(u.tensor).name, idx(u, sub))
            if self.blocked(u.tensor):
                stmts.append(Accumulate(target, pr.expr(v)))
            elif any(reads(sp.sympify(i), self.prog.tensors) for i in u.idx):
                scatters.append(Accumulate(target, pr.expr(v)))
            else:
                r = f"r{len(regs)}"
                regs.append(r)
                targets.append(target)
                stmts.append(Accumulate(lit(r), pr.expr(v)))
        temps = tuple(outer + inner_t)
        body = (LaneSum(tuple(regs), tuple(targets), temps + tuple(stmts)),) if regs else \
            (LaneLoop(temps + tuple(stmts)),) if stmts else ()
        nests = [self._outer_nest(st, t, u, coef, r) for u, coef, r in outer_ups]
        nests += [self._gather_nest(st, t, u, pr, names) for u in gathered]
        if body:
            nests.append(Nest(comment, loops, inner=inner, body=body))
        if scatters:
            # sample by sample, the nest's loops inside: one sample's row is contiguous (vectorized),
            # and each gradient element still receives the samples in order
            nests.append(Nest(comment + "; scattered sample by sample",
                              body=(SampleLoop(loops + inner, temps + tuple(scatters)),)))
        return nests

    def gathered_updates(self, adj, taken=frozenset()):
        """Updates of a per-sample stage's adjoint whose target is indexed by some of the nest's
        loop variables and summed over the others: these run with the target's variables outside
        and the sum inside, in vector registers (a register tile), instead of a read-modify-write
        of the target per term (per-sample targets) or a sum over the lanes per term (parameters).

        - a per-sample target indexed by affine expressions of the loop variables: the input
          gradient of a dense layer, dx[k] += dz[i] * W[i, k], summed over i; of a convolution,
          dx[c, i + k, j + l] += dz[o, i, j] * K[o, c, k, l], summed over o;
        - a parameter's (or a once-per-batch tensor's) gradient indexed by distinct loop variables:
          a convolution's kernel, dK[o, c, k, l] += dz[o, i, j] * x[c, i + k, j + l], summed over
          i, j and the block's samples; a bias broadcast over positions, db[o] += dz[o, i, j].

        ``taken``: ids of updates already rendered otherwise (rank-1 updates)."""
        st = adj.stage
        if st.scope != "sample" or st.elements is not None:
            return []
        loop_syms = list(st.idx) + [k for k, _ in st.red]
        out = []
        for u in adj.updates:
            if id(u) in taken:
                continue
            comps = [sp.sympify(c) for c in u.idx]
            used = set().union(*(c.free_symbols for c in comps)) if comps else set()
            # (a target at constant indices, dP[1, 2] or dx[0], names no loop of the nest: there is
            # no output loop to tile, and the lane-sum / lane-loop path below handles it)
            if not comps or not used or not used <= set(loop_syms) or len(used) == len(loop_syms) \
                    or any(reads(c, self.prog.tensors) for c in comps):
                continue
            if self.blocked(u.tensor):
                if st.red and all(c.is_polynomial(*used) and sp.Poly(c, *used).total_degree() <= 1
                                  for c in comps if c.free_symbols):
                    out.append(u)
            else:
                plain = [c for c in comps if c.free_symbols]       # and constants
                if all(c in loop_syms for c in plain) and len(set(plain)) == len(plain):
                    out.append(u)
        return out

    def _gather_nest(self, st, t, u, pr, names):
        ext = dict(zip(st.idx, t.shape))
        ext.update(dict(st.red))
        loop_syms = list(st.idx) + [k for k, _ in st.red]
        fix = _fixed(ext.items())
        comps = [sp.sympify(c) for c in u.idx]
        used = set().union(*(c.free_symbols for c in comps))
        own = [v for v in loop_syms if v in used]
        rest = [v for v in loop_syms if v not in used]
        # the output loop unrolled into the tile: the one whose tile reads the fewest lane vectors
        # (they should stay in L1 from tile to tile), then the one with the most outputs at a time
        v0 = min(own, key=lambda v: (self._footprint(u.expr, rest, v, ext), -self.unroll(ext[v]), own.index(v)))
        U = self.unroll(ext[v0])
        once = ext[v0] == U
        target = adjoint_symbol(u.tensor).name
        total = not self.blocked(u.tensor)          # summed over the lanes too, after the tile
        parts = []
        for j in range(U):
            sub = dict(fix)
            sub[v0] = sp.Integer(j) if once else v0 + j
            temps, (val,) = cse_block([u.expr.xreplace(sub)])
            outer, inner_t = self._temps(pr, names, temps, rest)
            if total:               # a total needs every lane's terms inside the tile
                outer, inner_t = [], outer + inner_t
            tgt = pr.ref(target, tuple(c.xreplace(sub) for c in comps))
            parts.append((outer, inner_t, pr.expr(val), tgt if total else (lambda a, tgt=tgt: Accumulate(tgt, lit(a)))))
        loops = ([] if once else [Range(names[v0], ext[v0], U)]) + \
            [Range(names[v], ext[v]) for v in own if v != v0 and v not in fix]
        inner = tuple(Range(names[v], ext[v]) for v in rest if v not in fix)
        what = f"backward into {self.c[u.tensor]}, summed in registers" + (f", {U} at a time" if U > 1 else "")
        return Nest(stage_comment(st, self.c, names, what), tuple(loops),
                    body=(self._reduce(parts, lit("0"), "sum", inner),))

    def _footprint(self, e, rest, v0, ext):
        """How many lane vectors of per-sample tensors one tile of ``e`` reads, with the loops
        ``rest`` summed inside and ``v0`` unrolled: per read, the product over its indices of the
        span of values they take (an index i + k spans ext(i) + ext(k) - 1 values)."""
        span = dict((v, ext[v]) for v in rest)
        span[v0] = self.unroll(ext[v0])
        total = 0
        for a in e.atoms(sp.Indexed):
            name = a.base.label.name
            name = name[1:] if name.startswith("\u2202") else name
            if name not in self.prog.tensors or not self.blocked(name):
                continue
            n = 1
            for c in a.indices:
                c = sp.sympify(c)
                n *= 1 + sum(_slope(c, v) * (span[v] - 1) for v in c.free_symbols if v in span)
            total += n
        return total

    def _outer_nest(self, st, t, u, coef, r):
        """dP[i, k] += coef * dT[i] * R[k] summed over the block: for each sample, U rows of dP
        take a rank-1 update along k from a sample-major copy of R."""
        w = self._where
        c = pr_number(coef, self.dtype)
        upd = RankOneUpdate(src=w[r][0], mirror="M_" + self.c[r], d=w[adjoint_symbol(st.name).name][0],
                            grad=w[adjoint_symbol(u.tensor).name][0], rows=t.shape[0],
                            cols=self.prog.tensors[r].size, unroll=_unroll(t.shape[0], 8),
                            coef="" if sp.sympify(coef) == 1 else c)
        what = f"backward into {self.c[u.tensor]} by rank-1 updates over the block"
        names = {k: f"l{j}" for j, k in enumerate(list(st.idx) + [k for k, _ in st.red])}
        return Nest(stage_comment(st, self.c, names, what), body=(upd,))

    # ---- functions -----------------------------------------------------
    def forward_segments(self, roots_of):
        """The forward pass split into static functions that every entry point can share.

        ``roots_of`` maps each entry point (forward, loss, loss_grad) to the tensors it needs.
        Each scope (once per batch, per block of samples) is cut into the stages needed by the
        same set of entry points, in program order: a stage needed by all of them is computed by
        one function that all call. Returns (segments, {entry: [segment names per scope]})."""
        prog = self.prog
        need = {k: {s.name for s in live_stages(prog, roots)} for k, roots in roots_of.items()}
        built, segs, uses = {}, [], {k: {"batch": [], "sample": []} for k in roots_of}
        for scope in ("batch", "sample"):
            groups = {}
            for st in prog.stages:
                if st.scope != scope:
                    continue
                who = tuple(k for k in roots_of if st.name in need[k])
                if who:
                    groups.setdefault(who, []).append(st)
            # a stage needs only stages that every entry point needing it needs too, so the groups
            # needed by more entry points go first (a topological order of the groups)
            for who, stages in sorted(groups.items(), key=lambda g: -len(g[0])):
                nests = []
                for st in stages:
                    if st.name not in built:
                        built[st.name] = self.forward_nest(st)
                    nests.append(built[st.name])
                name = f"{self.model}_{scope}_{'_'.join(who)}"
                segs.append(dict(name=name, scope=scope, who=who, nests=nests,
                                 arrays=kir.arrays(nests)))
                for k in who:
                    uses[k][scope].append(name)
        return segs, uses

    def backward(self):
        """Backward nests: (per-sample ones, once-per-batch ones)."""
        adjs = self.grad.adjoints
        return ([n for a in adjs if a.stage.scope == "sample" for n in self.backward_nest(a)],
                [n for a in adjs if a.stage.scope == "batch" for n in self.backward_nest(a)])

    def decls(self, used, backward, outputs=()):
        """Pointer declarations (type, name, offset expression) for the arrays in ``used`` (None: all),
        in a stable order."""
        prog, L = self.prog, self.layout
        MU = self.model.upper()
        out = []
        for p in L["params"]:
            off = f"{MU}_PARAM_{p['c'].upper()}_OFFSET"
            out.append(("const " + self.rt, "P_" + p["c"], f"params + {off}"))
            if backward:
                out.append((self.rt, "G_" + p["c"], f"grad + {off}"))
                out.append((self.rt, "L_" + p["c"], f"lanes + {off} * GC_L"))     # per lane: per_lane.py
        for p in L["frozen"]:
            out.append(("const " + self.rt, "P_" + p["c"], f"gc_frozen + {p['offset']}"))
        for st in prog.stages:
            if st.name in L["values"]:
                out.append((self.rt, "V_" + self.c[st.name], f"ws + {L['values'][st.name].c()}"))
        if backward:
            for kind in ("sample_adj", "batch_adj"):
                for n, off in L[kind].items():
                    out.append((self.rt, "D_" + self.c[n], f"ws + {off.c()}"))
            for n, off in L["mirrors"].items():
                out.append((self.rt, "M_" + self.c[n], f"ws + {off.c()}"))
        for t in prog.inputs + prog.targets:
            pre = "X_" if t.kind == "input" else "Y_"
            off = L["lanes_in"][t.name].c()
            out.append(("int32_t", pre + self.c[t.name], f"wsi + {off}") if t.dtype == INT
                       else (self.rt, pre + self.c[t.name], f"ws + {off}"))
        return out if used is None else [d for d in out if d[1] in used]

    def gathers(self, used):
        """Copies of the inputs and targets whose block buffers ``used`` holds, sample-innermost."""
        out = []
        for t in self.prog.inputs + self.prog.targets:
            pre = "X_" if t.kind == "input" else "Y_"
            if pre + self.c[t.name] in used:
                arg = ("in_" if t.kind == "input" else "tg_") + self.c[t.name]
                out.append(dict(dst=pre + self.c[t.name], src=arg, size=t.size))
        return out

    def int_checks(self, used):
        """Range checks of the int32 inputs whose block buffers ``used`` holds: one loop when every
        element has one bound."""
        out = []
        for name, bounds in self.prog.int_bounds.items():
            t = self.prog.tensors[name]
            if ("X_" if t.kind == "input" else "Y_") + self.c[name] not in used:
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


def _function(B, key, segs, uses, own, extra, backward, outputs=()):
    """What one entry point (or part of one) declares and runs: the segments it calls, its own
    nests, the pointers they use, the inputs it gathers and checks."""
    seg_by = {s["name"]: s for s in segs}
    used = [seg_by[n] for scope in ("batch", "sample") for n in uses.get(scope, [])]
    calls = {scope: tuple(kir.Call(s["name"], (("params",) if s["uses_params"] else ()) + ("ws",)
                                   + (("wsi",) if s["ints"] else ()), frozenset(s["arrays"]))
                          for s in used if s["scope"] == scope) for scope in ("batch", "sample")}
    called = kir.arrays(calls["batch"] + calls["sample"])
    mine = kir.arrays(own) | set(extra)
    gathers = B.gathers(called | mine)
    checks = B.int_checks(called | mine)
    decls = B.decls(mine | {g["dst"] for g in gathers}, backward, outputs)
    return dict(calls=calls, decls=decls, gathers=gathers, checks=checks,
                ints=any(d[2].startswith("wsi") for d in decls) or any(s["ints"] for s in used),
                seg_params=any(s["uses_params"] for s in used))


def render(prog, grad, dtype="float64", inference_only=False, isa=None, lanes=LANES, frozen=None):
    """Render ``prog`` (with its ``grad``) as C source, header and cffi cdef.

    ``inference_only`` renders ``forward`` alone (``grad`` may then be None), with a
    workspace holding just what the outputs need. ``isa`` (a ``gradc.isa.ISA``; default: this
    machine's) sizes the register tiles; the source is portable C99 whatever it is. ``lanes``: the
    samples of a block, fixed in the source (the Python build always uses ``LANES``). ``frozen``:
    parameter name -> values, written into the source as constants (``grad`` must treat them as
    such: ``differentiate(prog, frozen)``); the entry points' ``params`` then hold the rest.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    B = Builder(prog, grad, dtype, inference_only, isa, lanes, frozen)
    M = B.model
    outputs = [dict(name=B.c[o], size=prog.tensors[o].size, shape=list(prog.tensors[o].shape),
                    value="V_" + B.c[o], blocked=B.blocked(o)) for o in prog.outputs]
    loss_st = prog.stage(prog.loss)
    c = lambda n: B.c[n]  # noqa: E731
    roots = {"forward": prog.outputs}
    if not inference_only:
        roots["loss"] = [prog.loss, prog.reg]
    segs, uses = B.forward_segments({"forward": prog.outputs} if inference_only
                                    else {"forward": prog.outputs, "loss": [prog.loss, prog.reg]})
    for s in segs:
        s["decls"] = B.decls(s["arrays"], False)
        s["ints"] = any(d[2].startswith("wsi") for d in s["decls"])
        s["uses_params"] = any(d[1].startswith("P_") for d in s["decls"])
    ins = ["in_" + B.c[t.name] for t in prog.inputs]
    tgs = ["tg_" + B.c[t.name] for t in prog.targets]
    funcs = {"forward": _function(B, "forward", segs, uses["forward"], [], ["V_" + o["name"] for o in outputs],
                                  False, prog.outputs)}
    funcs["forward"]["args"] = ["params"] + ins + ["out_" + o["name"] for o in outputs]
    if not inference_only:
        loss_vals = ["V_" + c(prog.loss)] + (["V_" + c(prog.reg)] if prog.reg else [])
        funcs["loss"] = _function(B, "loss", segs, uses["loss"], [], loss_vals, False)
        funcs["loss"]["args"] = ["params"] + ins + tgs + ["loss"]
        funcs["loss_grad_args"] = ["params"] + ins + tgs + ["loss", "grad"]
        sample_bwd, batch_bwd = B.backward()
        per_sample = loss_st.scope == "sample"
        # a loss computed once per batch reads only once-per-batch stages: no block loop is needed
        assert per_sample or not (uses["loss"]["sample"] or sample_bwd), "a batch loss with per-sample stages"
        part_seed = ["V_" + c(prog.loss), "D_" + c(prog.loss)] if per_sample else []
        finish_seed = ([] if per_sample else ["V_" + c(prog.loss), "D_" + c(prog.loss)]) + \
            (["V_" + c(prog.reg), "D_" + c(prog.reg)] if prog.reg else [])
        # loss_grad is two functions: the blocks of samples (run once, or once per thread), then what
        # runs once per batch; each declares exactly the pointers it uses
        part = _function(B, "part", segs, uses["loss"], sample_bwd, part_seed, True)
        part["sample_bwd"] = sample_bwd
        finish = _function(B, "finish", segs, {}, batch_bwd, finish_seed, True)
        finish["batch_bwd"] = batch_bwd
        funcs["part"], funcs["finish"] = part, finish
        funcs["part"]["uses_params"] = any(d[1].startswith("P_") for d in part["decls"]) or \
            part["seg_params"]
        funcs["part"]["uses_args"] = {g["src"] for g in part["gathers"]} | {ch["ptr"] for ch in part["checks"]}
        funcs["finish"]["uses_params"] = any(d[1].startswith("P_") for d in finish["decls"])
        # per-sample gradient norms: the block's backward pass with each lane's gradient kept apart,
        # where every statement allows it; else (None) one sample at a time through part and finish
        lane_bwd = per_lane.rewrite(sample_bwd, ["D_" + c(n) for n in B.layout["batch_adj"]]) \
            if per_sample else None
        if lane_bwd is not None:
            norms = _function(B, "norms", segs, uses["loss"], lane_bwd, ["D_" + c(prog.loss)], True)
            norms["sample_bwd"] = lane_bwd
            norms["uses_params"] = any(d[1].startswith("P_") for d in norms["decls"]) or norms["seg_params"]
            norms["uses_args"] = {g["src"] for g in norms["gathers"]} | {ch["ptr"] for ch in norms["checks"]}
            funcs["norms"] = norms
        funcs["finish"]["uses_grad"] = any(d[1].startswith("G_") for d in finish["decls"])
    real_ins = [t for t in prog.inputs if t.dropout is None]
    generic = None
    if len(prog.inputs) == 1 and real_ins and len(prog.targets) == 1 and len(outputs) == 1:
        tg = prog.targets[0]
        generic = dict(input_size=real_ins[0].size, target_size=tg.size, target_int=tg.dtype == INT,
                       target_ctype="int32_t" if tg.dtype == INT else M + "_real", output_size=outputs[0]["size"])
    ctx = dict(
        M=M, MU=M.upper(), real=B.real_t, dtype=dtype, real_bytes=4 if dtype == "float32" else 8,
        inference_only=inference_only, abi_version=ABI_VERSION, generic=generic, errors=abi.error_codes("c"),
        inputs=B.args(("input",)), targets=B.args(("target",)), outputs=outputs,
        params=B.layout["params"], n_params=B.layout["n_params"], ws=B.layout["ws"], ints=B.layout["ints"],
        frozen=_frozen_rows(B, dtype), n_frozen=B.layout["n_frozen"],
        lanes=B.lanes, sample_adj=B.layout["sample_adj_range"], batch_adj=B.layout["batch_adj_range"],
        loss="V_" + B.c[prog.loss], loss_adj="D_" + B.c[prog.loss], loss_per_sample=loss_st.scope == "sample", per_lane="norms" in funcs,
        reg=("V_" + B.c[prog.reg]) if prog.reg else None, reg_adj=("D_" + B.c[prog.reg]) if prog.reg else None,
        f=funcs, segments=segs, helpers=helper_functions(B.helpers, dtype),
        model_hash=_export_hash(prog, B), gradc_version=__version__, max_threads=abi.MAX_THREADS,
        # float32 sums over a batch: in chunks, added with compensation (templates/c/model.c.j2)
        chunked=dtype == "float32" and not inference_only and loss_st.scope == "sample",
        badj_n=0 if inference_only else B.layout["batch_adj_range"][1].at(1) - B.layout["batch_adj_range"][0].at(1),
        suffix="f" if dtype == "float32" else "", lit=(lambda x: f"{x}F" if dtype == "float32" else x),
    )
    ctx["info"] = _info_record(B, prog, ctx, segs, funcs, inference_only)
    env = templates()
    c_text = env.get_template("c/model.c.j2").render(ctx)
    h = env.get_template("c/model.h.j2").render(ctx)
    cdef = env.get_template("c/cdef.j2").render(ctx)
    layout = dict(B.layout, c_names=B.c, prefix=M, model_hash=ctx["model_hash"])
    return Source(M, c_text, h, cdef, layout)


def _param_literals(name, values, dtype):
    """A parameter's values as C literals of ``dtype``, refusing NaN and Inf by name."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"parameter {name!r} holds NaN or Inf; refusing to export it")
    return [c_literal(v, dtype) for v in a]


def _frozen_rows(B, dtype):
    """The frozen parameters' values as rows of C literals, in their layout order."""
    vals = [v for p in B.layout["frozen"] for v in _param_literals(p["name"], B.frozen[p["name"]], dtype)]
    return [", ".join(vals[i:i + 8]) for i in range(0, len(vals), 8)]


def _export_hash(prog, B):
    """The model hash: the program's, and with frozen parameters also which they are and their values
    (their source is another object than the full model's)."""
    if not B.frozen:
        return prog.digest()
    import hashlib
    h = hashlib.sha256(prog.digest().encode())
    for p in B.layout["frozen"]:
        h.update(p["name"].encode() + b"\0" + np.ascontiguousarray(B.frozen[p["name"]], dtype=np.float64).tobytes())
    return h.hexdigest()


#: the stack an entry point needs besides its register tiles: frames, saved registers, spills and
#: scalar locals of the call chain (tests/test_embed.py and tests/test_mcu.py measure below it)
STACK_BASE = 1024
STACK_PER_NEST = 16


def _tile_accumulators(nodes):
    """How many block-wide accumulator arrays (``acc[GC_L]``) the statements ``nodes`` declare."""
    n = 0
    for x in nodes:
        if isinstance(x, kir.LaneTile):
            n += len(x.accs)
        if isinstance(x, kir.Node):
            n += _tile_accumulators(x.children())
    return n


#: the most bytes of a declared name the model record holds (longer names are cut there)
NAME_BYTES = 255


def c_string(text):
    """``text`` as a C string literal that is safe whatever it holds: ASCII letters and digits as
    they are, every other byte (``_``, quotes, backslashes, ``?`` of a trigraph, ``*/``, newlines,
    UTF-8) as an octal escape, so the source holds no token of the name but runs of letters and
    digits (not even a reserved ``_X`` or ``__LINE__``)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    raw = text.encode("utf-8")
    if len(raw) > NAME_BYTES:       # C99 compilers need to take strings of 4,095 characters only
        raw = raw[:NAME_BYTES]
    return '"' + "".join(chr(b) if chr(b) in safe else f"\\{b:03o}" for b in raw) + '"'


def _info_record(B, prog, ctx, segs, funcs, inference_only):
    """What ``NAME_info()`` returns: every tensor of the C interface (name, kind, shape, offset,
    the id range of an int32 input used as an index or of a class label), the sizes a caller
    allocates, and an upper bound of the stack an entry point uses."""
    rows = []
    kinds = [("param", "PARAM"), ("input", "INPUT")] + ([] if inference_only else [("target", "TARGET")])
    params = {p["name"]: p for p in B.layout["params"]}
    frozen = {p["name"]: p for p in B.layout["frozen"]}
    for kind, macro in kinds:
        for t in prog.tensors.values():
            if t.kind != kind:
                continue
            bounds = prog.int_bounds.get(t.name)
            where = params.get(t.name) or frozen.get(t.name) or {"offset": 0}
            rows.append(dict(name=c_string(t.name), c=B.c[t.name], kind="FROZEN" if t.name in frozen else macro,
                             is_int=int(t.dtype == INT), shape=list(t.shape), size=t.size,
                             offset=where["offset"], ids=[b or 0 for b in bounds] if bounds else None))
    for o in prog.outputs:
        t = prog.tensors[o]
        rows.append(dict(name=c_string(o), c=B.c[o], kind="OUTPUT", is_int=0, shape=list(t.shape), size=t.size,
                         offset=0, ids=None))
    nodes = [n for s in segs for n in s["nests"]]
    for f in funcs.values():
        if isinstance(f, dict):
            for key in ("sample_bwd", "batch_bwd"):
                nodes += list(f.get(key, ()) or ())
    accs = _tile_accumulators(nodes) + (1 if "norms" in funcs else 0)     # grad_norms' ss[GC_L]
    # values a compiler keeps across the nests of one function (it inlines them into the block
    # loop): measured at -Os and -O2, at most about 16 bytes a nest (a GRU unrolled over 12 steps)
    nests = sum(1 for n in nodes if isinstance(n, kir.Nest))
    stack = STACK_BASE + accs * B.lanes * ctx["real_bytes"] + STACK_PER_NEST * nests
    return dict(tensors=rows, stack=stack)


def pr_number(x, dtype):
    """A numeric coefficient as a C literal of the model's type."""
    return Printer(dtype, {}, {}, DTYPES[dtype]).doprint(sp.sympify(x))


def _slope(c, v):
    """|dc/dv| for an affine index c; 1 when it is not a number (a gather's span is not known)."""
    k = c.coeff(v)
    return abs(int(k)) if k.is_Integer else 1


def _unroll(extent, most=4):
    """How many outputs of a per-sample reduction to compute at once: the largest divisor of
    ``extent`` up to ``most`` (and 8)."""
    for u in (8, 7, 6, 5, 4, 3, 2):
        if u <= most and extent % u == 0:
            return u
    return 1


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
        lits = _param_literals(p["name"], params[p["name"]], dtype)
        rows.append(dict(p, rows=[", ".join(lits[i:i + 6]) for i in range(0, len(lits), 6)]))
    M = src.name
    return templates().get_template("c/weights.c.j2").render(M=M, MU=M.upper(), params=rows,
                                                             model_hash=src.layout["model_hash"])


def render_cmake(src, weights, selftest):
    """``CMakeLists.txt`` beside an export: the model as a static library (and its self-test)."""
    M = src.name
    return templates().get_template("c/CMakeLists.txt.j2").render(M=M, MU=M.upper(), weights=weights,
                                                                  selftest=selftest)


def render_selftest(src, inputs, outputs, dtype, int8_tol=None):
    """``NAME_selftest.c``: stored inputs (dict name -> array (n, ...), int32 or real) and the outputs
    expected for them (dict name -> array), and a check of ``NAME_forward`` against them.
    ``int8_tol``: for an int8 export (no weights argument), the tolerance as C text ("0": exact)."""
    M = src.name
    c = src.layout["c_names"]

    def table(prefix, name, a):
        a = np.asarray(a)
        flat = a.reshape(-1)
        if a.dtype == np.int32:
            lits, ctype = [str(int(v)) for v in flat], "int32_t"
        else:
            lits, ctype = [c_literal(v, dtype) for v in flat], M + "_real"
        return dict(var=prefix + c[name], ctype=ctype, count=len(lits),
                    rows=[", ".join(lits[i:i + 6]) for i in range(0, len(lits), 6)])
    arrays = [table("in_", k, v) for k, v in inputs.items()] + [table("want_", k, v) for k, v in outputs.items()]
    n = len(next(iter(inputs.values()))) if inputs else len(next(iter(outputs.values())))
    outs = [dict(name=c[k], size=int(np.prod(np.shape(v)[1:], dtype=int))) for k, v in outputs.items()]
    tol = int8_tol or ("1e-5" if dtype == "float32" else "1e-12")
    return templates().get_template("c/selftest.c.j2").render(
        M=M, MU=M.upper(), n=n, arrays=arrays, inputs=arrays[:len(inputs)], outputs=outs, tol=tol,
        int8=int8_tol is not None)
