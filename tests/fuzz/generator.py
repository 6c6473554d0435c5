"""The fuzz generator: random well-formed gradc models, each with its oracle expressions.

``fuzz_models()`` is a hypothesis strategy; ``random_case(rnd)`` draws the same
from a ``random.Random`` and ``sample_cases(n, label=...)`` a fixed list that
covers the operations evenly. Each example is a ``FuzzCase``:

* ``source``: the Python text of a small model, written with the public API
  (``m.param``, ``m.input``, ``m.define`` with lambdas and ``sp.Sum``,
  ``gc.TensorExpr``, ``@``, ``.T``, ``.M``, ``.map``, ``gc.embedding``,
  ``gc.logsumexp`` ...). ``case.build()`` runs it and returns the ``gc.Model``.
  A failing case prints this text, ready to paste into a regression test.
* the oracle's element-wise SymPy expressions of its outputs, loss and
  regularization (built with oracle.py's helpers alongside the source, never
  from gradc's own lowering).

Models are well formed by construction: every value has a bound on its
magnitude (parameters and real data lie in [-1, 1]); a function that grows
fast (exp, sinh, powers) gets an argument scaled to a safe range; log, sqrt,
negative and fractional powers, and division only see expressions that are
positive with a lower bound (1 + a**2, softplus, exp, a known-positive value);
asin/acos/atanh see arguments below 0.8 in magnitude. Kinks (Abs, Max, Min,
Piecewise, floor, sign) are allowed: data and parameters are continuous, so no
sample sits on one, and the finite-difference check retries with a tiny step
before it reports a mismatch.

Besides those, the steps in ``NEW_OPS`` write what NumPy and PyTorch users write:

* ``view``: slices with steps and negative bounds, negative indices, ``x[:, None]``, ``...``,
  ``.sum(axis)``, ``.mean(axis)``, ``.reshape(...)``, ``.flatten()``, and NumPy broadcasting in
  arithmetic (``W + v``, ``u[:, None] * v``, ``W * v[:, None]``); the oracle indexes, reshapes and
  broadcasts the object arrays with NumPy itself;
* ``pad``: zero padding as a guarded read, ``m.define`` of ``sp.Piecewise((t[c, i - p, j - q],
  sp.And(i >= p, i < p + H, ...)), (0, True))`` (with redundant conditions, ``&``, a function of the
  read, or ``L.pad``);
* ``act``, ``conv``, ``pool``, ``norm``, ``rnn``: ``gradc.layers`` (imported as ``L`` where used):
  leaky_relu, elu, gelu (also tanh), silu; conv1d/conv2d with stride, padding (ints, pairs,
  'same', 'valid'), dilation, groups and a bias; max/avg pools and global_avg_pool; layer_norm,
  group_norm, rms_norm; gru_cell, lstm_cell and unroll. Their oracle is oracle.py's references,
  written from PyTorch's definitions (test_fuzz_layers.py checks them against PyTorch).

Their bounds: a view keeps its operand's; a sum over n elements multiplies it by n; a
convolution's is (channels per group) * (kernel size) * |x| + |bias| (inputs scaled to 2); a norm's
sqrt(group size) * |weight| + |bias| (eps: PyTorch's default, 1e-3, 0.1 or 1); a GRU's state stays
within max(1, |h|), an LSTM's cell grows by at most 1 a step. Conv and recurrent weights are new
parameters that later steps do not read. A lazy expression read through ``//`` or ``%`` (a
reshape, a slice, a reversal, a grouped convolution, group_norm) is gathered by an int32 input
too (``Node.divmod`` marks it, for ``avoid=("gather_through_index_arithmetic",)``).

Known compiler bugs the generator steers around are listed in ``KNOWN_BUGS``
(each has a named, strict-xfail regression test in test_fuzz_regressions.py);
``fuzz_models(avoid=())`` generates them too.
"""
import collections
import importlib.util
import math
import random
import zlib
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from hypothesis import strategies as st

import gradc as gc

from . import oracle as torch_ref
from .oracle import emap, gather, scalar_array, symbols

# Constructs that trigger a known, still-present compiler bug. The generator avoids each one named
# here; test_fuzz_regressions.py holds a strict-xfail test of each (test_every_known_bug_... maps them).
# Fixed (their regression tests pass): shadowed_sum_index, piecewise_condition_ite, floor_of_expression,
# abs_of_integer; gather_through_index_arithmetic (a lazy view gathered at arithmetic of an id becomes a
# stage), abs_of_reversed_read (indices are expanded before the affine check), sign_of_unreal (sign's
# unevaluated derivative is 0), min_tie_across_nests (a condition is computed the same way in every nest).
KNOWN_BUGS = ()

HMAX = 20.0          # values are rescaled to stay below this bound
LN2 = math.log(2.0)


def _sig(t):
    return 1.0 / (1.0 + math.exp(-t))


def _same(h, lo):
    return h, lo


# ---- elementwise operations ---------------------------------------------------
# (name, template over {a}, largest |argument| allowed (None: any), bound(hi, lo) -> (hi, lo),
#  the same function written as a gradc helper that also applies to tensors, or None)
UNARY = [
    ("tanh", "sp.tanh({a})", None, lambda h, l: (1.0, 0.0), "gc.tanh({a})"),
    ("sigmoid", "gc.sigmoid({a})", None, lambda h, l: (1.0, _sig(-h)), "gc.sigmoid({a})"),
    ("sigmoid_exp", "1 / (1 + sp.exp(-{a}))", 10, lambda h, l: (1.0, _sig(-h)), None),
    ("sigmoid_ratio", "sp.exp({a}) / (1 + sp.exp({a}))", 10, lambda h, l: (1.0, _sig(-h)), None),
    ("softplus", "gc.softplus({a})", 20, lambda h, l: (h + LN2, math.log1p(math.exp(-h))), "gc.softplus({a})"),
    ("softplus_log", "sp.log(1 + sp.exp({a}))", 10, lambda h, l: (h + LN2, math.log1p(math.exp(-h))), None),
    ("log_sigmoid", "sp.log(gc.sigmoid({a}))", 10, lambda h, l: (h + LN2, 0.0), None),
    ("log_one_minus_sigmoid", "sp.log(1 - gc.sigmoid({a}))", 10, lambda h, l: (h + LN2, 0.0), None),
    ("exp", "sp.exp({a})", 2, lambda h, l: (math.exp(h), math.exp(-h)), "gc.exp({a})"),
    ("exp2", "2**{a}", 3, lambda h, l: (2.0 ** h, 2.0 ** -h), None),
    ("sin", "sp.sin({a})", None, lambda h, l: (1.0, 0.0), None),
    ("cos", "sp.cos({a})", None, lambda h, l: (1.0, 0.0), None),
    ("erf", "sp.erf({a})", None, lambda h, l: (1.0, 0.0), None),
    ("atan", "sp.atan({a})", None, lambda h, l: (math.pi / 2, 0.0), None),
    ("asinh", "sp.asinh({a})", None, lambda h, l: (math.asinh(h), 0.0), None),
    ("sinh", "sp.sinh({a})", 2, lambda h, l: (math.sinh(h), 0.0), None),
    ("cosh", "sp.cosh({a})", 2, lambda h, l: (math.cosh(h), 1.0), None),
    ("tan", "sp.tan({a})", 1, lambda h, l: (math.tan(h), 0.0), None),
    ("asin", "sp.asin({a})", 0.8, lambda h, l: (math.asin(h), 0.0), None),
    ("acos", "sp.acos({a})", 0.8, lambda h, l: (math.acos(-h), math.acos(h)), None),
    ("atanh", "sp.atanh({a})", 0.8, lambda h, l: (math.atanh(h), 0.0), None),
    ("acosh", "sp.acosh(2 + {a}**2)", 3, lambda h, l: (math.acosh(2 + h * h), math.acosh(2.0)), None),
    ("square", "{a}**2", 4, lambda h, l: (h * h, 0.0), None),
    ("cube", "{a}**3", 2.5, lambda h, l: (h ** 3, 0.0), None),
    ("pow4", "{a}**4", 2, lambda h, l: (h ** 4, 0.0), None),
    ("pow5", "{a}**5", 1.6, lambda h, l: (h ** 5, 0.0), None),
    ("log1p_square", "sp.log(1 + {a}**2)", 5, lambda h, l: (math.log1p(h * h), 0.0), None),
    ("sqrt_square", "sp.sqrt({a}**2 + sp.Rational(1, 2))", 5, lambda h, l: (math.sqrt(h * h + .5), math.sqrt(.5)), None),
    ("inv_square", "1 / (1 + {a}**2)", None, lambda h, l: (1.0, 1 / (1 + h * h)), None),
    ("rpow_3_2", "(1 + {a}**2)**sp.Rational(-3, 2)", None, lambda h, l: (1.0, (1 + h * h) ** -1.5), None),
    ("cbrt", "(2 + {a}**2)**sp.Rational(1, 3)", 5, lambda h, l: ((2 + h * h) ** (1 / 3), 2 ** (1 / 3)), None),
    ("abs", "sp.Abs({a})", None, lambda h, l: (h, 0.0), "gc.abs({a})"),
    ("relu", "gc.relu({a})", None, lambda h, l: (h, 0.0), "gc.relu({a})"),
    ("relu_max", "sp.Max(0, {a})", None, lambda h, l: (h, 0.0), None),
    ("sign", "sp.sign({a})", None, lambda h, l: (1.0, 0.0), None),
    ("floor", "sp.floor({a})", None, lambda h, l: (h + 1, 0.0), None),
    ("ceiling", "sp.ceiling({a})", None, lambda h, l: (h + 1, 0.0), None),
    ("huber", "sp.Piecewise(({a}**2 / 2, sp.Abs({a}) <= 1), (sp.Abs({a}) - sp.Rational(1, 2), True))", 5,
     lambda h, l: (max(h * h / 2, h), 0.0), None),
    ("clamp", "sp.Min(1, sp.Max(-1, {a}))", None, lambda h, l: (min(h, 1.0), 0.0), None),
    ("elu", "sp.Piecewise((sp.exp({a}) - 1, {a} < 0), ({a}, True))", 10, lambda h, l: (h, 0.0), None),
    ("neg", "-{a}", None, _same, None),
    ("float_affine", "0.37 * {a} - 1.25", None, lambda h, l: (0.37 * h + 1.25, 0.0), None),
    ("pi_scale", "sp.sin(sp.pi * {a} / 4) + sp.E", None, lambda h, l: (1 + math.e, math.e - 1), None),
]
UNARY_BY_NAME = {u[0]: u for u in UNARY}

# functions of a value known to be positive (lower bound lo >= POS_LO): (name, template, bound)
POS_LO = 0.05
POS_UNARY = [
    ("log", "sp.log({a})", lambda h, l: (max(abs(math.log(l)), abs(math.log(h))), 0.0), "gc.log({a})"),
    ("sqrt", "sp.sqrt({a})", lambda h, l: (math.sqrt(h), math.sqrt(l)), "gc.sqrt({a})"),
    ("rsqrt", "{a}**sp.Rational(-1, 2)", lambda h, l: (l ** -.5, h ** -.5), None),
    ("pow_3_2", "{a}**sp.Rational(3, 2)", lambda h, l: (h ** 1.5, l ** 1.5), None),
    ("pow_1_3", "{a}**sp.Rational(1, 3)", lambda h, l: (h ** (1 / 3), l ** (1 / 3)), None),
    ("recip", "1 / {a}", lambda h, l: (1 / l, 1 / h), None),
    ("inv2", "{a}**-2", lambda h, l: (l ** -2, h ** -2), None),
    ("inv3", "{a}**(-3)", lambda h, l: (l ** -3, h ** -3), None),
    ("inv5", "{a}**(-5)", lambda h, l: (l ** -5, h ** -5), None),
    ("acosh1", "sp.acosh(1 + {a})", lambda h, l: (math.acosh(1 + h), math.acosh(1 + l)), None),
]

# (name, template over {a}, {b}, ..., arity, bound(list of (hi, lo)) -> (hi, lo), operator form or None,
#  requirement on operands (list of (hi, lo)) -> bool)
NARY = [
    ("add", "{a} + {b}", 2, lambda o: (o[0][0] + o[1][0], o[0][1] + o[1][1] if o[0][1] > 0 and o[1][1] > 0 else 0.0),
     "{a} + {b}", None),
    ("sub", "{a} - {b}", 2, lambda o: (o[0][0] + o[1][0], 0.0), "{a} - {b}", None),
    ("mul", "{a} * {b}", 2, lambda o: (o[0][0] * o[1][0], o[0][1] * o[1][1]), "{a} * {b}", None),
    ("div_pos", "{a} / (1 + {b}**2)", 2, lambda o: (o[0][0], o[0][1] / (1 + o[1][0] ** 2)), None, None),
    ("div", "{a} / {b}", 2, lambda o: (o[0][0] / o[1][1], o[0][1] / o[1][0]), "{a} / {b}",
     lambda o: o[1][1] >= 0.1),
    ("pow_var", "{a}**{b}", 2, lambda o: (max(o[0][0], 1 / o[0][1]) ** o[1][0], max(o[0][0], 1 / o[0][1]) ** -o[1][0]),
     "{a}**{b}", lambda o: o[0][1] >= 0.1 and o[1][0] <= 2),
    ("fma", "{a} * {b} + {c}", 3, lambda o: (o[0][0] * o[1][0] + o[2][0], 0.0), None, None),
    ("max2", "sp.Max({a}, {b})", 2, lambda o: (max(o[0][0], o[1][0]), max(o[0][1], o[1][1])), None, None),
    ("min2", "sp.Min({a}, {b})", 2, lambda o: (max(o[0][0], o[1][0]), min(o[0][1], o[1][1])), None, None),
    ("max3", "sp.Max({a}, {b}, {c})", 3, lambda o: (max(x[0] for x in o), max(x[1] for x in o)), None, None),
    ("max_zero", "sp.Max(0, {a}, {b})", 2, lambda o: (max(o[0][0], o[1][0]), max(o[0][1], o[1][1])), None, None),
    ("min_zero", "sp.Min(0, {a})", 1, lambda o: (o[0][0], 0.0), None, None),
    ("max_min", "sp.Max(sp.Min({a}, {b}), {c})", 3, lambda o: (max(x[0] for x in o), 0.0), None, None),
    ("min_const", "sp.Min({a}, {b}, 1)", 2, lambda o: (max(o[0][0], o[1][0], 1.0), min(o[0][1], o[1][1], 1.0)),
     None, None),
    ("pw_gt", "sp.Piecewise(({a}, {b} > {c}), ({d}, True))", 4,
     lambda o: (max(o[0][0], o[3][0]), min(o[0][1], o[3][1])), None, None),
    ("pw_lt0", "sp.Piecewise(({a}, {b} < 0), ({c}, True))", 3,
     lambda o: (max(o[0][0], o[2][0]), min(o[0][1], o[2][1])), None, None),
    ("pw_band", "sp.Piecewise(({a}, sp.And({b} > -sp.Rational(1, 2), {b} < sp.Rational(1, 2))), ({c}, True))", 3,
     lambda o: (max(o[0][0], o[2][0]), min(o[0][1], o[2][1])), None, None),
    ("pw_or", "sp.Piecewise(({a}, sp.Or({b} > {c}, {b} < -sp.Rational(1, 3))), ({c}, True))", 3,
     lambda o: (max(o[0][0], o[2][0]), min(o[0][1], o[2][1])), None, None),
    ("pw_three", "sp.Piecewise(({a}, {b} > sp.Rational(1, 2)), ({c}, {b} < -sp.Rational(1, 2)), ({b}, True))", 3,
     lambda o: (max(o[0][0], o[1][0], o[2][0]), 0.0), None, None),
]
NARY_BY_NAME = {o[0]: o for o in NARY}
_LETTERS = "abcd"

# gradc.layers' activations: (name, source over {a} (a tensor or a scalar), the oracle of one element
# as PyTorch defines it, largest |argument| allowed (None: any), bound(hi) -> hi)
ACTIVATIONS = [
    ("leaky_relu", "L.leaky_relu({a})", lambda e: sp.Piecewise((e, e > 0), (e / 100, True)), None, lambda h: h),
    ("leaky_relu_slope", "L.leaky_relu({a}, 0.2)", lambda e: sp.Piecewise((e, e > 0), (e / 5, True)), None,
     lambda h: h),
    ("elu", "L.elu({a})", lambda e: sp.Piecewise((e, e > 0), (sp.exp(e) - 1, True)), 10, lambda h: max(h, 1.0)),
    ("elu_alpha", "L.elu({a}, alpha=0.5)", lambda e: sp.Piecewise((e, e > 0), ((sp.exp(e) - 1) / 2, True)), 10,
     lambda h: max(h, 0.5)),
    ("gelu", "L.gelu({a})", lambda e: e / 2 * (1 + sp.erf(e / sp.sqrt(2))), None, lambda h: h),
    ("gelu_tanh", 'L.gelu({a}, approximate="tanh")',
     lambda e: e / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (e + sp.Rational(44715, 10**6) * e ** 3))), 10,
     lambda h: h),
    ("silu", "L.silu({a})", lambda e: e / (1 + sp.exp(-e)), None, lambda h: h),
]

# the steps that draw from the NumPy habits of tensor expressions, zero padding and gradc.layers
NEW_OPS = ("view", "pad", "act", "conv", "pool", "norm", "rnn")


def _unreal(e):
    """True when ``e`` holds a root, log or inverse function (SymPy may not prove such a value real)."""
    return any(isinstance(a, (sp.log, sp.asin, sp.acos, sp.atanh, sp.acosh)) or
               (isinstance(a, sp.Pow) and not a.exp.is_integer) for a in sp.preorder_traversal(e))


def _index_text(i):
    """One index of a subscript as Python text: 2, -1, None, ..., 1:, ::-1."""
    if i is Ellipsis:
        return "..."
    if isinstance(i, slice):
        t = f"{'' if i.start is None else i.start}:{'' if i.stop is None else i.stop}"
        return t + (f":{i.step}" if i.step is not None else "")
    return repr(i)


HEADER = "import sympy as sp\nimport gradc as gc\n\nm = gc.Model(\"fuzz\")\nk, j = gc.index(\"k\"), gc.index(\"j\")\n"
NS = {"sp": sp, "gc": gc}

HAVE_LAYERS = importlib.util.find_spec("gradc.layers") is not None   # the layer helpers, drawn when present

LET_SIZE = 120       # an element expression this large is named as a let of the oracle (Gen.compact)


def _tree_size(e, limit):
    n = 0
    for _ in sp.preorder_traversal(e):
        n += 1
        if n >= limit:
            break
    return n


# ---- the generator ---------------------------------------------------------------
@dataclass(eq=False)
class Node:
    var: str                 # the Python variable holding it in the source
    shape: tuple
    elem: np.ndarray         # one SymPy expression per element (oracle)
    hi: float                # |value| <= hi
    lo: float = 0.0          # value >= lo > 0 when known positive
    handle: bool = False     # a declared or defined tensor (Tensor / Symbol), not a lazy expression
    param: bool = False      # depends on a parameter
    vid: int = 0             # value identity (kept when a value is only renamed/materialized)
    is_int: bool = False     # an int32 input used as a number
    data: bool = False       # depends on an input
    pw: bool = False         # its expression (as later steps read it) holds a Piecewise
    bound: frozenset = frozenset()   # index names (k, j) bound by Sums inside its expression
    divmod: bool = False     # a lazy expression that reads at other than its plain indices (a reshape's
    #                          // and %, a slice, a reversal): not gathered by an int32 input while
    #                          "gather_through_index_arithmetic" is avoided
    negidx: bool = False     # a lazy expression reading x[c - i] (an index running backwards): not put
    #                          under sp.Abs while "abs_of_reversed_read" is avoided
    unreal: bool = False     # a lazy expression holding a root, log or inverse function (SymPy cannot
    #                          prove it real): not put under sp.sign while "sign_of_unreal" is avoided


@dataclass(eq=False)
class DataDecl:
    name: str
    kind: str                # input | target
    shape: tuple
    dist: str                # sym (U(-1,1)) | unit (U(0,1)) | int
    hi_int: int = 0          # ints: values in 0..hi_int-1
    syms: np.ndarray = None


@dataclass
class FuzzCase:
    source: str
    params: dict             # name -> shape
    data: list               # DataDecl
    psyms: dict              # name -> symbol array
    outputs: list            # (name, elem array)
    loss: sp.Expr            # per-sample loss, element symbols
    reg: sp.Expr             # regularization (params only), or 0
    n: int                   # batch size
    seed: int
    lets: list = field(default_factory=list)   # (symbol array, expression array): named intermediate values
    choices: list = field(default_factory=list)  # (category, name) of each random choice of operation
    avoided: tuple = ()
    features: set = field(default_factory=set)

    def build(self):
        ns = {}
        exec(compile(self.source, "<fuzz model>", "exec"), ns)
        return ns["m"]

    @property
    def crc(self):
        return zlib.crc32(self.source.encode())

    def __repr__(self):
        return (f"FuzzCase(batch={self.n}, seed={self.seed}, features={sorted(self.features)})\n"
                f"---- model source ----\n{self.source}----")


_DATA = Node("", (), None, 0.0, data=True)     # a source marker: reads data (an int32 index)


class Gen:
    def __init__(self, avoid, draw=None, rnd=None, coverage=None, focus=()):
        self.focus = tuple(focus)         # operations drawn for 3 in 5 steps (sample_cases(focus=...))
        self.layers = False               # the source imports gradc.layers as L
        self.draw = draw                  # hypothesis's draw, or None: choices come from ``rnd``
        self.rnd = rnd
        self.coverage = coverage          # choice -> how often earlier cases made it (or None)
        self.choices = []
        self.avoid = set(avoid)
        self.lines = []
        self.nodes = []
        self.count = 0
        self.vid = 0
        self.params = {}
        self.psyms = {}
        self.data = []
        self.ints = []            # (DataDecl, rows) for int32 inputs used as indices
        self.outputs = []
        self.sigs = set()
        self.features = set()
        self.lets = []

    # -- helpers --
    def pick(self, seq):
        seq = list(seq)
        if len(seq) == 1:
            return seq[0]
        return self.draw(st.sampled_from(seq)) if self.draw else self.rnd.choice(seq)

    def integer(self, lo, hi):
        return self.draw(st.integers(lo, hi)) if self.draw else self.rnd.randint(lo, hi)

    def choose(self, category, options):
        """One of ``options`` (names, or tuples whose first item is the name).

        With a ``coverage`` count (``sample_cases``), 3 in 4 choices go to an option earlier
        cases have chosen least, so that a list of a few dozen cases covers every option.
        """
        options = list(options)
        key = lambda o: (category, o[0] if isinstance(o, tuple) else o)  # noqa: E731
        if self.coverage is not None and category != "op" and self.flag(0.75):
            least = min(self.coverage[key(o)] for o in options)
            options = [o for o in options if self.coverage[key(o)] == least]
        choice = self.pick(options)
        self.choices.append(key(choice))
        return choice

    def flag(self, p=0.5):
        return self.integer(0, 99) < round(100 * p)

    def pick_node(self, pred=None):
        """A node satisfying ``pred``, most often one of the latest (so that models grow deep)."""
        cands = [n for n in self.nodes if pred is None or pred(n)]
        if not cands:
            return None
        if len(cands) > 3 and self.flag(0.6):
            cands = cands[-3:]
        return self.pick(cands)

    def fresh(self, prefix="n"):
        self.count += 1
        return f"{prefix}{self.count}"

    def new_vid(self):
        self.vid += 1
        return self.vid

    def emit(self, line):
        self.lines.append(line)

    def idx_closed(self, *inside, exclude=()):
        """An index for a Sum that is evaluated once (a scalar, or a define body) around ``inside``.

        The names k and j are shared by every such Sum; one that a Sum inside the summand already
        binds is avoided while "shadowed_sum_index" is (only sibling Sums then share a name).
        """
        names = [n for n in ("k", "j") if n not in exclude]
        if "shadowed_sum_index" in self.avoid:
            taken = set().union(*[o.bound for o in inside])
            names = [n for n in names if n not in taken]
        return self.pick(names) if names else self.idx_fresh()

    def allowed(self, template, operands, shape):
        """False when ``template`` over ``operands`` would hit a known bug being avoided."""
        if "abs_of_integer" in self.avoid and "Abs" in template and \
                any(e.is_integer for o in operands for e in o.elem.ravel()):
            return False
        if "abs_of_reversed_read" in self.avoid and "Abs" in template and any(o.negidx for o in operands):
            return False
        if "sign_of_unreal" in self.avoid and "sp.sign" in template and any(o.unreal for o in operands):
            return False
        return True

    def gatherable(self, n):
        """False when gathering from ``n`` by an int32 input would hit a known bug being avoided."""
        return not (n.divmod and "gather_through_index_arithmetic" in self.avoid)

    def idx_fresh(self):
        name = self.fresh("q")
        self.emit(f'{name} = gc.index("{name}")')
        return name

    def add(self, node, sig=None):
        if sig is not None:
            if sig in self.sigs:
                return None
            self.sigs.add(sig)
        if node.hi > HMAX:
            raise AssertionError("internal: unscaled node")
        if not node.handle and node.elem is not None and not node.unreal:
            node.unreal = any(_unreal(e) for e in node.elem.ravel())
        self.compact(node)
        self.nodes.append(node)
        return node

    def compact(self, node):
        """Name big element expressions (a let binding of the oracle), so that expressions stay small."""
        if node.elem is None or not any(_tree_size(e, LET_SIZE) >= LET_SIZE for e in node.elem.ravel()):
            return
        syms = symbols("T", str(len(self.lets)), node.elem.shape, real=True)
        self.lets.append((syms, node.elem))
        node.elem = syms

    def scaled(self, ref, hi, limit):
        """(text, hi) of ``ref`` divided by an integer so that |value| <= limit."""
        if limit is None or hi <= limit:
            return ref, hi
        s = int(math.ceil(hi / limit))
        return f"({ref} / {s})", hi / s

    # -- declarations --
    def declare(self):
        self.dims = [self.integer(1, 6) for _ in range(3)]
        self.dims[0] = max(self.dims[0], 2) if self.flag(0.7) else self.dims[0]
        for _ in range(self.integer(1, 3)):
            self.declare_param(self.draw_shape())
        for _ in range(self.integer(1, 2)):
            self.declare_data("input", self.draw_shape(), "sym", as_node=True)
        if self.flag(0.3):                 # an int32 input that gathers rows
            rows = self.pick(self.dims)
            u = self.declare_data("input", (), "int", hi_int=rows)
            self.ints.append((u, rows))
            self.features.add("int32_input")
            if self.flag(0.7):
                self.declare_param((rows, self.pick(self.dims)))
            if self.flag(0.3):
                self.declare_param((rows,))
            if self.flag(0.3):             # the int also used as a number
                self.add(Node(u.name, (), scalar_array(u.syms[()]), float(max(rows - 1, 1)), 0.0, handle=True,
                              vid=self.new_vid(), is_int=True, data=True))
            if self.flag(0.3):             # a second id into the same rows
                self.ints.append((self.declare_data("input", (), "int", hi_int=rows), rows))
            if self.flag(0.3):             # a vector of ids into the same rows
                n = self.pick(self.dims)
                ids = self.declare_data("input", (n,), "int", hi_int=rows)
                self.ints.append((ids, rows))

    def draw_shape(self):
        rank = self.pick([0, 1, 1, 2])
        return tuple(self.pick(self.dims) for _ in range(rank))

    def declare_param(self, shape, node=True):
        """A new parameter (values in [-1, 1]); ``node=False``: a layer's weight, not offered to other steps."""
        name = f"p{len(self.params)}"
        self.params[name] = shape
        init = self.pick(["", ", init=gc.init.uniform(-1, 1)", ", init=0.5"])
        self.emit(f'{name} = m.param("{name}", {shape!r}{init})')
        syms = symbols("P", name, shape, real=True)
        self.psyms[name] = syms
        if node:
            self.add(Node(name, shape, syms, 1.0, handle=True, param=True, vid=self.new_vid()))
        return name, syms

    def declare_data(self, kind, shape, dist, hi_int=0, as_node=False):
        prefix = {"input": "x", "target": "y"}[kind] if dist != "int" else \
            ("lbl" if kind == "target" else "u" if not shape else "ids")
        name = f"{prefix}{len(self.data)}"
        dt = ', dtype="int32"' if dist == "int" else ""
        shape_txt = "" if shape == () and not dt else f", {shape!r}"
        fn = "input" if kind == "input" else "target"
        self.emit(f'{name} = m.{fn}("{name}"{shape_txt}{dt})')
        syms = symbols("I" if dist == "int" else ("X" if kind == "input" else "Y"), name, shape,
                       **({"integer": True} if dist == "int" else {"real": True}))
        decl = DataDecl(name, kind, shape, dist, hi_int, syms)
        self.data.append(decl)
        if as_node:
            self.add(Node(name, shape, syms, 1.0, handle=True, vid=self.new_vid(), data=True))
        return decl

    # -- the elementwise step, in one of several spellings --
    def elementwise(self, template, operands, shape, hi, lo, opform=None, sig=None):
        """A new node: ``template`` ({0}, {1}, ... the operands) applied elementwise."""
        if hi > HMAX:
            s = int(math.ceil(hi / (HMAX / 2)))
            template = f"({template}) / {s}"
            opform = f"({opform}) / {s}" if opform else None
            hi, lo = hi / s, lo / s
        fn = eval("lambda *_r: " + template.format(*[f"_r[{i}]" for i in range(len(operands))]), NS)
        elem = emap(fn, shape, [o.elem for o in operands])
        var = self.fresh()
        tensor_ops = [o for o in operands if o.shape]
        styles = []
        if not shape:
            styles = ["expr", "define"]
        else:
            styles = ["define", "lazy"]
            if len({o.var for o in tensor_ops}) == 1:
                styles += ["map", "elementwise"]
            if opform:
                styles += ["operator"]
        style = self.choose("style", styles)
        self.features.add("style_" + style)
        letters = [f"a{i}" for i in range(len(shape))]
        if style == "expr":
            text = template.format(*[o.var for o in operands])
            self.emit(f"{var} = {text}")
        elif style == "define":
            if shape:
                refs = [f"{o.var}[{', '.join(letters)}]" if o.shape else o.var for o in operands]
                self.emit(f'{var} = m.define("s{var[1:]}", {shape!r}, lambda {", ".join(letters)}: '
                          f"{template.format(*refs)})")
            else:
                self.emit(f'{var} = m.define("s{var[1:]}", {template.format(*[o.var for o in operands])})')
        elif style == "lazy":
            refs = [f"{o.var}[{', '.join(letters)}]" if o.shape else o.var for o in operands]
            self.emit(f"{var} = gc.TensorExpr(m, {shape!r}, lambda {', '.join(letters)}: {template.format(*refs)})")
        elif style in ("map", "elementwise"):
            t = tensor_ops[0].var
            refs = ["e" if o.shape else o.var for o in operands]
            if style == "map":
                self.emit(f"{var} = {t}.map(lambda e: {template.format(*refs)})")
            else:
                self.emit(f"{var} = gc.elementwise(lambda e: {template.format(*refs)})({t})")
        else:
            self.emit(f"{var} = {opform.format(*[o.var for o in operands])}")
        return self.add(Node(var, shape, elem, hi, lo, handle=style == "define",
                             param=any(o.param for o in operands), vid=self.new_vid(),
                             data=any(o.data for o in operands),
                             pw=style != "define" and ("Piecewise" in template or any(o.pw for o in operands)),
                             divmod=style != "define" and any(o.divmod for o in operands),
                             negidx=style != "define" and any(o.negidx for o in operands),
                             unreal=style != "define" and any(o.unreal for o in operands),
                             bound=frozenset() if style == "define" else frozenset().union(*[o.bound for o in operands])),
                        sig)

    # -- steps --
    def step(self):
        ops = ["unary", "unary", "unary", "nary", "nary", "nary", "reduce", "matmul", "materialize", "output",
               "index", "stack", "indexmap"]
        if any(len(n.shape) == 2 for n in self.nodes):
            ops += ["transpose"]
        if any(n.shape and len(n.shape) == 1 for n in self.nodes):
            ops += ["nn"]
        if self.ints:
            ops += ["gather", "gather"]
        if any(n.lo >= POS_LO and n.hi <= 50 for n in self.nodes):
            ops += ["pos_unary", "pos_unary"]
        ops += ["view", "view"]
        if any(n.handle and 1 <= len(n.shape) <= 3 for n in self.nodes):
            ops += ["pad"]
        if HAVE_LAYERS:
            ops += ["act", "conv", "pool", "norm", "rnn"]
        focus = [o for o in ops if o in self.focus]
        before = len(self.nodes), len(self.lines)
        for _ in range(4):             # an operation that does not apply to the drawn operands is redrawn
            n_choices = len(self.choices)
            op = self.choose("focus", sorted(set(focus))) if focus and self.flag(0.6) else self.choose("op", ops)
            getattr(self, "op_" + op)()
            if (len(self.nodes), len(self.lines)) != before:
                return
            del self.choices[n_choices:]          # coverage counts what was made, not what was tried

    def op_unary(self):
        x = self.pick_node()
        name, template, limit, bound, opform = self.choose("unary", UNARY)
        if x.pw and "piecewise_condition_ite" in self.avoid and template.startswith("sp.Piecewise"):
            return
        if not self.allowed(template, [x], x.shape):
            return
        if name in ("floor", "ceiling") and "floor_of_expression" in self.avoid and not x.handle:
            return
        self.features.add(name)
        arg, h = self.scaled("{0}", x.hi, limit)
        hi, lo = bound(h, x.lo / (x.hi / h) if h else 0.0)
        t = template.format(a=arg)
        of = opform.format(a="{0}") if opform and arg == "{0}" else None
        self.elementwise(t, [x], x.shape, hi, lo, of, sig=(name, x.vid, arg))

    def op_pos_unary(self):
        x = self.pick_node(lambda n: n.lo >= POS_LO and n.hi <= 50)
        name, template, bound, opform = self.choose("pos_unary", POS_UNARY)
        hi, lo = bound(x.hi, x.lo)
        if hi > 1e4:
            return
        self.features.add("pos_" + name)
        self.elementwise(template.format(a="{0}"), [x], x.shape, hi, lo, opform and opform.format(a="{0}"),
                         sig=(name, x.vid))

    def op_nary(self):
        name, template, arity, bound, opform, req = self.choose("nary", NARY)
        positive = {"div": 1, "pow_var": 0}.get(name)      # the operand that must be positive
        first = self.pick_node((lambda n: n.lo >= 0.1 and n.hi <= 50) if positive == 0 else None)
        if first is None:
            return
        shape = first.shape
        others = []
        for i in range(1, arity):
            ok = (lambda n: n.shape in (shape, ()) and n.lo >= 0.1) if positive == i else \
                (lambda n: n.shape in (shape, ()))
            used = {first.vid} | {o.vid for o in others}
            # distinct operands when there are any (x - x, Max(x, x) are not worth a compile)
            o = self.pick_node(lambda n: ok(n) and n.vid not in used) or (
                self.pick_node(ok) if name in ("mul", "add", "fma", "pow_var") else None)
            if o is None:
                return
            others.append(o)
        operands = [first] + others
        if "piecewise_condition_ite" in self.avoid and any(
                operands[i].pw for i in {"pw_gt": (1, 2), "pw_lt0": (1,), "pw_band": (1,), "pw_or": (1, 2),
                                         "pw_three": (1,)}.get(name, ())):
            return
        if shape == ():      # a tensor among the others sets the shape
            shapes = {o.shape for o in operands if o.shape}
            if len(shapes) > 1:
                return
            shape = shapes.pop() if shapes else ()
        if not self.allowed(template, operands, shape):
            return
        # scale operands into a safe range for products and powers
        limit = {"mul": 5, "fma": 4, "pow_var": None}.get(name, None)
        refs, hl = [], []
        for i, o in enumerate(operands):
            lim = limit
            if name == "pow_var" and i == 1:
                lim = 1.5
            r, h = self.scaled("{%d}" % i, o.hi, lim)
            refs.append(r)
            f = h / o.hi if o.hi else 1.0
            hl.append((h, o.lo * f))
        if req is not None and not req(hl):
            return
        hi, lo = bound(hl)
        self.features.add(name)
        t = template.format(**dict(zip(_LETTERS, refs)))
        of = opform.format(**{c: "{%d}" % i for i, c in enumerate(_LETTERS[:arity])}) \
            if opform and all(r == "{%d}" % i for i, r in enumerate(refs)) else None
        key = [o.vid for o in operands]
        if name in ("add", "mul", "max2", "min2", "max3"):
            key = sorted(key)
        self.elementwise(t, operands, shape, hi, lo, of, sig=(name, tuple(key), tuple(refs)))

    def op_reduce(self):
        x = self.pick_node(lambda n: n.shape)
        if x is None:
            return
        kind = self.choose("reduce", ["sum", "Sum", "Sum_fn", "Sum_shift", "axis", "conv", "log_sum_exp"])
        size = int(np.prod(x.shape))
        var = self.fresh()
        if kind == "sum" or (kind == "conv" and len(x.shape) != 1) or (kind in ("Sum", "Sum_fn") and len(x.shape) > 2):
            self.features.add("sum_method")
            hi = size * x.hi
            elem = scalar_array(sp.Add(*x.elem.ravel()))
            text = f"{x.var}.sum()"
            return self.finish_scalar(var, text, elem, hi, [x], sig=("sum", x.vid))
        if kind in ("Sum", "Sum_fn"):
            self.features.add("explicit_Sum")
            fname, template, limit, bound, _ = UNARY_BY_NAME[self.pick(["tanh", "exp", "square", "sigmoid", "abs",
                                                                        "relu", "softplus", "sin"])] \
                if kind == "Sum_fn" else ("id", "{a}", None, _same, None)
            if not self.allowed(template, [x], x.shape):
                fname, template, limit, bound = "id", "{a}", None, _same
            arg, h = self.scaled("{0}", x.hi, limit)
            hi1, _ = bound(h, 0.0)
            fn = eval("lambda _x: " + template.format(a=arg).format("_x"), NS)
            elem = scalar_array(sp.Add(*[fn(e) for e in x.elem.ravel()]))
            ks = [self.idx_closed(x)]
            if len(x.shape) == 2:
                ks.append(self.idx_closed(x, exclude=ks))
            read = f"{x.var}[{', '.join(ks)}]"
            limits = ", ".join(f"({kk}, 0, {n - 1})" for kk, n in zip(ks, x.shape))
            if len(x.shape) == 2 and self.flag(0.5):     # nested Sums instead of one with two limits
                text = (f"sp.Sum(sp.Sum({template.format(a=arg).format(read)}, ({ks[1]}, 0, {x.shape[1] - 1})), "
                        f"({ks[0]}, 0, {x.shape[0] - 1}))")
            else:
                text = f"sp.Sum({template.format(a=arg).format(read)}, {limits})"
            return self.finish_scalar(var, text, elem, size * hi1, [x], sig=(kind, fname, x.vid), bound=ks)
        if kind == "log_sum_exp" and len(x.shape) == 1:      # written out: the lowering adds the max shift
            self.features.add("user_log_sum_exp")
            kk = self.idx_closed(x)
            ref, h = self.scaled(f"{x.var}[{kk}]", x.hi, 10)
            s = int(math.ceil(x.hi / 10)) if x.hi > 10 else 1
            text = f"sp.log(sp.Sum(sp.exp({ref}), ({kk}, 0, {x.shape[0] - 1})))"
            elem = scalar_array(sp.log(sp.Add(*[sp.exp(e / s) for e in x.elem])))
            return self.finish_scalar(var, text, elem, h + math.log(x.shape[0]), [x], sig=("lse", x.vid),
                                      bound=[kk])
        if kind == "Sum_shift" and len(x.shape) == 1 and x.shape[0] >= 2:
            self.features.add("affine_index")
            kk = self.idx_closed(x)
            n = x.shape[0]
            variant = self.pick(["offset", "stride", "pairs"])
            if variant == "offset":
                text = f"sp.Sum({x.var}[{kk} - 1], ({kk}, 1, {n}))"
                elem = scalar_array(sp.Add(*x.elem))
                hi = n * x.hi
            elif variant == "stride":                 # x[2k] and x[n-1-2k]: coefficients other than 1
                half = (n - 1) // 2
                text = f"sp.Sum({x.var}[2 * {kk}] - {x.var}[{n - 1} - 2 * {kk}] / 2, ({kk}, 0, {half}))"
                elem = scalar_array(sp.Add(*[x.elem[2 * r] - x.elem[n - 1 - 2 * r] / 2 for r in range(half + 1)]))
                hi = (half + 1) * 1.5 * x.hi
            else:
                a, _ = self.scaled("{0}", x.hi, 4)
                text = f"sp.Sum({a.format(x.var + f'[{kk} + 1]')} * {a.format(x.var + f'[{kk}]')}, ({kk}, 0, {n - 2}))"
                f = (x.hi / 4) if x.hi > 4 else 1
                s = int(math.ceil(f)) if x.hi > 4 else 1
                elem = scalar_array(sp.Add(*[(x.elem[r + 1] / s) * (x.elem[r] / s) for r in range(n - 1)])
                                    if s > 1 else sp.Add(*[x.elem[r + 1] * x.elem[r] for r in range(n - 1)]))
                hi = (n - 1) * (x.hi / s) ** 2
            return self.finish_scalar(var, text, elem, hi, [x], sig=("shift", x.vid, text), bound=[kk],
                                      negidx=variant == "stride")
        if kind == "axis" and len(x.shape) == 2:
            self.features.add("axis_Sum")
            axis = self.pick([0, 1])
            keep = x.shape[1 - axis]
            n = x.shape[axis]
            lazy = self.flag(0.5)
            kk = self.idx_fresh() if lazy else self.idx_closed(x)
            read = f"{x.var}[a0, {kk}]" if axis == 1 else f"{x.var}[{kk}, a0]"
            body = f"lambda a0: sp.Sum({read}, ({kk}, 0, {n - 1}))"
            if lazy:
                self.emit(f"{var} = gc.TensorExpr(m, ({keep},), {body})")
            else:
                self.emit(f'{var} = m.define("s{var[1:]}", ({keep},), {body})')
            elem = np.array([sp.Add(*(x.elem[r, :] if axis == 1 else x.elem[:, r])) for r in range(keep)],
                            dtype=object)
            return self.finish_tensor(var, elem, n * x.hi, [x], not lazy, sig=("axis", axis, x.vid))
        if kind == "conv" and len(x.shape) == 1:
            ws = [w for w in self.nodes if len(w.shape) == 1 and w.shape[0] <= x.shape[0] and w is not x]
            if not ws:
                return
            w = self.pick(ws)
            self.features.add("conv")
            out = x.shape[0] - w.shape[0] + 1
            lazy = self.flag(0.5)
            kk = self.idx_fresh() if lazy else self.idx_closed(x, w)
            aw, hw = self.scaled("{0}", w.hi, 4)
            ax, hx = self.scaled("{0}", x.hi, 4)
            body = (f"lambda a0: sp.Sum({aw.format(w.var + f'[{kk}]')} * {ax.format(x.var + f'[a0 + {kk}]')}, "
                    f"({kk}, 0, {w.shape[0] - 1}))")
            if lazy:
                self.emit(f"{var} = gc.TensorExpr(m, ({out},), {body})")
            else:
                self.emit(f'{var} = m.define("s{var[1:]}", ({out},), {body})')
            sw = int(math.ceil(w.hi / 4)) if w.hi > 4 else 1
            sx = int(math.ceil(x.hi / 4)) if x.hi > 4 else 1
            elem = np.array([sp.Add(*[(w.elem[r] / sw) * (x.elem[i + r] / sx) for r in range(w.shape[0])])
                             for i in range(out)], dtype=object)
            return self.finish_tensor(var, elem, w.shape[0] * hw * hx, [x, w], not lazy,
                                      sig=("conv", w.vid, x.vid))

    def finish_scalar(self, var, text, elem, hi, srcs, sig, bound=(), pw=False, divmod=False, negidx=False):
        if sig in self.sigs:
            return None
        if hi > HMAX:
            s = int(math.ceil(hi / (HMAX / 2)))
            text, elem, hi = f"({text}) / {s}", scalar_array(elem[()] / s), hi / s
        if self.flag(0.4):
            self.emit(f'{var} = m.define("s{var[1:]}", {text})')
            handle = True
        else:
            self.emit(f"{var} = {text}")
            handle = False
        return self.add(Node(var, (), elem, hi, 0.0, handle=handle, param=any(x.param for x in srcs),
                             data=any(x.data for x in srcs), vid=self.new_vid(),
                             pw=not handle and (pw or any(x.pw for x in srcs)),
                             divmod=not handle and (divmod or any(x.divmod for x in srcs)),
                             negidx=not handle and (negidx or any(x.negidx for x in srcs)),
                             unreal=not handle and any(x.unreal for x in srcs),
                             bound=frozenset() if handle else frozenset(bound).union(*[x.bound for x in srcs])), sig)

    def finish_tensor(self, var, elem, hi, srcs, handle, sig, lo=0.0, bound=(), pw=False, divmod=False,
                      negidx=False):
        if sig in self.sigs:
            return None
        if hi > HMAX:
            s = int(math.ceil(hi / (HMAX / 2)))
            nv = self.fresh()
            self.emit(f"{nv} = {var} / {s}")
            var, elem, hi, lo, handle = nv, emap(lambda e: e / s, elem.shape, [elem]), hi / s, lo / s, False
        return self.add(Node(var, elem.shape, elem, hi, lo, handle=handle, param=any(x.param for x in srcs),
                             data=any(x.data for x in srcs), vid=self.new_vid(),
                             pw=not handle and (pw or any(x.pw for x in srcs)),
                             divmod=not handle and (divmod or any(x.divmod for x in srcs)),
                             negidx=not handle and (negidx or any(x.negidx for x in srcs)),
                             unreal=not handle and any(x.unreal for x in srcs),
                             bound=frozenset() if handle else frozenset(bound).union(*[x.bound for x in srcs])), sig)

    def op_matmul(self):
        pairs = []
        for a in self.nodes:
            for b in self.nodes:
                if len(a.shape) == 2 and 1 <= len(b.shape) <= 2 and a.shape[1] == b.shape[0]:
                    pairs.append((a, b))
                elif len(a.shape) == 1 and len(b.shape) == 2 and a.shape[0] == b.shape[0]:
                    pairs.append((a, b))
                elif len(a.shape) == 1 and a.shape == b.shape:
                    pairs.append((a, b))
        if not pairs:
            return
        products = [(a, b) for a, b in pairs if len(a.shape) + len(b.shape) > 2]
        a, b = self.pick(products if products and self.flag(0.7) else pairs)
        sa = int(math.ceil(a.hi / 4)) if a.hi > 4 else 1
        sb = int(math.ceil(b.hi / 4)) if b.hi > 4 else 1
        A = np.vectorize(lambda e: e / sa, otypes=[object])(a.elem) if sa > 1 else a.elem
        B = np.vectorize(lambda e: e / sb, otypes=[object])(b.elem) if sb > 1 else b.elem
        ra = f"({a.var} / {sa})" if sa > 1 else a.var
        rb = f"({b.var} / {sb})" if sb > 1 else b.var
        inner = a.shape[-1]
        hi = inner * (a.hi / sa) * (b.hi / sb)
        var = self.fresh()
        param = [a, b]
        sig = ("matmul", a.vid, b.vid)
        if len(a.shape) == 1 and len(b.shape) == 1:            # a dot product
            self.features.add("dot")
            elem = scalar_array(sp.Add(*[A[r] * B[r] for r in range(inner)]))
            kk = self.idx_closed(a, b)
            text = self.pick([f"({ra} * {rb}).sum()",
                              f"sp.Sum({ra}[{kk}] * {rb}[{kk}], ({kk}, 0, {inner - 1}))"])
            if a.handle and b.handle and sa == sb == 1 and self.flag(0.3):
                text = f"({a.var}.M.T * {b.var}.M)[0, 0]"
                self.features.add("matrix_M")
            return self.finish_scalar(var, text, elem, hi, param, sig, bound=[kk] if "sp.Sum" in text else ())
        out_shape = a.shape[:-1] + b.shape[1:]
        elem = np.empty(out_shape, dtype=object)
        for idx in np.ndindex(*out_shape):
            ia, ib = idx[:len(a.shape) - 1], idx[len(a.shape) - 1:]
            elem[idx] = sp.Add(*[A[ia + (r,)] * B[(r,) + ib] for r in range(inner)])
        style = self.choose("matmul", ["@", "explicit", "explicit_lazy", "M", "dense"])
        handle = False
        if style == "M" and a.handle and b.handle and sa == sb == 1 and len(a.shape) == 2:
            self.features.add("matrix_M")
            self.emit(f'{var} = m.define("s{var[1:]}", {out_shape!r}, {a.var}.M * {b.var}.M)')
            handle = True
        elif style in ("explicit", "explicit_lazy"):
            self.features.add("explicit_matmul")
            lazy = style == "explicit_lazy"
            kk = self.idx_fresh() if lazy else self.idx_closed(a, b)
            letters = [f"a{i}" for i in range(len(out_shape))]
            la, lb = letters[:len(a.shape) - 1], letters[len(a.shape) - 1:]
            body = (f"sp.Sum({ra}[{', '.join(la + [kk])}] * {rb}[{', '.join([kk] + lb)}], "
                    f"({kk}, 0, {inner - 1}))")
            if lazy:
                self.emit(f"{var} = gc.TensorExpr(m, {out_shape!r}, lambda {', '.join(letters)}: {body})")
            else:
                self.emit(f'{var} = m.define("s{var[1:]}", {out_shape!r}, lambda {", ".join(letters)}: {body})')
                handle = True
        elif style == "dense" and len(a.shape) == 2 and len(b.shape) == 1:
            bias = [n for n in self.nodes if n.shape == (a.shape[0],)]
            if bias:
                c = self.pick(bias)
                sc = int(math.ceil(c.hi / 4)) if c.hi > 4 else 1
                rc = f"({c.var} / {sc})" if sc > 1 else c.var
                self.features.add("dense")
                self.emit(f"{var} = gc.dense({rb}, {ra}, {rc})")
                elem = emap(lambda e, f: e + f / sc, out_shape, [elem, c.elem])
                hi += c.hi / sc
                param = param + [c]
                sig = ("dense", a.vid, b.vid, c.vid)
            else:
                self.emit(f"{var} = gc.dense({rb}, {ra})")
        else:
            self.features.add("matmul_op")
            self.emit(f"{var} = {ra} @ {rb}")
        return self.finish_tensor(var, elem, hi, param, handle, sig)

    def op_indexmap(self):
        """Elementwise with index maps: outer products, broadcasts along one axis, diagonals,
        reversed and shifted reads, a scalar broadcast to a tensor."""
        kind = self.choose("indexmap", ["outer", "bcast", "diag", "reverse", "shift", "const"])
        name, template, arity, bound, _, req = self.pick([NARY_BY_NAME[n] for n in
                                                          ("add", "sub", "mul", "max2", "min2", "div_pos")])
        lim = 5 if name == "mul" else None
        if kind == "outer":
            u = self.pick_node(lambda n: len(n.shape) == 1)
            v = self.pick_node(lambda n: len(n.shape) == 1)
            if u is None or v is None:
                return
            ops, shape, reads = [u, v], (u.shape[0], v.shape[0]), ["{0}[a0]", "{1}[a1]"]
            eidx = lambda i: [(i[0],), (i[1],)]  # noqa: E731
        elif kind == "bcast":
            x = self.pick_node(lambda n: len(n.shape) == 2)
            if x is None:
                return
            axis = self.pick([0, 1])
            v = self.pick_node(lambda n: n.shape == (x.shape[axis],))
            if v is None:
                return
            ops, shape = [x, v], x.shape
            reads = ["{0}[a0, a1]", "{1}[a%d]" % axis]
            eidx = lambda i: [i, (i[axis],)]  # noqa: E731
        elif kind == "diag":
            x = self.pick_node(lambda n: len(n.shape) == 2 and n.shape[0] == n.shape[1])
            if x is None:
                return
            v = self.pick_node(lambda n: n.shape in ((x.shape[0],), ()))
            if v is None:
                return
            ops, shape = [x, v], (x.shape[0],)
            reads = ["{0}[a0, a0]", "{1}[a0]" if v.shape else "{1}"]
            eidx = lambda i: [(i[0], i[0]), i if v.shape else ()]  # noqa: E731
        elif kind == "reverse":
            x = self.pick_node(lambda n: len(n.shape) == 1)
            if x is None:
                return
            d = x.shape[0]
            v = self.pick_node(lambda n: n.shape in ((d,), ()))
            if v is None:
                return
            ops, shape = [x, v], (d,)
            reads = ["{0}[%d - a0]" % (d - 1), "{1}[a0]" if v.shape else "{1}"]
            eidx = lambda i: [(d - 1 - i[0],), i if v.shape else ()]  # noqa: E731
        elif kind == "shift":
            x = self.pick_node(lambda n: len(n.shape) == 1 and n.shape[0] >= 2)
            if x is None:
                return
            d = x.shape[0]
            ops, shape = [x, x], (d - 1,)
            reads = ["{0}[a0 + 1]", "{1}[a0]"]
            eidx = lambda i: [(i[0] + 1,), i]  # noqa: E731
        else:
            x = self.pick_node(lambda n: not n.shape)
            v = self.pick_node(lambda n: not n.shape)
            if x is None or v is None:
                return
            shape = (self.pick(self.dims),)
            ops, reads = [x, v], ["{0}", "{1}"]
            eidx = lambda i: [(), ()]  # noqa: E731
        refs, hl = [], []
        for i, o in enumerate(ops):
            r, h = self.scaled(reads[i], o.hi, lim)
            refs.append(r.replace("{%d}" % i, o.var))
            hl.append((h, o.lo * (h / o.hi if o.hi else 1.0)))
        hi, lo = bound(hl)
        if hi > HMAX:
            return
        text = template.format(a=refs[0], b=refs[1])
        fn = eval("lambda _a, _b: " + template.format(a=self.scaled("_a", ops[0].hi, lim)[0],
                                                         b=self.scaled("_b", ops[1].hi, lim)[0]), NS)
        elem = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            ia, ib = eidx(idx)
            elem[idx] = fn(ops[0].elem[ia], ops[1].elem[ib])
        sig = ("indexmap", kind, name, ops[0].vid, ops[1].vid)
        if sig in self.sigs:
            return
        self.features.add("indexmap_" + kind)
        var = self.fresh()
        letters = ", ".join(f"a{i}" for i in range(len(shape)))
        lazy = self.flag(0.4)
        if lazy:
            self.emit(f"{var} = gc.TensorExpr(m, {shape!r}, lambda {letters}: {text})")
        else:
            self.emit(f'{var} = m.define("s{var[1:]}", {shape!r}, lambda {letters}: {text})')
        return self.finish_tensor(var, elem, hi, ops, not lazy, sig, lo=lo, negidx=kind == "reverse",
                                  divmod=kind in ("reverse", "shift"))

    def op_transpose(self):
        x = self.pick_node(lambda n: len(n.shape) == 2)
        var = self.fresh()
        self.features.add("transpose")
        self.emit(f"{var} = {x.var}.T")
        self.add(Node(var, x.shape[::-1], x.elem.T.copy(), x.hi, x.lo, param=x.param, data=x.data, pw=x.pw,
                      divmod=x.divmod, negidx=x.negidx, unreal=x.unreal,
                      vid=self.new_vid(), bound=x.bound),
                 sig=("T", x.vid))

    def op_index(self):
        x = self.pick_node(lambda n: n.shape)
        if x is None:
            return
        idx = tuple(self.integer(0, s - 1) for s in x.shape)
        var = self.fresh()
        self.features.add("constant_index")
        self.emit(f"{var} = {x.var}[{', '.join(map(str, idx))}]")
        self.add(Node(var, (), scalar_array(x.elem[idx]), x.hi, x.lo, param=x.param, data=x.data, pw=x.pw,
                      vid=self.new_vid(), bound=x.bound),
                 sig=("index", x.vid, idx))

    def op_stack(self):
        cands = [n for n in self.nodes if not n.shape]
        if len(cands) < 1:
            return
        parts = [self.pick(cands) for _ in range(self.integer(1, 4))]
        var = self.fresh()
        self.features.add("stack")
        items = ", ".join(p.var for p in parts)
        if self.flag(0.5):
            self.emit(f'{var} = m.define("s{var[1:]}", ({len(parts)},), [{items}])')
        else:
            self.emit(f'{var} = m.define("s{var[1:]}", sp.Matrix([{items}]))')
        elem = np.array([p.elem[()] for p in parts] + [None], dtype=object)[:-1]
        self.add(Node(var, (len(parts),), elem, max(p.hi for p in parts), min(p.lo for p in parts), handle=True,
                      param=any(p.param for p in parts), data=any(p.data for p in parts), vid=self.new_vid()),
                 sig=("stack", tuple(p.vid for p in parts)))

    def op_materialize(self):
        x = self.pick_node(lambda n: not n.handle)
        if x is None:
            return
        var = self.fresh()
        self.features.add("materialize")
        if x.shape and self.flag(0.5):
            self.emit(f'{var} = m.define("s{var[1:]}", {x.shape!r}, {x.var})')
        else:
            self.emit(f'{var} = m.define("s{var[1:]}", {x.var})')
        self.replace(x, var)

    def op_output(self):
        x = self.pick_node(lambda n: not n.is_int)
        var = self.fresh()
        name = f"o{var[1:]}"
        self.features.add("output")
        self.emit(f'{var} = m.output("{name}", {x.var})')
        self.outputs.append((name, x.elem))
        self.replace(x, var)

    def replace(self, x, var):
        """``var`` now holds x's value as a stage: later steps read the stage, never both."""
        self.nodes.remove(x)
        self.nodes.append(Node(var, x.shape, x.elem, x.hi, x.lo, handle=True, param=x.param, data=x.data, vid=x.vid))

    def op_nn(self):
        x = self.pick_node(lambda n: len(n.shape) == 1)
        kind = self.choose("nn", ["logsumexp", "softmax", "log_softmax"])
        self.features.add(kind)
        n = x.shape[0]
        ref, h = self.scaled(x.var, x.hi, 8)
        s = x.hi / h if h else 1.0
        z = [e / int(round(s)) if s > 1 else e for e in x.elem]
        lse = sp.log(sp.Add(*[sp.exp(e) for e in z]))
        var = self.fresh()
        if kind == "logsumexp":
            return self.finish_scalar(var, f"gc.logsumexp({ref})", scalar_array(lse), h + math.log(n), [x],
                                      sig=(kind, x.vid))
        if kind == "softmax":
            self.emit(f"{var} = gc.softmax({ref})")
            elem = np.array([sp.exp(e - lse) for e in z], dtype=object)
            return self.finish_tensor(var, elem, 1.0, [x], False, sig=(kind, x.vid),
                                      lo=math.exp(-2 * h) / n)
        self.emit(f"{var} = gc.log_softmax({ref})")
        elem = np.array([e - lse for e in z], dtype=object)
        return self.finish_tensor(var, elem, 2 * h + math.log(n), [x], False, sig=(kind, x.vid))

    def op_gather(self):
        u, rows = self.pick(self.ints)
        var = self.fresh()
        if u.shape:                                 # a bag of rows, summed: ids[k] inside a Sum
            cands = [n for n in self.nodes if len(n.shape) == 2 and n.shape[0] == rows and self.gatherable(n)]
            if not cands:
                return
            x = self.pick(cands)
            self.features.add("gather_bag")
            kk = self.idx_closed(x)
            n, cols = u.shape[0], x.shape[1]
            if self.flag(0.7):
                self.emit(f'{var} = m.define("s{var[1:]}", ({cols},), lambda a0: '
                          f"sp.Sum({x.var}[{u.name}[{kk}], a0], ({kk}, 0, {n - 1})))")
                elem = np.array([sp.Add(*[gather(x.elem[:, c], u.syms[r]) for r in range(n)])
                                 for c in range(cols)], dtype=object)
            else:                                   # one id of the vector, at a constant position
                r = self.integer(0, n - 1)
                self.features.add("gather_ids_element")
                self.emit(f'{var} = m.define("s{var[1:]}", ({cols},), lambda a0: {x.var}[{u.name}[{r}], a0])')
                elem = np.array([gather(x.elem[:, c], u.syms[r]) for c in range(cols)], dtype=object)
            return self.finish_tensor(var, elem, n * x.hi, [x, _DATA], True, sig=("bag", u.name, x.vid))
        cands = [n for n in self.nodes if n.shape and len(n.shape) <= 2 and n.shape[0] == rows and not n.is_int
                 and self.gatherable(n)]
        if not cands:
            return
        x = self.pick(cands)
        if len(x.shape) == 1:
            self.features.add("gather_scalar")
            text = f"{x.var}[{u.name}]"
            return self.finish_scalar(var, text, scalar_array(gather(x.elem, u.syms[()])), x.hi, [x, _DATA],
                                      sig=("gather", u.name, x.vid))
        cols = x.shape[1]
        elem = np.array([gather(x.elem[:, c], u.syms[()]) for c in range(cols)], dtype=object)
        style = self.choose("gather", ["embedding", "define", "element"])
        if style == "element":
            c = self.integer(0, cols - 1)
            self.features.add("gather_element")
            return self.finish_scalar(var, f"{x.var}[{u.name}, {c}]", scalar_array(elem[c]), x.hi, [x, _DATA],
                                      sig=("gather_el", u.name, x.vid, c))
        if style == "embedding" and x.handle:
            self.features.add("embedding")
            self.emit(f"{var} = gc.embedding({x.var}, {u.name})")
            return self.finish_tensor(var, elem, x.hi, [x, _DATA], False, sig=("gather_row", u.name, x.vid))
        self.features.add("gather_define")
        self.emit(f'{var} = m.define("s{var[1:]}", ({cols},), lambda a0: {x.var}[{u.name}, a0])')
        return self.finish_tensor(var, elem, x.hi, [x, _DATA], True, sig=("gather_row", u.name, x.vid))

    # -- NumPy habits of tensor expressions: views, axis reductions, reshapes, broadcasting --
    def scaled_node(self, x, limit):
        """(text, elements, hi, lo) of ``x`` divided by an integer so that |value| <= limit."""
        if limit is None or x.hi <= limit:
            return x.var, x.elem, x.hi, x.lo
        s = int(math.ceil(x.hi / limit))
        return f"({x.var} / {s})", emap(lambda e: e / s, x.shape, [x.elem]), x.hi / s, x.lo / s

    def let(self, arr):
        """``arr`` (an object array of expressions) named as symbols of the oracle (a let binding)."""
        syms = symbols("T", str(len(self.lets)), arr.shape, real=True)
        self.lets.append((syms, arr))
        return syms

    def use_layers(self):
        if not self.layers:
            self.layers = True
            self.lines.insert(0, "from gradc import layers as L")

    def draw_slice(self, n):
        """A nonempty slice of range(n), NumPy style: negative bounds and steps, omitted parts."""
        for _ in range(6):
            step = self.pick([None, 1, 2, 3, -1, -2])
            start = self.pick([None, self.integer(0, n - 1), self.integer(-n, -1)])
            stop = self.pick([None, self.integer(0, n), self.integer(-n, -1)])
            s = slice(start, stop, step)
            if len(range(n)[s]) and s != slice(None) and len(range(n)[s]) < n + (step is not None and step < 0):
                return s
        return slice(None, None, -1) if n > 1 else slice(None)

    def op_view(self):
        kind = self.choose("view", ["slice", "negative", "newaxis", "ellipsis", "sum_axis", "mean_axis",
                                    "reshape", "flatten", "bcast", "bcast_col"])
        getattr(self, "view_" + kind)()

    def _view(self, x, idx, feature):
        text = f"{x.var}[{', '.join(_index_text(i) for i in idx)}]"
        elem = x.elem[idx]
        if not isinstance(elem, np.ndarray):
            elem = scalar_array(elem)
        self.features.add(feature)
        var = self.fresh()
        sig = ("view", x.vid, text.split("[", 1)[1])
        back = any(isinstance(i, slice) and (i.step or 1) < 0 for i in idx)
        if not elem.shape:
            return self.finish_scalar(var, text, elem, x.hi, [x], sig=sig)
        if sig in self.sigs:
            return None
        self.emit(f"{var} = {text}")
        return self.finish_tensor(var, elem.copy(), x.hi, [x], False, sig=sig, lo=x.lo, negidx=back, divmod=True)

    def view_slice(self):
        x = self.pick_node(lambda n: n.shape)
        if x is None:
            return
        idx = []
        for n in x.shape:
            idx.append(self.draw_slice(n) if self.flag(0.6) else slice(None))
        if all(i == slice(None) for i in idx):
            idx[-1] = self.draw_slice(x.shape[-1])
        while len(idx) > 1 and idx[-1] == slice(None) and self.flag(0.5):
            idx.pop()                                  # W[1:] means W[1:, :]
        if idx == [slice(None)]:
            return
        return self._view(x, tuple(idx), "view_slice")

    def view_negative(self):
        """Negative integers (x[-1], W[-2, 1:], W[-1] a row) and reversed slices."""
        x = self.pick_node(lambda n: n.shape)
        if x is None:
            return
        idx = [self.integer(-n, -1) if self.flag(0.6) else self.pick([slice(None, None, -1), self.draw_slice(n)])
               for n in x.shape]
        if not any(isinstance(i, int) for i in idx):
            idx[0] = -1
        if len(idx) > 1 and isinstance(idx[0], int) and self.flag(0.4):
            idx = idx[:1]                              # W[-1]: a row
        return self._view(x, tuple(idx), "view_negative_index")

    def view_ellipsis(self):
        x = self.pick_node(lambda n: n.shape)
        if x is None:
            return
        side = self.pick(["before", "after"])
        n = x.shape[-1] if side == "before" else x.shape[0]
        i = self.pick([self.integer(-n, n - 1), self.draw_slice(n), None])
        if i is None and len(x.shape) == 3:
            i = self.integer(-n, n - 1)
        idx = (Ellipsis, i) if side == "before" else (i, Ellipsis)
        return self._view(x, idx, "view_ellipsis")

    def view_newaxis(self):
        """x[None], x[:, None], W[:, None, :]: new axes of size 1 (broadcast by later arithmetic)."""
        x = self.pick_node(lambda n: 1 <= len(n.shape) <= 2)
        if x is None:
            return
        pos = self.integer(0, len(x.shape))
        idx = [slice(None)] * len(x.shape)
        idx.insert(pos, None)
        while idx and idx[-1] == slice(None) and self.flag(0.5):
            idx.pop()
        return self._view(x, tuple(idx), "view_newaxis")

    def view_sum_axis(self, mean=False):
        x = self.pick_node(lambda n: n.shape)
        if x is None:
            return
        r = len(x.shape)
        if r >= 2 and self.flag(0.3):
            axes = tuple(sorted(self.pick([list(range(r))[:2], list(range(r))[1:], [0, r - 1]])))
            axis_text = "(" + ", ".join(str(a - r if self.flag(0.3) else a) for a in axes) + ")"
        else:
            a = self.integer(0, r - 1)
            axes = (a,)
            axis_text = str(a - r if self.flag(0.4) else a)
        if self.flag(0.3):
            axis_text = f"axis={axis_text}"
        keep = [d for d in range(r) if d not in axes]
        N = int(np.prod([x.shape[d] for d in axes]))
        elem = np.empty(tuple(x.shape[d] for d in keep), dtype=object)
        for o in np.ndindex(*elem.shape):
            terms = []
            for q in np.ndindex(*[x.shape[d] for d in axes]):
                full = dict(zip(keep, o))
                full.update(zip(axes, q))
                terms.append(x.elem[tuple(full[d] for d in range(r))])
            elem[o] = sp.Add(*terms) / N if mean else sp.Add(*terms)
        what = "mean" if mean else "sum"
        self.features.add(f"view_{what}_axis")
        text = f"{x.var}.{what}({axis_text})"
        var = self.fresh()
        hi, lo = (x.hi, x.lo) if mean else (N * x.hi, N * x.lo)
        sig = (what, x.vid, axes)
        if not elem.shape:
            return self.finish_scalar(var, text, elem, hi, [x], sig=sig)
        if sig in self.sigs:
            return None
        self.emit(f"{var} = {text}")
        return self.finish_tensor(var, elem, hi, [x], False, sig=sig, lo=lo if hi <= HMAX else 0.0)

    def view_mean_axis(self):
        return self.view_sum_axis(mean=True)

    def view_reshape(self):
        x = self.pick_node(lambda n: n.shape and int(np.prod(n.shape)) >= 2)
        if x is None:
            return
        N = int(np.prod(x.shape))
        divs = [d for d in range(1, N + 1) if N % d == 0]
        shapes = [(N,)] + [(a, N // a) for a in divs] + \
            [(a, b, N // (a * b)) for a in divs for b in divs if (N // a) % b == 0]
        shapes = [s for s in shapes if s != x.shape]
        shape = self.pick(shapes)
        args = list(shape)
        if self.flag(0.5):
            args[self.integer(0, len(args) - 1)] = -1
        text = ", ".join(map(str, args))
        if len(args) > 1 and self.flag(0.3):
            text = f"({text})"
        self.features.add("view_reshape")
        var = self.fresh()
        sig = ("reshape", x.vid, shape)
        if sig in self.sigs:
            return None
        self.emit(f"{var} = {x.var}.reshape({text})")
        return self.finish_tensor(var, x.elem.reshape(shape).copy(), x.hi, [x], False, sig=sig, lo=x.lo,
                                  divmod=True)

    def view_flatten(self):
        x = self.pick_node(lambda n: len(n.shape) >= 2)
        if x is None:
            return
        style = self.pick(["flatten", "layers"] if HAVE_LAYERS else ["flatten"])
        var = self.fresh()
        sig = ("reshape", x.vid, (int(np.prod(x.shape)),))
        if sig in self.sigs:
            return None
        if style == "layers":
            self.use_layers()
            self.features.add("layers_flatten")
            self.emit(f"{var} = L.flatten({x.var})")
        else:
            self.features.add("view_flatten")
            self.emit(f"{var} = {x.var}.flatten()")
        return self.finish_tensor(var, x.elem.reshape(-1).copy(), x.hi, [x], style == "layers", sig=sig, lo=x.lo,
                                  divmod=True)

    def _broadcast(self, a, ia, b, ib, feature):
        """a[ia] OP b[ib] (ia, ib: NumPy index tuples, () for the whole), broadcast as NumPy does."""
        name, template, arity, bound, opform, req = self.pick([NARY_BY_NAME[n] for n in ("add", "sub", "mul", "div")])
        if name == "div" and b.lo < 0.1:
            name, template, arity, bound, opform, req = NARY_BY_NAME["mul"]
        lim = 5 if name == "mul" else None
        ta, A, ha, la = self.scaled_node(a, lim)
        tb, B, hb, lb = self.scaled_node(b, lim)
        A, B = A[ia] if ia else A, B[ib] if ib else B
        if ia:
            ta = f"{ta}[{', '.join(_index_text(i) for i in ia)}]"
        if ib:
            tb = f"{tb}[{', '.join(_index_text(i) for i in ib)}]"
        try:
            shape = np.broadcast_shapes(A.shape, B.shape)
        except ValueError:
            return None
        hi, lo = bound([(ha, la), (hb, lb)])
        fn = eval("lambda _a, _b: " + template.format(a="_a", b="_b"), NS)
        elem = emap(fn, shape, [np.broadcast_to(A, shape), np.broadcast_to(B, shape)])
        self.features.add(feature)
        var = self.fresh()
        sig = ("bcast", name, a.vid, b.vid, ta, tb)
        if sig in self.sigs:
            return None
        self.emit(f"{var} = {opform.format(a=ta, b=tb)}")
        return self.finish_tensor(var, elem, hi, [a, b], False, sig=sig, lo=lo)

    def view_bcast(self):
        """A vector over a matrix's rows (W + v), a matrix over a map (T * W), v * W in either order;
        sizes 1 stretched ((n, 1) against (m,) or (1, m))."""
        def fits(a, b):
            if a.shape == b.shape or not a.shape or not b.shape:
                return False
            try:
                return int(np.prod(np.broadcast_shapes(a.shape, b.shape))) <= 64
            except ValueError:
                return False
        pairs = [(a, b) for a in self.nodes for b in self.nodes if len(a.shape) >= len(b.shape) and fits(a, b)]
        if not pairs:
            return
        grow = [(a, b) for a, b in pairs if np.broadcast_shapes(a.shape, b.shape) not in (a.shape, b.shape)]
        a, b = self.pick(grow if grow and self.flag(0.6) else pairs)
        stretch = np.broadcast_shapes(a.shape, b.shape) not in (a.shape, b.shape)
        if self.flag(0.4) and not (b.lo < 0.1 and a.lo >= 0.1):
            a, b = b, a                                # v + W as well as W + v
        return self._broadcast(a, (), b, (), "broadcast_stretch" if stretch else "broadcast_trailing")

    def view_bcast_col(self):
        """u[:, None] * v (an outer product), W + v[:, None] (a vector down the columns)."""
        u = self.pick_node(lambda n: len(n.shape) == 1)
        if u is None:
            return
        n = u.shape[0]
        b = self.pick_node(lambda o: (len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[0] == n))
                           and o.vid != u.vid)
        if b is None:
            return
        if len(b.shape) == 1:
            ib = self.pick([(), (None, slice(None))])
            return self._broadcast(u, (slice(None), None), b, ib, "broadcast_outer")
        if self.flag(0.5):
            return self._broadcast(b, (), u, (slice(None), None), "broadcast_column")
        return self._broadcast(u, (slice(None), None), b, (), "broadcast_column")

    # -- zero padding as a guarded read --
    def op_pad(self):
        """``m.define`` of Piecewise((x[c, i - p, j - q], And(i >= p, i < p + H, ...)), (0, True)):
        a map of rank 1 or 2 padded in every dimension, of rank 3 in all but the first (channels)."""
        x = self.pick_node(lambda n: n.handle and 1 <= len(n.shape) <= 3 and not n.is_int)
        if x is None:
            return
        style = self.choose("pad", ["read", "function", "redundant", "layers"] if HAVE_LAYERS and len(x.shape) >= 2
                            else ["read", "function", "redundant"])
        r = len(x.shape)
        first = 1 if r == 3 else 0                   # a channel dimension stays unpadded
        if style == "layers":
            first = 1
        pads = [(0, 0)] * first + [(self.integer(0, 2), self.integer(0, 2)) for _ in range(first, r)]
        if all(p == (0, 0) for p in pads):
            pads[-1] = (1, self.integer(0, 1))
        shape = tuple(n + a + b for n, (a, b) in zip(x.shape, pads))
        fname, template, limit, bound = "id", "{0}", None, _same
        if style == "function":
            fname, template, limit, bound, _ = UNARY_BY_NAME[self.pick(["tanh", "square", "sin", "exp"])]
            arg, h = self.scaled("{0}", x.hi, limit)
            template = template.format(a=arg)
        hi, _ = bound(x.hi, 0.0) if style != "function" else bound(h, 0.0)
        fn = eval("lambda _x: " + template.format("_x"), NS)
        inner = emap(fn, x.shape, [x.elem])
        elem = np.empty(shape, dtype=object)
        elem[...] = sp.Integer(0)
        elem[tuple(slice(a, a + n) for n, (a, _) in zip(x.shape, pads))] = inner
        var = self.fresh()
        sig = ("pad", x.vid, tuple(pads), fname)
        if sig in self.sigs:
            return None
        self.features.add("pad_" + style)
        if style == "layers":
            self.use_layers()
            spatial = pads[1:]
            arg = self.pick([repr(tuple(spatial)), repr([a for a, _ in spatial])]) \
                if all(a == b for a, b in spatial) else repr(tuple(spatial))
            if len(set(spatial)) == 1 and spatial[0][0] == spatial[0][1] and self.flag(0.5):
                arg = str(spatial[0][0])
            self.emit(f"{var} = L.pad({x.var}, {arg})")
        else:
            letters = [f"a{d}" for d in range(r)]
            reads, conds = [], []
            for d, (n, (a, b)) in enumerate(zip(x.shape, pads)):
                reads.append(f"{letters[d]} - {a}" if a else letters[d])
                if a or (style == "redundant" and d >= first):
                    conds.append(self.pick([f"{letters[d]} >= {a}", f"{a} <= {letters[d]}"]))
                if b or (style == "redundant" and d >= first):
                    conds.append(self.pick([f"{letters[d]} < {a + n}", f"{letters[d]} <= {a + n - 1}"]))
            read = template.format(f"{x.var}[{', '.join(reads)}]")
            if len(conds) == 1:
                cond = conds[0]
            elif self.flag(0.7):
                cond = f"sp.And({', '.join(conds)})"
            else:
                cond = " & ".join(f"({c})" for c in conds)
            self.emit(f'{var} = m.define("s{var[1:]}", {shape!r}, lambda {", ".join(letters)}: '
                      f"sp.Piecewise(({read}, {cond}), (0, True)))")
        return self.finish_tensor(var, elem, hi, [x], True, sig=sig)

    # -- gradc.layers --
    def op_act(self):
        x = self.pick_node(lambda n: not n.is_int)
        name, src, fn, limit, bound = self.choose("act", ACTIVATIONS)
        text, X, h, _ = self.scaled_node(x, limit)
        if name.startswith(("leaky", "elu")) and any(e.has(sp.Piecewise) for e in X.ravel()):
            X = self.let(X)           # SymPy recurses without end on Piecewise((e, e > 0), ...) of a Piecewise e
        elem = emap(fn, x.shape, [X])
        style = self.choose("act_style", ["helper", "define", "map"] if x.shape else ["helper", "define"])
        var = self.fresh()
        sig = ("act", name, x.vid)
        if sig in self.sigs:
            return None
        self.use_layers()
        self.features.add("act_" + name)
        handle = style == "define"
        if style == "helper":
            self.emit(f"{var} = {src.format(a=text)}")
        elif style == "map":
            self.emit(f"{var} = {text}.map(lambda e: {src.format(a='e')})")
        elif x.shape:
            letters = ", ".join(f"a{d}" for d in range(len(x.shape)))
            self.emit(f'{var} = m.define("s{var[1:]}", {x.shape!r}, lambda {letters}: '
                      f"{src.format(a=f'{text}[{letters}]')})")
        else:
            self.emit(f'{var} = m.define("s{var[1:]}", {src.format(a=text)})')
        pw = name.startswith(("leaky", "elu"))
        if not x.shape:
            self.add(Node(var, (), elem, bound(h), 0.0, handle=handle, param=x.param, data=x.data,
                          divmod=x.divmod and not handle, negidx=x.negidx and not handle,
                          unreal=x.unreal and not handle,
                          vid=self.new_vid(), pw=pw and not handle, bound=frozenset() if handle else x.bound), sig)
            return
        return self.finish_tensor(var, elem, bound(h), [x], handle, sig=sig, pw=pw)

    def as_map(self, rank, limit):
        """A node seen as a map of ``rank`` (C, *spatial): itself, x[None], x[None, None] or a reshape.
        Returns (node, text, elements, hi) or None."""
        x = self.pick_node(lambda n: 1 <= len(n.shape) <= rank and not n.is_int)
        if x is None:
            return None
        text, X, h, _ = self.scaled_node(x, limit)
        if len(x.shape) == rank:
            return x, text, X, h
        N = int(np.prod(x.shape))
        if self.flag(0.4) and N > 1:                  # a reshape into (C, *spatial)
            divs = [d for d in range(1, N + 1) if N % d == 0 and d <= 4]
            c = self.pick(divs)
            shape = (c, N // c) if rank == 2 else next(
                ((c, a, N // (c * a)) for a in self.pick([divs[::-1], divs]) if (N // c) % a == 0), None)
            if shape and shape != x.shape:
                self.features.add("view_reshape")
                return x, f"{text}.reshape{shape!r}", X.reshape(shape), h
        idx = (None,) * (rank - len(x.shape))
        self.features.add("view_newaxis")
        return x, f"{text}[{', '.join(_index_text(i) for i in idx)}]", X[idx], h

    def bias_for(self, kind, shape, allow_none=True):
        """(text, elements, hi) of a bias or scale of ``shape``: none, a new parameter, or a node."""
        how = self.choose(kind, ["none", "param", "node"] if allow_none else ["param", "node"])
        if how == "node":
            b = self.pick_node(lambda n: n.shape == shape and not n.is_int)
            if b is not None:
                text, B, h, _ = self.scaled_node(b, 2)
                return text, B, h, b
            how = "param"
        if how == "none":
            return "None", None, 0.0, None
        name, syms = self.declare_param(shape, node=False)
        return name, syms, 1.0, None

    def op_conv(self):
        nd = 1 if self.choose("conv", ["conv1d", "conv2d"]) == "conv1d" else 2
        got = self.as_map(nd + 1, 2)
        if got is None:
            return
        x, text, X, h = got
        C, spatial = X.shape[0], X.shape[1:]
        groups = 1
        if self.choose("conv_groups", ["1", "groups"]) == "groups":
            divs = [d for d in range(2, C + 1) if C % d == 0]
            groups = self.pick(divs) if divs else 1
        O = groups * self.integer(1, 2 if groups > 1 else 3)
        padding = self.choose("conv_padding", ["0", "int", "same", "valid", "pairs"])
        stride = [self.choose("conv_stride", [1, 2]) if padding != "same" else 1 for _ in spatial]
        dilation = [self.choose("conv_dilation", [1, 2]) for _ in spatial]
        kernel = [self.integer(1, 3) for _ in spatial]
        if padding == "same":
            pads = torch_ref.same_pads(kernel, dilation)
            ptext = '"same"'
        elif padding in ("0", "valid"):
            pads = [(0, 0)] * nd
            ptext = '"valid"' if padding == "valid" else None
        else:
            p = [self.integer(1, 2) for _ in spatial] if padding == "pairs" else [self.integer(1, 2)] * nd
            pads = [(q, q) for q in p]
            ptext = repr(tuple(p)) if padding == "pairs" else str(p[0])
        for a, (n, (p0, p1)) in enumerate(zip(spatial, pads)):
            while kernel[a] > 1 and n + p0 + p1 < dilation[a] * (kernel[a] - 1) + 1:
                kernel[a] -= 1
            if padding == "same":
                pads[a] = torch_ref.same_pads(kernel, dilation)[a]
        wname, W = self.declare_param((O, C // groups) + tuple(kernel), node=False)
        btext, B, hb, bnode = self.bias_for("conv_bias", (O,))
        elem = torch_ref.conv(X, W, B, stride, pads, dilation, groups)
        args = [text, wname]
        if btext != "None" or self.flag(0.3):
            args.append(self.pick([btext, f"bias={btext}"]) if btext != "None" else "None")
        tup = lambda v: str(v[0]) if len(set(v)) == 1 and self.flag(0.7) else repr(tuple(v))  # noqa: E731
        if any(s != 1 for s in stride) or self.flag(0.2):
            args.append(f"stride={tup(stride)}")
        if ptext:
            args.append(f"padding={ptext}")
        if any(d != 1 for d in dilation) or self.flag(0.2):
            args.append(f"dilation={tup(dilation)}")
        if groups > 1:
            args.append(f"groups={groups}")
        self.use_layers()
        self.features.add(f"conv{nd}d")
        for what, on in (("stride", any(s > 1 for s in stride)), ("dilation", any(d > 1 for d in dilation)),
                         ("groups", groups > 1), ("padding", any(p != (0, 0) for p in pads)),
                         ("same", padding == "same"), ("bias", B is not None)):
            if on:
                self.features.add(f"conv_{what}")
        var = self.fresh()
        self.emit(f"{var} = L.conv{nd}d({', '.join(args)})")
        hi = (C // groups) * int(np.prod(kernel)) * h + hb
        srcs = [x] + ([bnode] if bnode is not None else [])
        return self.finish_tensor(var, elem, hi, srcs + [Node("", (), None, 0.0, param=True)], False,
                                  sig=("conv", self.new_vid()), divmod=groups > 1 and O > groups)

    def op_pool(self):
        kind = self.choose("pool", ["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "global_avg_pool"])
        nd = 2 if kind.endswith("2d") or (kind == "global_avg_pool" and self.flag(0.5)) else 1
        got = self.as_map(nd + 1, None)
        if got is None:
            return
        x, text, X, h = got
        spatial = X.shape[1:]
        var = self.fresh()
        self.use_layers()
        if kind == "global_avg_pool":
            self.features.add("global_avg_pool")
            self.emit(f"{var} = L.global_avg_pool({text})")
            n = int(np.prod(spatial))
            elem = np.array([sp.Add(*X[c].ravel()) / n for c in range(X.shape[0])] + [None], dtype=object)[:-1]
            return self.finish_tensor(var, elem, h, [x], False, sig=("gap", self.new_vid()), lo=x.lo)
        kernel = [self.integer(1, min(3, n)) for n in spatial]
        if all(k == 1 for k in kernel) and max(spatial) > 1:
            a = int(np.argmax(spatial))
            kernel[a] = 2
        stride = None if self.flag(0.5) else [self.integer(1, 2) for _ in spatial]
        padding = [0] * nd
        if kind.startswith("avg") and self.flag(0.5):
            padding = [self.integer(0, k // 2) for k in kernel]
        st_ = kernel if stride is None else stride
        tup = lambda v: str(v[0]) if len(set(v)) == 1 and self.flag(0.6) else repr(tuple(v))  # noqa: E731
        args = [text, tup(kernel)]
        if stride is not None:
            args.append(self.pick([tup(stride), f"stride={tup(stride)}"]))
        if any(padding):
            args.append(f"padding={tup(padding)}")
        self.features.add(kind)
        if any(padding):
            self.features.add("avg_pool_padding")
        if kind.startswith("max"):
            elem = torch_ref.max_pool(X, kernel, st_)
            lo = x.lo
        else:
            elem = torch_ref.avg_pool(X, kernel, st_, padding)
            lo = 0.0 if any(padding) else x.lo
        self.emit(f"{var} = L.{kind}({', '.join(args)})")
        return self.finish_tensor(var, elem, h, [x], False, sig=("pool", self.new_vid()), lo=lo,
                                  pw=kind.startswith("max"))

    def op_norm(self):
        kind = self.choose("norm", ["layer_norm", "group_norm", "rms_norm"])
        x = self.pick_node(lambda n: n.shape and not n.is_int and int(np.prod(n.shape)) >= 2)
        if x is None:
            return
        text, X, h, _ = self.scaled_node(x, 4)
        r = len(x.shape)
        args = [text]
        eps = self.choose("norm_eps", ["default", "1e-3", "0.1", "1.0"])
        if kind == "group_norm":
            C = x.shape[0]
            G = self.pick([d for d in range(1, C + 1) if C % d == 0])
            args.append(str(G))
            groups = [[(c,) + q for c in range(g * (C // G), (g + 1) * (C // G)) for q in np.ndindex(*x.shape[1:])]
                      for g in range(G)]
            ns = (C,)
        else:
            nl = self.integer(0, r - 1)
            ns = x.shape[nl:]
            if nl or self.flag(0.3):
                ntext = self.pick([repr(ns), str(ns[0])]) if len(ns) == 1 else repr(ns)
                args.append(ntext if kind == "layer_norm" else f"normalized_shape={ntext}")
            groups = [[li + q for q in np.ndindex(*ns)] for li in np.ndindex(*x.shape[:nl])]
        w = self.bias_for("norm_weight", ns)
        b = self.bias_for("norm_bias", ns) if kind != "rms_norm" else ("None", None, 0.0, None)
        wshape = (lambda idx: idx[:1]) if kind == "group_norm" else (lambda idx: idx[r - len(ns):])
        if w[1] is not None:
            args.append(f"weight={w[0]}")
        if b[1] is not None:
            args.append(f"bias={b[0]}")
        if eps != "default":
            args.append(f"eps={eps}")
        e = sp.Float(float(eps) if eps != "default" else 1e-5 if kind != "rms_norm" else 2.220446049250313e-16)
        if kind == "rms_norm":
            elem = torch_ref.rms_normalize(X, groups, e, self.let)
        else:
            elem = torch_ref.normalize(X, groups, e, self.let)
        for idx in np.ndindex(*x.shape):
            if w[1] is not None:
                elem[idx] = elem[idx] * w[1][wshape(idx)]
            if b[1] is not None:
                elem[idx] = elem[idx] + b[1][wshape(idx)]
        N = max(len(g) for g in groups)
        hi = math.sqrt(N) * max(w[2], 1.0 if w[1] is None else w[2]) + b[2]
        self.use_layers()
        self.features.add(kind)
        if eps == "default":
            self.features.add(kind + "_default_eps")
        var = self.fresh()
        self.emit(f"{var} = L.{kind}({', '.join(args)})")
        srcs = [x] + [t[3] for t in (w, b) if t[3] is not None] + \
            [Node("", (), None, 0.0, param=True)] * any(t[1] is not None and t[3] is None for t in (w, b))
        return self.finish_tensor(var, elem, hi, srcs, False, sig=("norm", self.new_vid()),
                                  divmod=kind == "group_norm")

    def op_rnn(self):
        kind = self.choose("rnn", ["gru_cell", "lstm_cell", "unroll_gru", "unroll_lstm"])
        unroll = kind.startswith("unroll")
        lstm = kind.endswith("lstm") or kind == "lstm_cell"
        x = self.pick_node(lambda n: len(n.shape) == (2 if unroll else 1) and not n.is_int)
        if x is None:
            return
        text, X, _, _ = self.scaled_node(x, 3)
        F = x.shape[-1]
        H = self.integer(1, 3)
        gates = 4 if lstm else 3
        self.use_layers()
        wi, Wi = self.declare_param((gates * H, F), node=False)
        wh, Wh = self.declare_param((gates * H, H), node=False)
        bias = self.choose("rnn_bias", ["none", "both", "ih"])
        bi, Bi = self.declare_param((gates * H,), node=False) if bias != "none" else ("None", None)
        bh, Bh = self.declare_param((gates * H,), node=False) if bias == "both" else ("None", None)
        states = []
        for s in range(2 if lstm else 1):
            if self.choose("rnn_state", ["zeros", "node"]) == "node":
                st_ = self.pick_node(lambda n: n.shape == (H,) and not n.is_int)
                if st_ is not None:
                    t, S, hs, _ = self.scaled_node(st_, 1)
                    states.append((t, S, hs, st_))
                    continue
            states.append(("None", None, 0.0, None))
        srcs = [x, Node("", (), None, 0.0, param=True)] + [s[3] for s in states if s[3] is not None]
        hi_c = (states[1][2] if lstm else 0.0)
        cell = (f"L.lstm_cell({{x}}, {{h}}, {{c}}, {wi}, {wh}, {bi}, {bh})" if lstm
                else f"L.gru_cell({{x}}, {{h}}, {wi}, {wh}, {bi}, {bh})")
        step = (lambda xt, h, c: torch_ref.lstm_cell(xt, h, c, Wi, Wh, Bi, Bh, self.let)) if lstm else \
            (lambda xt, h: torch_ref.gru_cell(xt, h, Wi, Wh, Bi, Bh, self.let))
        self.features.add(kind)
        v1, v2 = self.fresh(), self.fresh()
        if not unroll:
            if lstm:
                h2, c2 = step(X, states[0][1], states[1][1])
                self.emit(f"{v1}, {v2} = " + cell.format(x=text, h=states[0][0], c=states[1][0]))
                self.finish_tensor(v1, h2, 1.0, srcs, True, sig=("rnn", self.new_vid()))
                return self.finish_tensor(v2, c2, hi_c + 1, srcs, True, sig=("rnn", self.new_vid()))
            h2 = step(X, states[0][1])
            self.emit(f"{v1} = " + cell.format(x=text, h=states[0][0]))
            return self.finish_tensor(v1, h2, max(1.0, states[0][2]), srcs, True, sig=("rnn", self.new_vid()))
        T = x.shape[0]
        steps = T if self.flag(0.6) else self.integer(1, T)
        every = self.flag(0.4)
        state = tuple(s[1] for s in states)
        history = []
        for t in range(steps):
            state = step(X[t], *state)
            state = state if lstm else (state,)
            history.append(state)
        lam = "lambda xt, h, c: " + cell.format(x="xt", h="h", c="c") if lstm else \
            "lambda xt, h: " + cell.format(x="xt", h="h")
        s0 = f"({states[0][0]}, {states[1][0]})" if lstm else states[0][0]
        extra = (f", steps={steps}" if steps != T or self.flag(0.3) else "") + (", return_all=True" if every else "")
        out = f"{v1}, {v2}" if lstm else v1
        if every:
            hv = self.fresh()
            out = f"({out}), {hv}" if lstm else f"{out}, {hv}"
        self.emit(f"{out} = L.unroll({lam}, {text}, {s0}{extra})")
        self.finish_tensor(v1, state[0], 1.0 if lstm else max(1.0, states[0][2]), srcs, True,
                           sig=("rnn", self.new_vid()))
        if lstm:
            self.finish_tensor(v2, state[1], hi_c + steps, srcs, True, sig=("rnn", self.new_vid()))
        if every and steps > 1:
            t = self.integer(0, steps - 2)
            v3 = self.fresh()
            self.features.add("unroll_return_all")
            self.emit(f"{v3} = {hv}[{t}][0]" if lstm else f"{v3} = {hv}[{t}]")
            self.finish_tensor(v3, history[t][0], 1.0 if lstm else max(1.0, states[0][2]), srcs, True,
                               sig=("rnn", self.new_vid()))

    # -- outputs, loss, regularization --
    def finish(self):
        if not self.outputs:
            self.op_output()
        if self.flag(0.3):
            self.op_output()
        terms, texts = [], []
        for t in range(self.integer(1, 3)):
            x = self.pick_node((lambda n: n.param) if t == 0 else None)
            kinds = ["squared", "plain"]
            if not x.shape:
                kinds += ["bce", "bce_prob", "hinge", "piecewise_label"]
            if len(x.shape) == 1:
                kinds += ["xent_int", "xent_prob", "mse"]
            kind = self.choose("loss", kinds)
            self.features.add("loss_" + kind)
            text, e, hi = self.loss_term(kind, x)
            if hi > HMAX:
                s = int(math.ceil(hi / (HMAX / 2)))
                text, e = f"({text}) / {s}", e / s
            texts.append(text)
            terms.append(e)
        self.emit(f"m.loss({' + '.join(texts)})")
        loss = sp.Add(*terms)
        reg = sp.Integer(0)
        if self.flag(0.4):
            self.features.add("regularize")
            for _ in range(self.integer(1, 2)):
                reg += self.reg_term()
        return loss, reg

    def target(self, shape, dist="sym"):
        return self.declare_data("target", shape, dist)

    def loss_term(self, kind, x):
        ref, h = self.scaled(x.var, x.hi, 6)
        s = int(math.ceil(x.hi / 6)) if x.hi > 6 else 1
        X = x.elem if s == 1 else emap(lambda e: e / s, x.shape, [x.elem])
        if kind == "squared":
            t = self.target(x.shape)
            if x.shape:
                txt = self.pick([f"(({ref} - {t.name}) * ({ref} - {t.name})).sum()", f"gc.mse({ref}, {t.name})"])
                e = sp.Add(*[(a - b) ** 2 for a, b in zip(X.ravel(), t.syms.ravel())])
                if txt.startswith("gc.mse"):
                    e = e / X.size
                return txt, e, X.size * (h + 1) ** 2
            return f"({ref} - {t.name})**2", (X[()] - t.syms[()]) ** 2, (h + 1) ** 2
        if kind == "plain":
            if x.shape:
                return f"{ref}.sum()", sp.Add(*X.ravel()), X.size * h
            return ref, X[()], h
        if kind == "mse":
            t = self.target(x.shape)
            return f"gc.mse({ref}, {t.name})", sp.Add(*[(a - b) ** 2 for a, b in zip(X, t.syms)]) / len(X), (h + 1) ** 2
        if kind in ("bce", "bce_prob", "hinge"):
            t = self.target((), "unit" if kind != "hinge" else "sym")
            y, z = t.syms[()], X[()]
            sig = 1 / (1 + sp.exp(-z))
            if kind == "bce":
                return f"gc.bce_with_logits({ref}, {t.name})", -(y * sp.log(sig) + (1 - y) * sp.log(1 - sig)), h + 1
            if kind == "bce_prob":
                return (f"gc.binary_cross_entropy(gc.sigmoid({ref}), {t.name})",
                        -(y * sp.log(sig) + (1 - y) * sp.log(1 - sig)), h + 1)
            return f"gc.hinge({ref}, {t.name})", sp.Max(0, 1 - y * z), h + 1
        if kind == "piecewise_label":
            lbl = self.declare_data("target", (), "int", hi_int=2)
            text = f"sp.Piecewise(({ref}**2, sp.Eq({lbl.name}, 0)), (-{ref}, True))"
            return text, sp.Piecewise((X[()] ** 2, sp.Eq(lbl.syms[()], 0)), (-X[()], True)), h * h + h
        lse = sp.log(sp.Add(*[sp.exp(e) for e in X]))
        if kind == "xent_int":
            lbl = self.declare_data("target", (), "int", hi_int=len(X))
            return (f"gc.softmax_cross_entropy({ref}, {lbl.name})", lse - gather(X, lbl.syms[()]),
                    2 * h + math.log(len(X)))
        t = self.target(x.shape, "unit")
        return (f"gc.softmax_cross_entropy({ref}, {t.name})",
                sp.Add(*[p * (lse - e) for p, e in zip(t.syms, X)]), len(X) * (2 * h + math.log(len(X))))

    def reg_term(self):
        kind = self.choose("reg", ["sum_squares", "abs", "node"])
        names = list(self.params)
        if kind == "node":
            cands = [n for n in self.nodes if n.param and n.vid in self.param_only]
            if not cands:
                kind = "sum_squares"
            else:
                x = self.pick(cands)
                text = f"{x.var}.sum()" if x.shape else x.var
                self.emit(f"m.regularize(sp.Rational(1, 10) * {text})")
                self.features.add("reg_node")
                return sp.Rational(1, 10) * sp.Add(*x.elem.ravel())
        chosen = sorted({self.pick(names) for _ in range(self.integer(1, len(names)))})
        if kind == "sum_squares":
            self.emit(f"m.regularize(sp.Rational(1, 100) * gc.sum_squares({', '.join(chosen)}))")
            return sp.Rational(1, 100) * sp.Add(*[e ** 2 for n in chosen for e in self.psyms[n].ravel()])
        p = chosen[0]
        text = f"gc.abs({p}).sum()" if self.params[p] else f"sp.Abs({p})"
        self.emit(f"m.regularize(sp.Rational(1, 50) * {text})")
        return sp.Rational(1, 50) * sp.Add(*[sp.Abs(e) for e in self.psyms[p].ravel()])

    @property
    def param_only(self):
        """The value ids of nodes that read parameters only (no data)."""
        return {n.vid for n in self.nodes if not n.data}


def _generate(g, avoid, max_steps):
    g.declare()
    for _ in range(g.integer(2, max_steps)):
        g.step()
    loss, reg = g.finish()
    source = HEADER + "\n".join(g.lines) + "\n"
    return FuzzCase(source=source, params=dict(g.params), data=list(g.data), psyms=dict(g.psyms),
                    outputs=list(g.outputs), loss=loss, reg=reg, n=g.integer(1, 4), lets=list(g.lets),
                    seed=g.integer(0, 2**32 - 1), avoided=tuple(avoid), features=g.features,
                    choices=list(g.choices))


@st.composite
def fuzz_models(draw, avoid=KNOWN_BUGS, max_steps=10, focus=()):
    """A hypothesis strategy of ``FuzzCase``: a small random model and its independent oracle."""
    return _generate(Gen(avoid, draw=draw, focus=focus), avoid, max_steps)


def random_case(rnd, avoid=KNOWN_BUGS, max_steps=10, coverage=None, focus=()):
    """The same, from a ``random.Random``; ``coverage`` (a Counter of choices, updated by the caller
    with each case's ``choices``) steers towards operations earlier cases have used least;
    ``focus`` (names of ``op_`` methods, e.g. ``NEW_OPS``) are drawn for 3 in 5 steps."""
    return _generate(Gen(avoid, rnd=rnd, coverage=coverage, focus=focus), avoid, max_steps)


def uses(case, ops):
    """True when one of ``case``'s steps made one of the operations ``ops`` (names of ``op_`` methods)."""
    return any(cat in ("op", "focus") and name in ops for cat, name in case.choices)


def sample_cases(n, avoid=KNOWN_BUGS, label="", focus=()):
    """``n`` distinct cases from a ``random.Random`` seeded by ``label``: the same list on every run
    and machine, covering the operations evenly (see ``Gen.choose``). With ``focus`` (operation
    names, e.g. ``NEW_OPS``), those operations are drawn more often (their choice between them is
    steered like the others) and only cases that use one of them are kept."""
    rnd = random.Random(f"gradc-fuzz {label}")
    out, seen, coverage = [], set(), collections.Counter()
    while len(out) < n:
        case = random_case(rnd, avoid, coverage=coverage, focus=focus)
        if case.source not in seen and (not focus or uses(case, focus)):
            seen.add(case.source)
            out.append(case)
            coverage.update(case.choices)
    return out
