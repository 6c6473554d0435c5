"""int8 inference: a trained model's forward pass as integer kernels, planned from its stages.

``plan(prog, params, calibration)`` reads the lowered program (``ir.Program``) and decides, stage
by stage, how the forward pass runs in int8:

- **linear** (dense and convolution): a ``sum`` stage whose body is a constant tensor (a parameter)
  times an activation, ``R[o] = Sum_r W[f(o, r)] * A[g(o, r)]``, at any affine index maps (so
  strides, dilation, groups and padding stages are all the same case). Weights are symmetric int8
  with one scale per output channel (the weight axes indexed by output indices only), the
  activation asymmetric int8 with a scale and zero point calibrated on data; products accumulate
  in int32, the bias is added in int32, and the sum is requantized with a fixed-point multiplier
  and shift (no float). The elementwise stage that reads it, ``act(R[o] + b[c])``, is fused: a
  ReLU-family activation (relu, relu6, any clamp) is the requantization's clamp; any other
  function of one value (tanh, sigmoid, leaky relu, gelu) is a 256-entry table after it. A linear
  stage whose consumers want real values (the logits) is dequantized straight from the sum.
- **move** (padding, flatten, reshape, slices) and **max** (max pooling): int8 in, int8 out, the
  same scale; a padded element is the zero point.
- **table**: an elementwise function of one int8 tensor, as a 256-entry table.
- **float**: anything else (a stage reading two activations, a norm, a gather) runs in float32, with
  its inputs dequantized and its output quantized again where an int8 stage reads it. ``report()``
  names these stages, and ``gradc export --quantize int8`` prints them.

Activation ranges are the min and max over the calibration data (always including 0, so that 0
and zero padding are exact), evaluated in float64 by ``evaluate``, a numpy interpreter of stages.

``QuantPlan.reference(inputs)`` runs the integer path in numpy. It is the specification of the
generated C (``codegen/int8.py``): every int8, int32 and float32 operation is the same, in the same
order, so the C's outputs equal it bit for bit on any IEEE-754 target (a float stage uses libm, so
a model with one matches to float32 rounding instead).

Example::

    qp = plan(prog, params, {"x": X_calib})
    print("\\n".join(qp.report()))
    out = qp.reference({"x": X_test})["logits"]
"""
import functools
import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .errors import ModelError
from .functions import PRIMITIVE_OF
from .ir import INT, Stage, reads

QMIN, QMAX = -128, 127
ACC_LIMIT = 2 ** 31 - 1
_CHUNK = 1 << 22          # grid elements evaluated at once
_SAMPLES = 512            # samples calibrated (and run by the reference) at once


# ---------------------------------------------------------------------------------------------
# evaluate: stages in numpy, over a batch

class _Grid:
    """The loop nest of a stage over n samples: axis 0 the sample, then idx, then red."""

    def __init__(self, n, axes):
        self.shape = (n,) + tuple(int(e) for _, e in axes)
        rank = len(axes) + 1
        self.sym = {}
        for k, (s, e) in enumerate(axes):
            shp = [1] * rank
            shp[k + 1] = int(e)
            self.sym[s] = np.arange(int(e)).reshape(shp)
        self.nax = np.arange(n).reshape([n] + [1] * len(axes))


class _Eval:
    """Values of SymPy bodies. ``env[name] = (array, batched)``: a batched array has the sample first."""

    def __init__(self, env, grid):
        self.env, self.g = env, grid

    def read(self, name, idx):
        a, batched = self.env[name]
        shape = a.shape[1:] if batched else a.shape
        ix = tuple(np.clip(self.index(i), 0, shape[d] - 1) for d, i in enumerate(idx))
        if batched:
            return a[(self.g.nax,) + ix]
        return a[ix] if ix else a

    def index(self, e):
        """An index expression as integers (``floor`` and ``Mod`` exactly, as C's / and %)."""
        e = sp.sympify(e)
        if e.is_Integer:
            return int(e)
        if isinstance(e, sp.Symbol):
            if e in self.g.sym:
                return self.g.sym[e]
            return np.asarray(self.read(e.name, ()), dtype=np.int64)
        if isinstance(e, sp.Indexed):
            return np.asarray(self.read(e.base.label.name, e.indices), dtype=np.int64)
        if isinstance(e, sp.floor):
            num, den = sp.fraction(sp.together(e.args[0]))
            return self.index(num) // int(den)
        if isinstance(e, sp.Mod):
            return self.index(e.args[0]) % int(e.args[1])
        if isinstance(e, sp.Add):
            out = 0
            for a in e.args:
                out = out + self.index(a)
            return out
        if isinstance(e, sp.Mul):
            c, rest = e.as_coeff_Mul()
            if c.is_Integer:
                return int(c) * self.index(rest)
        raise ModelError(f"int8: cannot evaluate the index {e}", where=None)

    def __call__(self, e):
        if isinstance(e, sp.Indexed):
            return self.read(e.base.label.name, e.indices)
        if isinstance(e, sp.Symbol):
            if e in self.g.sym:
                return self.g.sym[e]
            return self.read(e.name, ())
        if e.is_Integer:
            return int(e)
        if e.is_Number or isinstance(e, sp.NumberSymbol):
            return float(e)
        if e is sp.true:
            return True
        if e is sp.false:
            return False
        if isinstance(e, sp.Add):
            out = 0
            for a in e.args:
                out = out + self(a)
            return out
        if isinstance(e, sp.Mul):
            out = 1
            for a in e.args:
                out = out * self(a)
            return out
        if isinstance(e, sp.Pow):
            b, x = self(e.args[0]), e.args[1]
            if x.is_Integer and int(x) >= 0:
                return b ** int(x)
            return np.power(np.asarray(b, dtype=np.float64), self(x))
        if isinstance(e, (sp.Max, sp.Min)):
            f = np.maximum if isinstance(e, sp.Max) else np.minimum
            vals = [self(a) for a in e.args]
            out = vals[0]
            for v in vals[1:]:
                out = f(out, v)
            return out
        if isinstance(e, sp.Piecewise):
            out = self(e.args[-1].expr)
            for val, cond in reversed(e.args[:-1]):
                out = np.where(self(cond), self(val), out)
            return out
        if isinstance(e, sp.Rel):
            a, b = self(e.lhs), self(e.rhs)
            return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                    "==": np.equal, "!=": np.not_equal}[e.rel_op](a, b)
        if isinstance(e, sp.And):
            return functools.reduce(np.logical_and, [self(a) for a in e.args])
        if isinstance(e, sp.Or):
            return functools.reduce(np.logical_or, [self(a) for a in e.args])
        if isinstance(e, sp.Not):
            return np.logical_not(self(e.args[0]))
        if isinstance(e, (sp.floor, sp.Mod)) and not e.free_symbols - set(self.g.sym):
            return self.index(e)
        p = PRIMITIVE_OF.get(type(e))
        if p is not None and p.numpy is not None:
            with np.errstate(all="ignore"):
                return p.numpy(*[np.asarray(self(a), dtype=np.float64) for a in e.args])
        raise ModelError(f"int8: cannot evaluate {type(e).__name__} in {e}", where=None)


def _rows(env, lo, m):
    """``env`` with its batched arrays cut to samples lo .. lo + m - 1."""
    return {k: ((a[lo:lo + m], True) if b else (a, False)) for k, (a, b) in env.items()}


def evaluate(st, env, n, shape, body=None, dtype=np.float64):
    """The values of stage ``st`` (of shape ``shape``), or of ``body`` over its loop nest, for ``n``
    samples: an array (n, *shape). ``env`` as ``_Eval``'s."""
    if st.elements is not None:
        g = _Grid(n, [])
        vals = [np.broadcast_to(np.asarray(_Eval(env, g)(e), dtype=dtype).reshape(-1), (n,))
                for e in st.elements]
        return np.stack(vals, axis=1).reshape((n,) + tuple(shape))
    idx_ext = list(zip(st.idx, shape))
    axes = idx_ext + [(s, e) for s, e in st.red]
    per = max(1, int(np.prod([e for _, e in axes], dtype=np.int64)))
    step = max(1, _CHUNK // per)
    outs = []
    for lo in range(0, n, step):
        m = min(step, n - lo)
        sub = _rows(env, lo, m)
        g = _Grid(m, axes)
        v = np.broadcast_to(np.asarray(_Eval(sub, g)(st.body if body is None else body), dtype=dtype), g.shape)
        red_axes = tuple(range(1 + len(idx_ext), len(g.shape)))
        if st.red:
            v = v.sum(axis=red_axes) if st.op == "sum" else v.max(axis=red_axes)
        outs.append(np.array(v))
    return np.concatenate(outs, axis=0)


# ---------------------------------------------------------------------------------------------
# quantization parameters

@dataclass(frozen=True)
class QParams:
    """real = scale * (q - zero_point), q in [-128, 127]; scale a float32 value."""
    scale: float
    zero_point: int

    @staticmethod
    def of_range(lo, hi, what="a tensor"):
        """The parameters that cover [lo, hi] and 0 (all zeros: scale 1/255)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"int8: the calibration data make {what} NaN or Inf")
        if hi == lo:
            hi = lo + 1.0
        with np.errstate(over="ignore"):
            scale = float(np.float32((hi - lo) / 255.0))
        if not (math.isfinite(scale) and scale >= float(np.finfo(np.float32).tiny)):
            raise ValueError(f"int8: {what} spans [{lo:.3g}, {hi:.3g}] on the calibration data, beyond what a "
                             f"float32 scale holds")
        zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
        return QParams(scale, zp)


def round_half_away(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, np.floor(x + 0.5), -np.floor(-x + 0.5))


def multiplier(m):
    """A positive real multiplier as (m0, sh) with m ~ m0 * 2**-sh, 1 <= sh <= 61: m0 in
    [2**30, 2**31) (31 bits), fewer bits below 2**-31 (where |total * m| < 1 anyway); None for
    m >= 2**30, which no shift represents."""
    if not m > 0:
        return 0, 1
    frac, e = math.frexp(m)
    m0 = int(round(frac * (1 << 31)))
    if m0 == 1 << 31:
        m0 //= 2
        e += 1
    sh = 31 - e
    if sh > 61:
        m0 = (m0 + (1 << (sh - 62))) >> (sh - 61)
        sh = 61
    if sh < 1:
        return None
    return m0, sh


def requantize(total, m0, sh, zo, lo, hi):
    """int32 sums to int8, as the C's ``gc_q_requant``: round(total * m0 / 2**sh) (halves up) + zo,
    clamped to [lo, hi]. Arrays broadcast; m0 and sh per element."""
    x = np.asarray(total, dtype=np.int64) * np.asarray(m0, dtype=np.int64) + \
        (np.int64(1) << (np.asarray(sh, dtype=np.int64) - 1))
    q = (x >> np.asarray(sh, dtype=np.int64)) + zo
    return np.clip(q, lo, hi).astype(np.int8)


def quantize_f32(x, qp):
    """float32 reals to int8, as the C's ``gc_q_quantize``: x / scale in float32, rounded halves
    away from zero, plus the zero point, saturated."""
    v = np.asarray(x, dtype=np.float32) / np.float32(qp.scale)
    v = np.clip(v, np.float32(-256.0), np.float32(256.0))
    r = np.trunc(v)
    frac = v - r
    r = r.astype(np.int64) + (frac >= np.float32(0.5)) - (frac <= np.float32(-0.5))
    return np.clip(r + qp.zero_point, QMIN, QMAX).astype(np.int8)


def dequantize_f32(q, qp):
    return (np.asarray(q, dtype=np.int64) - qp.zero_point).astype(np.float32) * np.float32(qp.scale)


# ---------------------------------------------------------------------------------------------
# the plan

@dataclass
class Op:
    """One step of the int8 forward pass. ``kind``: quantize | dequantize | linear | move | max |
    table | float. ``out``: (tensor, "q" or "f"); ``ins``: the values it reads."""
    kind: str
    out: tuple
    ins: list
    stage: Stage = None
    src: str = None                  # the tensor a quantize/dequantize/move/max/table op reads
    q_in: QParams = None
    q_out: QParams = None
    info: dict = field(default_factory=dict)
    note: str = ""


class QuantPlan:
    """The int8 forward pass of a program: ``ops`` in order, and what they need."""

    def __init__(self, prog, ops, consts, shapes, outputs, where):
        self.prog, self.ops, self.consts, self.shapes = prog, ops, consts, shapes
        self.outputs, self.where = outputs, where

    def report(self):
        """One line per stage of the forward pass: how it runs (int8 or float, and why)."""
        return [x for x in map(self.report_line, self.ops) if x is not None]

    def report_line(self, op):
        name = op.out[0]
        label = self.where.get(name, name)
        if op.kind == "linear":
            what = "dense/conv" + (f", {op.info['act']}" if op.info.get("act") else "")
            chan = "per-channel" if op.info["chan"] else "per-tensor"
            return (f"int8  {label}: {what} (int32 sums, {chan} weight scales, "
                    f"{'int8 out' if op.out[1] == 'q' else 'float32 out'})")
        if op.kind in ("move", "max", "table"):
            what = {"move": "copy (padding, reshape)", "max": "max (pooling)", "table": "256-entry table"}
            return f"int8  {label}: {what[op.kind]}"
        if op.kind == "float":
            return f"float {label}: {op.note}"
        if op.kind == "quantize":
            label = name if _t(self.prog, name).kind == "input" else label
            return (f"float {label}: {'input' if label == name else 'float result'} quantized to int8 "
                    f"(scale {op.q_out.scale:.6g}, zero point {op.q_out.zero_point})")
        if op.kind == "const":
            return f"float {name}: a constant (it depends on the parameters alone)"
        return None         # a dequantize: where a float stage or an output reads int8

    @property
    def float_stages(self):
        return [op.out[0] for op in self.ops if op.kind == "float"]

    def digest(self):
        """sha256 of the program and every number of the plan: the export's model hash."""
        h = hashlib.sha256(self.prog.digest().encode())
        for op in self.ops:
            h.update(f"{op.kind}|{op.out}|{op.ins}|{op.q_in}|{op.q_out}|{op.src}".encode())
            for k in sorted(op.info):
                v = op.info[k]
                h.update(k.encode())
                h.update(np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
        for k in sorted(self.consts):
            h.update(k.encode() + np.ascontiguousarray(self.consts[k], dtype=np.float64).tobytes())
        return h.hexdigest()

    # the integer path in numpy: the C's specification
    def reference(self, inputs):
        """{output: float32 array (n, *shape)} computed exactly as the generated C computes it."""
        n = _batch(self.prog, inputs)
        if n > _SAMPLES:
            parts = [self.reference({k: np.asarray(v)[lo:lo + _SAMPLES] for k, v in inputs.items()})
                     for lo in range(0, n, _SAMPLES)]
            return {o: np.concatenate([p[o] for p in parts]) for o in self.outputs}
        env = {k: (np.asarray(v, dtype=np.float64), False) for k, v in self.consts.items()}
        vals = {}
        for t in self.prog.inputs:
            if t.dropout is None:
                a = _checked_input(self.prog, t, inputs[t.name], "input", "the C returns")
                vals[(t.name, "f")] = a.astype(np.int64) if t.dtype == INT else a.astype(np.float32)
        for op in self.ops:
            vals[op.out] = self._run(op, vals, env, n)
        return {o: np.asarray(vals[(o, "f")], dtype=np.float32).reshape((n,) + self.shapes[o]) for o in self.outputs}

    def _run(self, op, vals, env, n):
        if op.kind == "quantize":
            x = vals[(op.src, "f")]
            if not np.all(np.isfinite(x)):
                raise ValueError(f"int8: input {op.src!r} holds a NaN or Inf (the C returns ENONFINITE)")
            return quantize_f32(x, op.q_out)
        if op.kind == "dequantize":
            return dequantize_f32(vals[(op.src, "q")], op.q_in)
        if op.kind == "const":
            return np.broadcast_to(op.info["values"], (n,) + op.info["values"].shape)
        st = op.stage
        shape = self.shapes[st.name]
        e = dict(env)
        for name, dom in op.ins:
            a = vals[(name, dom)]
            e[name] = (a.astype(np.int64) if dom == "q" else a.astype(np.float64)), True
        if op.kind == "linear":
            i = op.info
            e[i["W"]] = (i["wq"].astype(np.int64), False)
            a = vals[(i["A"], "q")].astype(np.int64) - op.q_in.zero_point
            e[i["A"]] = (a, True)
            acc = evaluate(st, e, n, shape, dtype=np.int64)
            if i.get("bias") is not None:
                acc = acc + _per_out(st, shape, i["bias_index"], i["bq"])
            m0 = _per_out(st, shape, i["chan"], i["m0"])
            if op.out[1] == "f":
                s = _per_out(st, shape, i["chan"], i["scale"]).astype(np.float32)
                v = acc.astype(np.float32) * s
                if i["lo_f"] is not None:
                    v = np.where(v < np.float32(i["lo_f"]), np.float32(i["lo_f"]), v)
                if i["hi_f"] is not None:
                    v = np.where(v > np.float32(i["hi_f"]), np.float32(i["hi_f"]), v)
                return v.astype(np.float32)
            sh = _per_out(st, shape, i["chan"], i["sh"])
            q = requantize(acc, m0, sh, i["zo"], i["lo_q"], i["hi_q"])
            if i.get("table") is not None:
                q = i["table"][q.astype(np.int64) + 128]
            return q
        if op.kind in ("move", "max", "table"):
            if op.kind == "table":
                e["__lut"] = (op.info["table"].astype(np.int64), False)
            v = evaluate(st, e, n, shape, body=op.info["body"], dtype=np.int64)
            return v.astype(np.int8)
        if op.kind == "float":
            v = evaluate(st, e, n, shape)
            return v.astype(np.float32)
        raise AssertionError(op.kind)


def _per_out(st, shape, exprs, table):
    """``table`` (a constant per channel) read at ``exprs`` over the output indices of ``st``."""
    if not exprs:
        return np.asarray(table).reshape(())
    g = _Grid(1, list(zip(st.idx, shape)))
    ev = _Eval({}, g)
    ix = tuple(np.broadcast_to(np.asarray(ev.index(x)), g.shape)[0] for x in exprs)
    return np.asarray(table)[ix]


def _checked_input(prog, t, a, what, then):
    """``a`` for input ``t``, refused (ValueError naming it) where the C refuses it: a NaN or Inf in a
    real input (ENONFINITE), an id out of its range (EINDEX); ids must be whole numbers."""
    a = np.asarray(a)
    if t.dtype == INT:
        if a.dtype.kind not in "iub" and not np.all(np.floor(a) == a):
            raise ValueError(f"int8: {what} {t.name!r} holds ids that are not whole numbers")
        bounds = prog.int_bounds.get(t.name)
        if bounds:
            hi = np.array([b if b is not None else np.iinfo(np.int32).max for b in bounds]).reshape(t.shape)
            bad = (a < 0) | (a >= hi)
            if np.any(bad):
                raise ValueError(f"int8: {what} {t.name!r} holds an id out of its range "
                                 f"({then} {'EINDEX' if then else 'refused'})".replace("( ", "("))
        return a
    if a.dtype.kind not in "fiub":
        raise ValueError(f"int8: {what} {t.name!r} holds {a.dtype} values, not numbers")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"int8: {what} {t.name!r} holds a NaN or Inf" + (f" ({then} ENONFINITE)" if then else ""))
    return a


def _batch(prog, inputs):
    ns = set()
    for t in prog.inputs:
        if t.dropout is not None:
            continue
        if t.name not in inputs:
            raise ValueError(f"int8: input {t.name!r} is missing")
        a = np.asarray(inputs[t.name])
        if a.shape[1:] != tuple(t.shape) or a.ndim != len(t.shape) + 1:
            raise ValueError(f"int8: input {t.name!r} has shape {a.shape}, expected (n, {', '.join(map(str, t.shape))})")
        ns.add(a.shape[0])
    if len(ns) != 1 or min(ns) < 1:
        raise ValueError(f"int8: the inputs need one batch size of at least 1, not {sorted(ns)}")
    return ns.pop()


# ---------------------------------------------------------------------------------------------
# planning

def _t(prog, name):
    return prog.tensors[name]


_CLAMP_FUNCS = (sp.Max, sp.Min)


def _clamp(phi, t):
    """(lo, hi) when ``phi(t)`` is a clamp of t (relu, relu6, hardtanh; None for no bound), else None."""
    lo, hi = -math.inf, math.inf
    while phi != t:
        if isinstance(phi, _CLAMP_FUNCS) and len(phi.args) == 2:
            nums = [a for a in phi.args if a.is_Number]
            rest = [a for a in phi.args if not a.is_Number]
            if len(nums) != 1 or len(rest) != 1:
                return None
            c = float(nums[0])
            if isinstance(phi, sp.Max):
                if c > hi:
                    return None
                lo = max(lo, c)
            else:
                if c < lo:
                    return None
                hi = min(hi, c)
            phi = rest[0]
        else:
            return None
    return (None if lo == -math.inf else lo), (None if hi == math.inf else hi)


class _Planner:
    def __init__(self, prog, params):
        self.prog = prog
        self.consts = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        for t in prog.inputs:
            if t.dropout is not None:       # inverted dropout: the mask is all ones at inference
                self.consts[t.name] = np.ones(t.shape)
        if not prog.outputs:
            raise ModelError(f"int8: model {prog.name!r} has no output to compute (declare one with "
                             f"m.output)", where=None)
        from .simplify import live_stages
        live = live_stages(prog, prog.outputs)
        self.stages = []
        for st in live:
            if st.scope == "batch":      # depends on parameters only: a constant of the export
                env = {k: (v, False) for k, v in self.consts.items()}
                self.consts[st.name] = evaluate(st, env, 1, _t(prog, st.name).shape)[0]
            else:
                self.stages.append(st)
        self.readers = {}
        for st in self.stages:
            for b in st.bodies():
                for name, _, _ in reads(b, prog.tensors):
                    self.readers.setdefault(name, []).append(st)

    def is_const(self, name):
        return name in self.consts

    def acts(self, body):
        """The reads of non-constant tensors in body."""
        return [(n, i, r) for n, i, r in reads(body, self.prog.tensors) if not self.is_const(n)]

    # structural matches -------------------------------------------------------------------
    def linear(self, st):
        """(W, W read, A, A read) when st is Sum_r W[..] * A[..] with W constant, A real, else None."""
        if st.op != "sum" or st.elements is not None or st.body.has(sp.Piecewise):
            return None
        args = sp.Mul.make_args(st.body)
        if len(args) != 2:
            return None
        rs = [reads(a, self.prog.tensors) for a in args]
        if any(len(r) != 1 or r[0][2] != a for r, a in zip(rs, args)):
            return None
        (n1, i1, r1), (n2, i2, r2) = rs[0][0], rs[1][0]
        if self.is_const(n2) and not self.is_const(n1):
            (n1, i1, r1), (n2, i2, r2) = (n2, i2, r2), (n1, i1, r1)
        if not self.is_const(n1) or self.is_const(n2) or _t(self.prog, n2).dtype == INT:
            return None
        if any(self._gathered(i) for i in (i1, i2)) or n1 == n2:
            return None
        return n1, r1, n2, r2

    def _gathered(self, idx):
        return any(reads(sp.sympify(e), self.prog.tensors) for e in idx)

    def epilogue(self, r_st):
        """(E, bias read or None, phi, t) when R's one reader is E = phi(R[idx] + b[..]), else None."""
        rd = self.readers.get(r_st.name, [])
        if len(rd) != 1 or r_st.name in self.prog.outputs:
            return None
        e_st = rd[0]
        if e_st.op != "assign" or e_st.elements is not None or e_st.red:
            return None
        acts = self.acts(e_st.body)
        if len(acts) != 1 or tuple(acts[0][1]) != tuple(e_st.idx) or _t(self.prog, e_st.name).shape != \
                _t(self.prog, r_st.name).shape:
            return None
        rread = acts[0][2]
        consts = [(n, i, r) for n, i, r in reads(e_st.body, self.prog.tensors) if self.is_const(n)]
        if len(consts) > 1 or any(self._gathered(i) for _, i, _ in consts):
            return None
        t = sp.Dummy("t", real=True)
        bread = consts[0][2] if consts else sp.Integer(0)
        u = rread + bread
        ok = lambda f: not f.has(rread) and not (consts and f.has(bread)) and not f.free_symbols - {t}  # noqa: E731
        phi = e_st.body.xreplace({u: t})
        if not ok(phi):
            # SymPy distributes a coefficient over the sum (leaky relu's 0.01*(R + b) is 0.01*R + 0.01*b,
            # GELU's (R + b)/2 likewise): write R as t - b and expand, so that b cancels
            phi = sp.expand(e_st.body.xreplace({rread: t - bread}))
            if not ok(phi):
                return None
        return e_st, (consts[0] if consts else None), phi, t, u

    def movable(self, st):
        """The tensor st copies (a single read, maybe guarded with 0 outside), else None."""
        if st.op != "assign" or st.elements is not None:
            return None
        body = st.body
        if isinstance(body, sp.Piecewise):
            if len(body.args) != 2 or body.args[1].expr != 0 or body.args[1].cond != sp.true:
                return None
            body = body.args[0].expr
        acts = self.acts(st.body)
        if len(acts) == 1 and body == acts[0][2] and len(reads(st.body, self.prog.tensors)) == 1 \
                and _t(self.prog, acts[0][0]).dtype != INT and not self._gathered(acts[0][1]):
            return acts[0][0]
        return None

    def maxable(self, st):
        """The tensor st takes the max of reads of (max pooling), else None."""
        if st.elements is not None:
            return None
        rs = reads(st.body, self.prog.tensors)
        if len(rs) == 0 or len({n for n, _, _ in rs}) != 1 or self.is_const(rs[0][0]) or \
                _t(self.prog, rs[0][0]).dtype == INT or any(self._gathered(i) for _, i, _ in rs):
            return None
        if st.op == "max" and st.body == rs[0][2]:
            return rs[0][0]
        if st.op == "assign" and isinstance(st.body, sp.Max) and set(st.body.args) == {r for _, _, r in rs}:
            return rs[0][0]
        return None

    def tabled(self, st):
        """The tensor st applies an elementwise function to (one read, no other tensor), else None."""
        if st.op != "assign" or st.elements is not None:
            return None
        rs = reads(st.body, self.prog.tensors)
        if len(rs) != 1 or self.is_const(rs[0][0]) or _t(self.prog, rs[0][0]).dtype == INT or \
                self._gathered(rs[0][1]):
            return None
        t = sp.Dummy("t", real=True)
        if st.body.xreplace({rs[0][2]: t}).free_symbols - {t}:
            return None
        return rs[0][0]

    def q_friendly(self, st, src):
        """Whether st would read src as int8."""
        lin = self.linear(st)
        if lin is not None and lin[2] == src:
            return True
        return any(f(st) == src for f in (self.movable, self.maxable, self.tabled))


def plan(prog, params, calibration):
    """The int8 plan of ``prog`` with ``params`` (name -> array), its activation ranges taken from
    ``calibration`` (input name -> array (n, *shape)); see the module's docstring."""
    for k, v in params.items():
        if not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
            raise ValueError(f"int8: parameter {k!r} holds a NaN or Inf")
    P = _Planner(prog, params)
    where = {st.name: _label(st) for st in P.stages}
    n = _batch(prog, calibration)
    env = {k: (v, False) for k, v in P.consts.items()}
    for t in prog.inputs:
        if t.dropout is None:
            a = _checked_input(prog, t, calibration[t.name], "calibration input", "")
            env[t.name] = (a.astype(np.int64) if t.dtype == INT else a.astype(np.float64), True)
    # decide the fusions first, so that calibration also measures pre-activations
    fused, pre = {}, {}
    for st in P.stages:
        lin = P.linear(st)
        if lin is not None:
            ep = P.epilogue(st)
            if ep is not None:
                fused[st.name] = ep
                pre[ep[0].name] = ep
    rng = {}

    def seen(key, v):
        lo, hi = float(v.min()), float(v.max())
        old = rng.get(key, (lo, hi))
        rng[key] = (min(lo, old[0]), max(hi, old[1]))

    for t in prog.inputs:
        if t.dropout is None and t.dtype != INT:
            seen(t.name, env[t.name][0])
    for lo in range(0, n, _SAMPLES):         # the data a chunk at a time: memory bounded for any n
        m = min(_SAMPLES, n - lo)
        sub = _rows(env, lo, m)
        for st in P.stages:
            v = evaluate(st, sub, m, _t(prog, st.name).shape)
            sub[st.name] = (v, True)
            seen(st.name, v)
            if st.name in pre:
                e_st, _, _, _, u = pre[st.name]
                seen("pre:" + st.name, evaluate(e_st, sub, m, _t(prog, e_st.name).shape, body=u))
    qp = {}
    for k, v in rng.items():
        name = k.replace("pre:", "")
        what = where.get(name, repr(name)) + (" (before its activation)" if k.startswith("pre:") else "")
        qp[k] = QParams.of_range(*v, what=what)

    ops, have, done, enc = [], set(), set(), {}

    def need(name, dom):
        if (name, dom) in have:
            return
        if dom == "q":
            assert (name, "f") in have or _t(prog, name).kind == "input", name
            ops.append(Op("quantize", (name, "q"), [(name, "f")], src=name, q_out=qp[name]))
            enc[name] = qp[name]
        else:
            ops.append(Op("dequantize", (name, "f"), [(name, "q")], src=name, q_in=enc[name]))
        have.add((name, dom))

    def enc_of(name):
        """How name's int8 value is (or, quantized now, would be) encoded: a copy or a max keeps its
        source's scale and zero point, whatever its own calibrated range."""
        return enc.get(name, qp[name])

    def avail_q(name):
        return (name, "q") in have

    for t in prog.inputs:
        if t.dropout is None:
            have.add((t.name, "f"))
    for st in P.stages:
        if st.name in done:
            continue
        lin = P.linear(st)
        op = None
        if lin is not None:
            op = _linear_op(P, st, lin, fused.get(st.name), qp, need, enc_of)
        if op is None:
            for kind, f in (("move", P.movable), ("max", P.maxable), ("table", P.tabled)):
                src = f(st)
                if src is not None and (avail_q(src) or _out_dom(P, st.name) == "q"):
                    need(src, "q")
                    op = _simple_op(kind, st, src, enc_of(src), qp)
                    break
        if op is None:
            op = _float_op(P, st, need)
        ops.append(op)
        have.add(op.out)
        if op.out[1] == "q":
            enc[op.out[0]] = op.q_out
        if op.kind == "linear" and op.info.get("E") is not None:
            done.add(op.info["E"].name)
    for o in prog.outputs:
        if P.is_const(o):         # an output of the parameters alone: its values, written out
            ops.append(Op("const", (o, "f"), [], info={"values": np.asarray(P.consts[o], dtype=np.float32)}))
            have.add((o, "f"))
        need(o, "f")
    shapes = {name: tuple(t.shape) for name, t in prog.tensors.items()}
    return QuantPlan(prog, ops, {k: v for k, v in P.consts.items()}, shapes, list(prog.outputs), where)


def _label(st):
    loc = f" ({os.path.basename(st.where[0])}:{st.where[1]})" if st.where else ""
    return f"{st.name}{loc}"


def _out_dom(P, name):
    """q when a reader would take name as int8, else f (outputs and float readers)."""
    return "q" if any(P.q_friendly(r, name) for r in P.readers.get(name, [])) else "f"


def _linear_op(P, st, lin, ep, qp, need, enc_of):
    prog = P.prog
    W, wread, A, aread = lin
    wt = P.consts[W]
    idx_syms = set(st.idx)
    windex = list(wread.indices) if isinstance(wread, sp.Indexed) else []
    chan_axes = [k for k, e in enumerate(windex)
                 if sp.sympify(e).free_symbols and sp.sympify(e).free_symbols <= idx_syms]
    chan = tuple(windex[k] for k in chan_axes)
    cshape = tuple(wt.shape[k] for k in chan_axes)
    moved = np.moveaxis(np.abs(wt), chan_axes, list(range(len(chan_axes)))) if chan_axes else np.abs(wt)
    wmax = moved.reshape(cshape + (-1,)).max(axis=-1) if chan_axes else np.asarray(moved.max())
    s_w = np.where(wmax > 0, wmax / 127.0, 1.0)
    s_w_full = s_w.reshape(cshape + (1,) * (wt.ndim - len(chan_axes)))
    s_w_full = np.moveaxis(s_w_full, list(range(len(chan_axes))), chan_axes) if chan_axes else s_w
    wq = np.clip(round_half_away(wt / s_w_full), -127, 127).astype(np.int8)
    q_in = enc_of(A)
    s_acc = q_in.scale * s_w                      # per channel
    info = {"W": W, "A": A, "chan": chan, "wq": wq, "E": None, "act": None, "bias": None,
            "body": st.body,
            "lo_f": None, "hi_f": None, "table": None}
    out_name = st.name
    lo = hi = None
    phi_table = None
    bias_index = None
    bias_vals = None
    if ep is not None:
        e_st, bias, phi, t, u = ep
        sub = dict(zip(e_st.idx, st.idx))
        out_name = e_st.name
        info["E"] = e_st
        if bias is not None:
            bname, bidx, _ = bias
            bias_index = tuple(sp.sympify(x).xreplace(sub) for x in bidx)
            bias_vals = P.consts[bname]
            if any(not sp.sympify(x).free_symbols <= idx_syms for x in bias_index):
                return None
        c = _clamp(phi, t)
        if c is not None:
            lo, hi = c
            info["act"] = {(None, None): None, (0.0, None): "relu"}.get((lo, hi), f"clamp [{lo}, {hi}]")
        else:
            phi_table = phi, t
            info["act"] = f"table {phi.xreplace({t: sp.Symbol('u')})}"
    dom = _out_dom(P, out_name)
    if out_name in prog.outputs and dom == "q" and phi_table is None:
        dom = "f"
    if phi_table is not None:
        dom = "q"         # a table gives int8; dequantized where a float reader or output wants it
    # bias: per channel when its index is the channel's, else per element with a per-tensor scale
    if bias_vals is not None:
        if chan and tuple(bias_index) == tuple(chan):
            bq = round_half_away(bias_vals / s_acc)
        else:
            if chan:      # rescale to one weight scale, so the bias needs no channel
                s1 = float(wmax.max()) / 127.0 if float(wmax.max()) > 0 else 1.0     # zero channels: any
                wq = np.clip(round_half_away(wt / s1), -127, 127).astype(np.int8)
                info["wq"], s_w, chan, info["chan"] = wq, np.asarray(s1), (), ()
                s_acc = q_in.scale * s_w
            bq = round_half_away(bias_vals / s_acc)
        info["bias"], info["bias_index"] = bias_vals, bias_index
        info["bq"] = bq           # whole numbers, as floats until their range is checked
    # the int32 sums cannot overflow: |sum| <= reduction length * 127 * 255 + |bias|
    if info["bias"] is not None and not float(np.abs(info["bq"]).max()) < ACC_LIMIT:
        return None
    red_len = int(np.prod([e for _, e in st.red], dtype=np.int64))
    bound = red_len * 127 * 255 + (int(np.abs(info["bq"]).max()) if info["bias"] is not None else 0)
    if bound > ACC_LIMIT:
        return None
    if info["bias"] is not None:
        info["bq"] = info["bq"].astype(np.int32)
    out_q = None
    if dom == "q":
        out_q = qp["pre:" + ep[0].name] if phi_table is not None else qp[out_name if ep is None else ep[0].name]
        ms = [multiplier(float(s) / out_q.scale) for s in np.ravel(s_acc)]
        if any(m is None for m in ms):
            return None
        info["m0"] = np.array([m[0] for m in ms], dtype=np.int32).reshape(np.shape(s_acc))
        info["sh"] = np.array([m[1] for m in ms], dtype=np.int32).reshape(np.shape(s_acc))
        zo = out_q.zero_point
        lo_q = QMIN if lo is None else int(np.clip(zo + round_half_away(lo / out_q.scale), QMIN, QMAX))
        hi_q = QMAX if hi is None else int(np.clip(zo + round_half_away(hi / out_q.scale), QMIN, QMAX))
        info.update(zo=zo, lo_q=lo_q, hi_q=hi_q)
        if phi_table is not None:
            q_e = qp[ep[0].name]
            info["table"] = _table(phi_table, out_q, q_e)
            out_q = q_e
    else:
        info["m0"] = np.zeros(np.shape(s_acc), dtype=np.int32)
        info["scale"] = np.asarray(s_acc, dtype=np.float32)
        if not np.all((info["scale"] >= np.finfo(np.float32).tiny) & np.isfinite(info["scale"])):
            return None       # a dequantizing scale beyond float32: the stage stays float
        info["lo_f"] = None if lo is None else float(np.float32(lo))
        info["hi_f"] = None if hi is None else float(np.float32(hi))
    need(A, "q")
    return Op("linear", (out_name, dom), [(A, "q")], stage=st, src=A, q_in=q_in, q_out=out_q, info=info)


def _table(phi_t, q_in, q_out):
    """phi over the 256 int8 values of q_in, quantized to q_out (float64, at export)."""
    phi, t = phi_t
    v = (np.arange(QMIN, QMAX + 1, dtype=np.float64) - q_in.zero_point) * q_in.scale
    g = _Grid(1, [])
    y = np.asarray(_Eval({"__t": (v, False)}, g)(phi.xreplace({t: sp.Symbol("__t")})), dtype=np.float64)
    y = np.broadcast_to(y, v.shape)
    return np.clip(round_half_away(y / q_out.scale) + q_out.zero_point, QMIN, QMAX).astype(np.int8)


def _simple_op(kind, st, src, q, qp):
    """A move, max or table op reading src, encoded as ``q``."""
    body = st.body
    info = {}
    if kind == "move" and isinstance(body, sp.Piecewise):
        body = sp.Piecewise((body.args[0].expr, body.args[0].cond), (sp.Integer(q.zero_point), True))
    if kind == "table":
        rd = [n for n in sp.preorder_traversal(st.body)
              if (isinstance(n, sp.Indexed) and n.base.label.name == src) or
              (isinstance(n, sp.Symbol) and n.name == src)][0]
        t = sp.Dummy("t", real=True)
        q_out = qp[st.name]
        info["table"] = _table((st.body.xreplace({rd: t}), t), q, q_out)
        info["read"] = rd
        body = sp.IndexedBase("__lut")[rd + 128]
        info["body"] = body
        return Op(kind, (st.name, "q"), [(src, "q")], stage=st, src=src, q_in=q, q_out=q_out, info=info)
    info["body"] = body
    return Op(kind, (st.name, "q"), [(src, "q")], stage=st, src=src, q_in=q, q_out=q, info=info)


def _float_op(P, st, need):
    ins = []
    for b in st.bodies():
        for name, idx, _ in reads(b, P.prog.tensors):
            if not P.is_const(name) and (name, "f") not in ins:
                if _t(P.prog, name).dtype != INT:
                    need(name, "f")
                ins.append((name, "f"))
    why = _why_float(P, st)
    return Op("float", (st.name, "f"), ins, stage=st, note=why)


def _why_float(P, st):
    acts = {n for b in st.bodies() for n, _, _ in P.acts(b)}
    if P.linear(st) is not None:
        return "dense/conv kept in float (its int32 sum could overflow, or its scales are out of range)"
    if any(_t(P.prog, n).dtype == INT for n in acts) or any(P._gathered(i) for b in st.bodies()
                                                           for _, i, _ in reads(b, P.prog.tensors)):
        return "a gather by an integer input"
    if len(acts) > 1:
        return f"reads {len(acts)} activations ({', '.join(sorted(acts))}): no int8 kernel for that"
    if st.red:
        return f"a {st.op} reduction over a function of its input"
    if any(P.is_const(n) for b in st.bodies() for n, _, _ in reads(b, P.prog.tensors)):
        return "an elementwise stage with a parameter"
    return "its input is float here"
