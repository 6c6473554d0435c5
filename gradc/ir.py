"""The IR: a model as a DAG of tensor stages in a loop-nest normal form.

A ``Stage`` defines one tensor elementwise over its output indices ``idx``::

    T[idx] = body                       (op "assign")
    T[idx] = Sum over red of body       (op "sum")
    T[idx] = Max over red of body       (op "max": a shift for stability, no gradient)

where ``body`` holds no ``Sum`` and reads other tensors at affine indices (or
at an int32 input, a gather). A tensor built from a SymPy Matrix is a stage
with explicit ``elements`` instead (straight-line code).

``lower(spec)`` turns the user's ``ModelSpec`` into a ``Program``: it applies
the stability rewrites, checks every symbol, function, shape and index, and
splits nested sums into their own reduction stages, so
``relu(Sum(W[i,k]*x[k], k) + b[i])`` becomes ``z[i] = Sum_k W[i,k]*x[k]`` and
``h[i] = Max(0, z[i] + b[i])``.

Identical stages are made once (``_Lowering.stage_key``): a Sum written three
times, in one expression or in several definitions, under any name of its
bound index, becomes one reduction stage that every use reads (so the
backward pass adds every use's contribution into that stage's one adjoint);
an intermediate a helper defines twice (``~`` names) is made once too.

Example::

    prog = lower(model.spec())
    for st in prog.stages:
        print(st)
"""
import hashlib
import os
from dataclasses import dataclass, field

import sympy as sp

from .errors import ModelError, nested_too_deeply
from .functions import SUPPORTED_FUNCTIONS
from .model import INT, MAX_ELEMENTS, REAL, UNROLL_LIMIT, unroll_hint
from .rewrite import is_log_sum_exp, stabilize


@dataclass
class TensorInfo:
    name: str
    kind: str          # input | target | param | stage
    shape: tuple
    dtype: str = REAL
    init: dict = None
    scope: str = None  # "sample" (per sample) or "batch" (once per call)
    where: tuple = None
    dropout: float = None  # for a dropout-mask input: the drop probability

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Stage:
    name: str
    idx: tuple = ()
    red: tuple = ()           # ((symbol, extent), ...)
    op: str = "assign"        # assign | sum | max
    body: sp.Expr = None
    elements: list = None
    scope: str = "sample"
    where: tuple = None

    @property
    def grad(self):
        return self.op != "max"

    def bodies(self):
        return list(self.elements) if self.elements is not None else [self.body]

    def __str__(self):
        lhs = f"{self.name}[{', '.join(map(str, self.idx))}]" if self.idx else self.name
        if self.elements is not None:
            return f"{self.name} = [{', '.join(map(str, self.elements))}]"
        if self.red:
            lim = ", ".join(f"{k}<{n}" for k, n in self.red)
            return f"{lhs} = {self.op}_{{{lim}}} {self.body}"
        return f"{lhs} = {self.body}"


@dataclass
class Program:
    """A lowered model: tensors, stages in topological order, and what the loss is."""
    name: str
    tensors: dict
    stages: list
    loss: str
    reg: str = None
    outputs: list = field(default_factory=list)
    # int32 input -> per element, the exclusive upper bound of its use as an index (None: not an index)
    int_bounds: dict = field(default_factory=dict)

    def of_kind(self, kind):
        return [t for t in self.tensors.values() if t.kind == kind]

    @property
    def params(self):
        return self.of_kind("param")

    @property
    def inputs(self):
        return self.of_kind("input")

    @property
    def targets(self):
        return self.of_kind("target")

    def stage(self, name):
        return next(s for s in self.stages if s.name == name)

    def canonical(self):
        """A text that determines the generated code: the input of the cache key."""
        lines = [f"model {self.name}"]
        for t in self.tensors.values():
            lines.append(f"tensor {t.name!r} {t.kind} {t.shape} {t.dtype} {sorted((t.init or {}).items())} {t.scope}"
                         + (f" dropout {t.dropout!r}" if t.dropout is not None else ""))
        for s in self.stages:
            lines.append(f"stage {s.name!r} {s.op} {s.scope} {[k.name for k in s.idx]} "
                         f"{[(k.name, n) for k, n in s.red]} "
                         + (sp.srepr(s.body) if s.elements is None else str([sp.srepr(e) for e in s.elements])))
        lines.append(f"loss {self.loss!r} reg {self.reg!r} outputs {self.outputs!r} bounds {sorted(self.int_bounds.items())}")
        return "\n".join(lines)

    def locations(self):
        """Where each stage was written (file name and line): what the generated code's comments cite."""
        return "\n".join(f"{s.name!r} {os.path.basename(s.where[0])}:{s.where[1]}" if s.where else f"{s.name!r}"
                         for s in self.stages)

    def digest(self):
        return hashlib.sha256(self.canonical().encode()).hexdigest()


def unflat(e, shape):
    """The multi-index (SymPy integers) of flat row-major position ``e`` in ``shape``."""
    idx = []
    for s in reversed(shape):
        idx.append(sp.Integer(e % s))
        e //= s
    return tuple(reversed(idx))


def guarded(st, shape):
    """A guarded read, ``T[o] = value if lo <= o <= hi else 0`` (zero padding:
    ``P[c, i, j] = x[c, i - 1, j - 1]`` where ``1 <= i <= H`` and ``1 <= j <= W``): ``(value,
    {loop index: (first, last)})``, the values of each output index ``value`` is read for. The
    reads in ``value`` need to be in range only there; the backward pass loops over that box
    only, so no adjoint is written out of range. None for any other stage."""
    if st.elements is not None or st.red or not isinstance(st.body, sp.Piecewise) or len(st.body.args) != 2:
        return None
    (val, cond), (other, last) = st.body.args
    if last != True or other != 0 or val.has(sp.Sum):  # noqa: E712 (a SymPy boolean)
        return None
    bounds = {k: [0, n - 1] for k, n in zip(st.idx, shape)}
    for rel in (cond.args if isinstance(cond, sp.And) else (cond,)):
        if not isinstance(rel, (sp.Ge, sp.Gt, sp.Le, sp.Lt)):
            return None
        d = sp.expand(rel.lhs - rel.rhs)          # d >= 0, d > 0, d <= 0 or d < 0
        terms = d.as_coefficients_dict()
        var = [v for v in terms if v != 1]
        if len(var) != 1 or var[0] not in bounds or terms[var[0]] not in (1, -1) \
                or not sp.sympify(terms.get(sp.S.One, 0)).is_Integer:
            return None
        v, s, c = var[0], int(terms[var[0]]), int(terms.get(sp.S.One, 0))
        if isinstance(rel, (sp.Le, sp.Lt)):       # as s*v + c >= 0
            s, c = -s, -c
        if isinstance(rel, (sp.Gt, sp.Lt)):
            c -= 1
        if s == 1:        # v >= -c
            bounds[v][0] = max(bounds[v][0], -c)
        else:             # v <= c
            bounds[v][1] = min(bounds[v][1], c)
    return val, {k: tuple(b) for k, b in bounds.items()}


def index_range(e, ranges):
    """The least and greatest value of the integer index ``e`` (affine in the loop indices, with
    floor division and remainders by positive integers: ``f // 9``, ``(f % 9) // 3``) while each
    loop index ``k`` runs over ``0 .. ranges[k] - 1``; ValueError when ``e`` is not of that form
    or divides a value that can be negative (C's ``/`` and ``%`` truncate towards zero)."""
    e = sp.sympify(e)
    if e.is_Integer:
        return int(e), int(e)
    if e in ranges:
        return 0, ranges[e] - 1
    if isinstance(e, sp.Add):
        lo = hi = 0
        for a in e.args:
            a_lo, a_hi = index_range(a, ranges)
            lo, hi = lo + a_lo, hi + a_hi
        return lo, hi
    if isinstance(e, sp.Mul):
        c, rest = e.as_coeff_Mul()
        if c.is_Integer and not rest.is_Mul:
            a, b = index_range(rest, ranges)
            return (int(c) * a, int(c) * b) if c > 0 else (int(c) * b, int(c) * a)
    if isinstance(e, sp.floor):
        num, den = sp.fraction(sp.together(e.args[0]))
        if den.is_Integer and den > 0:
            a, b = index_range(num, ranges)
            if a < 0:
                raise ValueError(f"{num} can be negative ({a}), so its floor division is not C's")
            return a // int(den), b // int(den)
    if isinstance(e, sp.Mod) and e.args[1].is_Integer and e.args[1] > 0:
        a, b = index_range(e.args[0], ranges)
        n = int(e.args[1])
        if a < 0:
            raise ValueError(f"{e.args[0]} can be negative ({a}), so its remainder is not C's")
        return (a % n, b % n) if a // n == b // n else (0, n - 1)
    raise ValueError("an index must be affine in the loop indices, with // and % by positive integers")


def read_symbol(t):
    """The SymPy object a read of tensor ``t`` is built from."""
    return sp.Symbol(t.name, **({"integer": True} if t.dtype == INT else {"real": True}))


def reads(expr, tensors):
    """The distinct tensor reads in ``expr``: a list of (tensor name, index tuple, read expression).

    A rank-0 tensor is read as its Symbol, index ().
    """
    out, seen = [], set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Indexed):
            key = node
            name, idx = node.base.label.name, tuple(node.indices)
        elif isinstance(node, sp.Symbol) and node.name in tensors and tensors[node.name].shape == () \
                and node == read_symbol(tensors[node.name]):
            key, name, idx = node, node.name, ()
        else:
            continue
        if key not in seen:
            seen.add(key)
            out.append((name, idx, node))
    return out


class _Lowering:
    def __init__(self, spec):
        self.spec = spec
        self.tensors = {}
        for d in spec.decls.values():
            scope = {"param": "batch", "input": "sample", "target": "sample"}.get(d.kind)
            self.tensors[d.name] = TensorInfo(d.name, d.kind, d.shape, d.dtype, d.init, scope, d.where,
                                              getattr(d, "dropout", None))
        self.stages = []
        self.int_bounds = {}
        self.n_aux = 0
        self.what = {}          # stage -> how messages name it ("the loss", "tensor 'h'")
        self.shared = {}        # stage_key -> the name of the stage that computes it
        self.alias = {}         # read symbol of a dropped duplicate -> that of the stage it equals
        self.canon = []         # the dummies stage_key puts in place of loop indices, by position
        self.outputs = set(spec.outputs)

    def fresh(self, base):
        while True:
            self.n_aux += 1
            name = f"~{base}{self.n_aux}"
            if name not in self.tensors:
                return name

    # ---- checks --------------------------------------------------------
    def check_symbols(self, expr, bound, where, what):
        in_index = {n for r in expr.atoms(sp.Indexed) for i in r.indices for n in sp.preorder_traversal(i)}
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Sum):
                for lim in node.limits:
                    if len(lim) != 3:
                        raise ModelError(f"in {what}: a Sum needs limits (k, lo, hi)", where)
                    if lim[0].name in self.tensors:
                        raise ModelError(f"in {what}: sum index {lim[0]} has the name of a tensor", where)
                    for b in lim[1:]:
                        if not sp.sympify(b).is_Integer:
                            raise ModelError(f"in {what}: the limits of the sum over {lim[0]} must be integers, got {lim[1]}..{lim[2]}", where)
                    n = int(lim[2]) - int(lim[1]) + 1
                    if n > MAX_ELEMENTS or max(abs(int(lim[1])), abs(int(lim[2]))) > MAX_ELEMENTS:
                        raise ModelError(f"in {what}: the sum over {lim[0]} runs over {lim[1]}..{lim[2]} "
                                         f"({n:,} terms); gradc loops use 32-bit ints, so a sum's limits must "
                                         f"stay within +-{MAX_ELEMENTS:,}", where)
            elif isinstance(node, sp.Indexed):
                name = node.base.label.name
                t = self.tensors.get(name)
                if t is None:
                    raise ModelError(f"in {what}: unknown tensor {name!r}", where)
                if len(node.indices) != len(t.shape):
                    raise ModelError(f"in {what}: {t.kind} {name!r} has shape {t.shape} but is read with {len(node.indices)} indices", where)
            elif isinstance(node, sp.Piecewise) and node.args[-1].cond != True:  # noqa: E712
                raise ModelError(f"in {what}: a Piecewise needs a last branch (value, True) for when no "
                                 f"condition holds", where)
            elif isinstance(node, (sp.And, sp.Or, sp.Not, sp.logic.boolalg.ITE)):
                pass                     # conditions of a Piecewise
            elif isinstance(node, sp.Mod):
                if node not in in_index:
                    raise ModelError(f"in {what}: {node} (a remainder) may appear in tensor indices only, "
                                     f"as in p[f // 9, f % 9]", where)
            elif isinstance(node, sp.core.function.Application):
                if node.func not in SUPPORTED_FUNCTIONS:
                    hint = ("; SymPy writes it when it cannot prove a value real, as for Abs or a fractional "
                            "power of sqrt(v + eps) with v possibly negative: write sqrt(Max(0, v) + eps) or "
                            "sqrt(Abs(v) + eps)") if node.func in (sp.atan2, sp.arg, sp.re, sp.im) else ""
                    raise ModelError(f"in {what}: unsupported function {node.func.__name__!r}; gradc compiles "
                                     + ", ".join(sorted(f.__name__ for f in SUPPORTED_FUNCTIONS)) + hint, where)
            elif node in (sp.nan, sp.zoo, sp.oo, -sp.oo) or node == sp.I:
                raise ModelError(f"in {what}: {node} is not a real finite number", where)
            elif isinstance(node, (sp.Integral, sp.Derivative, sp.Product, sp.Subs)):
                raise ModelError(f"in {what}: unsupported construct {type(node).__name__}", where)
        sums_bound, labels = set(), set()
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Sum):
                sums_bound |= {lim[0] for lim in node.limits}
            elif isinstance(node, sp.Indexed):
                labels.add(node.base.label)
        for s in expr.free_symbols | sums_bound:
            if not isinstance(s, sp.Symbol) or s in bound or s in sums_bound or s in labels:
                continue
            t = self.tensors.get(s.name)
            if t is not None and s == read_symbol(t):
                if t.shape != ():
                    raise ModelError(f"in {what}: {t.kind} {s.name!r} has shape {t.shape}; index it", where)
                continue
            hint = f" (a tensor {s.name!r} exists: use the object gradc returned for it)" if t is not None else ""
            raise ModelError(f"in {what}: unknown symbol {s.name!r}{hint}", where)

    def check_index(self, name, idx, ranges, where, what):
        t = self.tensors[name]
        for d, (e, n) in enumerate(zip(idx, t.shape)):
            e = sp.sympify(e)
            src = self._int_source(e)
            if src is not None:
                name_i, elem = src
                size = self.tensors[name_i].size
                b = self.int_bounds.setdefault(name_i, [None] * size)
                for j in (range(size) if elem is None else [elem]):
                    b[j] = n if b[j] is None else min(b[j], n)
                continue
            if e.has(sp.floor, sp.Mod):           # index arithmetic: p[f // 9, (f % 9) // 3, f % 3]
                if reads(e, self.tensors):
                    raise ModelError(f"in {what}: index {e} of {name!r} divides an int32 input; a gather takes "
                                     f"the id itself ({name}[u]): make the tensor it reads a stage of the shape "
                                     f"the ids index (m.define, or a view such as {name}.flatten()[u])", where)
                try:
                    lo, hi = index_range(e, ranges)
                except ValueError as err:
                    raise ModelError(f"in {what}: index {e} of {name!r}: {err}", where)
                if lo < 0 or hi >= n:
                    raise ModelError(f"in {what}: index {e} of {t.kind} {name!r} runs over {lo}..{hi}, "
                                     f"outside dimension {d} of size {n}", where)
                continue
            lo = hi = 0
            e = sp.expand(e)            # -(k - 2), as SymPy's Abs writes 2 - k, is affine too
            for term, coeff in e.as_coefficients_dict().items():
                if not sp.sympify(coeff).is_Integer:
                    raise ModelError(f"in {what}: index {e} of {name!r} must have integer coefficients", where)
                c = int(coeff)
                if term == 1:
                    lo += c
                    hi += c
                elif term in ranges:
                    a, b = c * 0, c * (ranges[term] - 1)
                    lo += min(a, b)
                    hi += max(a, b)
                else:
                    raise ModelError(f"in {what}: index {e} of {name!r} must be an affine function of loop "
                                     f"indices or an int32 input", where)
            if lo < 0 or hi >= n:
                raise ModelError(f"in {what}: index {e} of {t.kind} {name!r} runs over {lo}..{hi}, "
                                 f"outside dimension {d} of size {n}", where)

    def _int_source(self, e):
        """(int32 tensor, flat element or None for any) when index ``e`` is a read of an int32 input."""
        if isinstance(e, sp.Symbol) and e.name in self.tensors:
            t = self.tensors[e.name]
            if t.dtype == INT and t.kind in ("input", "target") and t.shape == ():
                return t.name, 0
        if isinstance(e, sp.Indexed):
            t = self.tensors.get(e.base.label.name)
            if t is not None and t.dtype == INT and t.kind in ("input", "target"):
                if all(sp.sympify(i).is_Integer for i in e.indices):
                    flat = 0
                    for i, n in zip(e.indices, t.shape):
                        flat = flat * n + int(i)
                    return t.name, flat
                return t.name, None
        return None

    # ---- splitting -----------------------------------------------------
    def add_def(self, name, shape, idx, body, elements, op, red, where, what, droppable=True):
        """Lower one definition to its stage (after the stages its nested sums become).

        ``droppable``: whether a helper's intermediate (a ``~`` name, not an output) that equals
        an earlier stage may be dropped, its readers reading that stage instead.
        """
        self.what[name] = what
        info = self.tensors.setdefault(name, TensorInfo(name, "stage", shape, REAL, None, None, where))
        info.where = where
        if self.alias:        # reads of dropped duplicates read the stage they equal
            body = body.xreplace(self.alias) if body is not None else None
            elements = [sp.sympify(e).xreplace(self.alias) for e in elements] if elements is not None else None
        if elements is not None:
            els = []
            for e in elements:
                e = stabilize(e)
                self.check_symbols(e, set(), where, what)
                els.append(self.split(e, [], {}, where, what))
            return self.push_def(Stage(name, (), (), "assign", None, els, where=where), droppable)
        body = stabilize(body)
        loops = dict(zip(idx, shape))
        self.check_symbols(body, set(idx) | {k for k, _ in red}, where, what)
        if red:
            loops.update(dict(red))
            return self.push_def(Stage(name, tuple(idx), tuple(red), op,
                                       self.split(body, list(idx) + [k for k, _ in red], loops, where, what),
                                       where=where), droppable)
        if isinstance(body, sp.Sum):
            red, summand = self.limits(body, where, what)
            loops.update(dict(red))
            return self.push_def(Stage(name, tuple(idx), tuple(red), "sum",
                                       self.split(summand, list(idx) + [k for k, _ in red], loops, where, what),
                                       where=where), droppable)
        self.push_def(Stage(name, tuple(idx), (), "assign", self.split(body, list(idx), loops, where, what),
                            where=where), droppable)

    # ---- sharing identical stages ----------------------------------------
    def stage_key(self, op, shape, idx, red, body=None, elements=None):
        """What determines the tensor a stage computes: its op, output shape, reduction extents
        and body, with the output indices and the reduction indices replaced by fixed dummies
        by position. Two stages with one key compute the same values, so
        ``Sum_k W[i, k]*x[k]`` and ``Sum_j W[i2, j]*x[j]`` (over the same extents) have one key,
        while ``Sum_k W[i, k]*x[k]`` and ``Sum_k W[k, i]*x[k]`` (another output index map) do not.
        """
        loops = list(idx) + [k for k, _ in red]
        while len(self.canon) < len(loops):
            self.canon.append(sp.Dummy(f"o{len(self.canon)}", integer=True))
        if elements is not None:
            return ("elements", tuple(shape), tuple(elements))
        return (op, tuple(shape), tuple(n for _, n in red), body.xreplace(dict(zip(loops, self.canon))))

    def key_of(self, st):
        return self.stage_key(st.op, self.tensors[st.name].shape, st.idx, st.red, st.body, st.elements)

    def push_def(self, st, droppable):
        """Push a definition's stage, unless an earlier stage computes the same tensor: then a
        helper's intermediate is dropped (later bodies read the earlier stage), and a named
        reduction becomes a copy of the earlier one (so the sum is computed once and the
        name stays); a named elementwise duplicate is kept as it is."""
        key = self.key_of(st)
        prev = self.shared.get(key)
        if prev is None:
            self.push(st)
            self.shared[key] = st.name
            return
        if droppable and st.name.startswith("~") and st.name not in self.outputs:
            self.alias[sp.Symbol(st.name, real=True)] = sp.Symbol(prev, real=True)
            del self.tensors[st.name]
            return
        if st.red:
            base = sp.Symbol(prev, real=True)
            self.push(Stage(st.name, st.idx, (), "assign", sp.IndexedBase(base)[st.idx] if st.idx else base,
                            where=st.where))
            return
        self.push(st)

    def limits(self, s, where, what):
        """The reduction loops of ``Sum`` s, shifted to start at 0, and its summand."""
        summand, red = s.function, []
        for k, lo, hi in s.limits:
            lo, hi = int(lo), int(hi)
            if hi < lo:
                raise ModelError(f"in {what}: empty sum over {k} ({lo}..{hi})", where)
            if lo != 0:
                summand = summand.xreplace({k: k + lo})
            red.append((k, hi - lo + 1))
        return red, summand

    def split(self, expr, order, loops, where, what):
        """Replace every Sum in ``expr`` by a read of a reduction stage (one per distinct sum)."""
        done = {}            # a subexpression met again (a Sum written twice) is split once

        def visit(e):
            if e not in done:
                done[e] = split_node(e)
            return done[e]

        def split_node(e):
            if is_log_sum_exp(e) and not self.shifted(e):
                inner = self.unshadow(e.args[0], loops)     # its index may be an enclosing loop's name
                if inner is not e.args[0]:
                    e = sp.log(inner, evaluate=False)
                return visit(self.log_sum_exp(e, order, loops, where, what))
            if isinstance(e, sp.Sum):
                e = self.unshadow(e, loops)
                red, summand = self.limits(e, where, what)
                inner_loops = dict(loops)
                inner_loops.update(dict(red))
                inner = self.split(summand, order + [k for k, _ in red], inner_loops, where, what)
                free = [v for v in order if v in inner.free_symbols]
                return self.new_stage(free, loops, red, "sum", inner, where, what)
            if not e.args or isinstance(e, sp.Indexed):
                return e
            new = [visit(a) for a in e.args]
            return e.func(*new) if any(a is not b for a, b in zip(new, e.args)) else e
        return visit(expr)

    def unshadow(self, e, loops):
        """A Sum whose index has the name of an enclosing loop's index (valid SymPy: the inner one
        is bound) gets a fresh index, so the two loops stay apart."""
        clash = [lim[0] for lim in e.limits if lim[0] in loops]
        if not clash:
            return e
        self.n_aux += 1
        ren = {k: sp.Symbol(f"{k.name}.s{self.n_aux}", integer=True) for k in clash}
        return sp.Sum(e.function.xreplace(ren), *[(ren.get(k, k), lo, hi) for k, lo, hi in e.limits])

    def shifted(self, e):
        """Whether log(Sum(exp(u))) already subtracts a max stage from u (the stable form)."""
        u = e.args[0].function.args[0]
        names = {r.base.label.name if isinstance(r, sp.Indexed) else r.name
                 for r in u.atoms(sp.Indexed, sp.Symbol)}
        return any(n in self.tensors and self.max_stage(n) for n in names)

    def max_stage(self, name):
        return any(st.name == name and st.op == "max" for st in self.stages)

    def log_sum_exp(self, e, order, loops, where, what):
        # log(Sum(exp(u))) = m + log(Sum(exp(u - m))), m = max(u): finite for any u
        red, summand = self.limits(e.args[0], where, what)
        u = summand.args[0]
        inner_loops = dict(loops)
        inner_loops.update(dict(red))
        u_split = self.split(u, order + [k for k, _ in red], inner_loops, where, what)
        free = [v for v in order if v in u_split.free_symbols]
        mx = self.new_stage(free, loops, red, "max", u_split, where, what)
        lim = [(k, 0, n - 1) for k, n in red]
        return mx + sp.log(sp.Sum(sp.exp(u_split - mx), *lim))

    def new_stage(self, free, loops, red, op, body, where, what):
        """A read, at the loop indices ``free``, of the stage reducing ``body`` over ``red``: a new
        stage, or the earlier one with the same ``stage_key`` (the same sum written again)."""
        shape = tuple(loops[v] for v in free)
        key = self.stage_key(op, shape, free, red, body)
        name = self.shared.get(key)
        if name is None:
            name = self.fresh("r" if op == "sum" else "m")
            self.what[name] = what
            # fresh output indices keep every stage's loop variables its own
            idx = tuple(sp.Symbol(f"{v.name}.{name[1:]}", integer=True) for v in free)
            body = body.xreplace(dict(zip(free, idx)))
            self.tensors[name] = TensorInfo(name, "stage", shape, REAL, None, None, where)
            self.push(Stage(name, idx, tuple(red), op, body, where=where))
            self.shared[key] = name
        read = sp.IndexedBase(sp.Symbol(name, real=True))[tuple(free)] if free else sp.Symbol(name, real=True)
        return read

    def push(self, st):
        t = self.tensors[st.name]
        for k in list(st.idx) + [k for k, _ in st.red]:
            if k.name in self.tensors:
                raise ModelError(f"in {self.what[st.name]}: index {k.name!r} has the name of a tensor", st.where)
        ranges = dict(zip(st.idx, t.shape))
        ranges.update(dict(st.red))
        iterations = 1
        for n in ranges.values():
            iterations *= n
        if iterations > MAX_ELEMENTS:
            raise ModelError(f"in {self.what[st.name]}: a loop nest over {' x '.join(map(str, ranges.values()))} "
                             f"runs {iterations:,} iterations per sample; gradc loops use 32-bit ints, which "
                             f"allow at most {MAX_ELEMENTS:,}", st.where)
        scope, terms = "batch", 0
        guard = guarded(st, t.shape)
        shift = {}
        if guard is not None:       # reads in range only where the guard holds: over that box
            for k, (lo, hi) in guard[1].items():
                if hi < lo:
                    raise ModelError(f"in {self.what[st.name]}: the guard of this padded read never holds "
                                     f"for index {k} (it needs {lo} <= {k} <= {hi})", st.where)
                shift[k] = k + lo
                ranges[k] = hi - lo + 1
        for b in st.bodies():
            rs = reads(b, self.tensors)
            for name, idx, _ in rs:
                idx = tuple(sp.sympify(e).xreplace(shift) for e in idx) if shift else idx
                self.check_index(name, idx, ranges, st.where, self.what[st.name])
                if self.tensors[name].scope == "sample":
                    scope = "sample"
            terms += max(1, len(rs))
        # a loop body is written once; only straight-line (unrolled) code grows with the terms
        if not ranges and terms > UNROLL_LIMIT:
            raise ModelError(unroll_hint(self.what[st.name], terms), st.where)
        st.scope = t.scope = scope
        self.stages.append(st)


def _deps(prog):
    """For each stage, the set of leaf tensors (inputs, targets, params) it depends on."""
    deps = {}
    for st in prog.stages:
        d = set()
        for b in st.bodies():
            for name, _, _ in reads(b, prog.tensors):
                d |= deps.get(name, {name})
        deps[st.name] = d
    return deps


def depth(expr):
    """The nesting depth of ``expr`` (a leaf is 1), walked without recursion: ``depth(sin(sin(x))) == 3``."""
    memo, stack = {}, [(expr, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in memo:
            continue
        args = getattr(node, "args", ())
        if done:
            memo[id(node)] = 1 + max((memo[id(a)] for a in args), default=0)
        else:
            stack.append((node, True))
            stack.extend((a, False) for a in args if id(a) not in memo)
    return memo[id(expr)]


def deepest_where(prog):
    """Where the most deeply nested stage of ``prog`` was written (what a RecursionError blames)."""
    best, where = 0, None
    for st in prog.stages:
        for b in st.bodies():
            d = depth(b)
            if d > best and st.where:
                best, where = d, st.where
    return where


def lower(spec):
    """Lower a ``ModelSpec`` to a checked ``Program``; raises ``ModelError`` naming the line at fault."""
    try:
        return _lower(spec)
    except RecursionError:
        raise nested_too_deeply("lowering", spec.loss_where) from None


def _lower(spec):
    L = _Lowering(spec)
    for d in spec.defs:
        try:
            L.add_def(d.name, d.shape, d.idx, d.body, d.elements, d.op or "assign", d.red, d.where,
                      f"tensor {d.name!r}")
        except RecursionError:
            raise nested_too_deeply("lowering", d.where) from None
    loss = L.fresh("loss")
    L.add_def(loss, (), (), spec.loss, None, "assign", (), spec.loss_where, "the loss", droppable=False)
    reg = None
    if spec.reg:
        reg = L.fresh("reg")
        L.add_def(reg, (), (), sp.Add(*[e for e, _ in spec.reg]), None, "assign", (), spec.reg[0][1],
                  "the regularization", droppable=False)
    prog = Program(spec.name, L.tensors, L.stages, loss, reg, list(spec.outputs), L.int_bounds)
    from .model import MAX_ELEMENTS
    for kind, what in (("param", "parameters"), ("stage", "intermediate tensors")):
        total = sum(t.size for t in prog.tensors.values() if t.kind == kind)
        if total > MAX_ELEMENTS // 2:
            raise ModelError(f"the model's {what} hold {total:,} values together; gradc kernels index with "
                             f"32-bit ints, which allows at most {MAX_ELEMENTS // 2:,}", spec.loss_where)
    deps = _deps(prog)
    if reg is not None:
        for e, where in spec.reg:
            bad = [n for n in sorted(deps[reg]) if prog.tensors[n].kind != "param"]
            if bad:
                raise ModelError(f"regularization may use parameters only, but it reads "
                                 f"{prog.tensors[bad[0]].kind} {bad[0]!r}", where)
    for o in prog.outputs:
        bad = [n for n in sorted(deps.get(o, ())) if prog.tensors[n].kind == "target"]
        if bad:
            raise ModelError(f"output {o!r} depends on target {bad[0]!r}; outputs may use inputs and parameters only",
                             prog.tensors[o].where)
    if not any(prog.tensors[n].kind == "param" for n in deps[loss] | (deps[reg] if reg else set())):
        raise ModelError("the loss depends on no parameter: nothing to train", spec.loss_where)
    return prog
