"""The kernel IR: typed statements that the builders produce and the templates print.

Between the stage IR (a SymPy body per tensor) and the text of a target sits this small language
of frozen dataclasses: an assignment, an accumulation, a loop, a loop over the lanes of a block of
samples, a reduction with register accumulators, a nest, a call. Each node has a ``kind`` the
templates dispatch on and named fields they read (``{% if s.kind == "accumulate" %}{{ s.target }}
+= {{ s.value }};``); right-hand sides are ``Expr``: printed C plus the arrays it reads, recorded
by the printer while it prints. So a function declares exactly the pointers its statements touch,
found by walking the nodes (``arrays(nodes)``), never by reading generated text back.

Example::

    >>> s = Accumulate(Expr("G_W[l0]", {"G_W"}), Expr("D_z[l0 * GC_L + b] * X_x[b]", {"D_z", "X_x"}))
    >>> sorted(arrays([LaneLoop((s,))]))
    ['D_z', 'G_W', 'X_x']
"""
from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass(frozen=True)
class Expr:
    """A printed C expression and the arrays it names (their C names); for an element that is
    written (an lvalue), ``array`` is the array it belongs to (its index may read others)."""
    text: str
    names: frozenset = frozenset()
    array: str = None

    def __post_init__(self):
        object.__setattr__(self, "names", frozenset(self.names))

    def __str__(self):
        return self.text


def lit(text):
    """An expression that reads no array (a literal, a local variable)."""
    return Expr(str(text))


class Node:
    """A statement. ``kind`` names it for the templates; ``names()`` lists every array it touches,
    ``writes()`` the arrays it stores into, ``reads()`` those it loads (``+=`` does both)."""
    kind: ClassVar[str] = ""

    def _parts(self):
        for f in fields(self):
            v = getattr(self, f.name)
            yield from (v if isinstance(v, tuple) else (v,))

    def children(self):
        """The statements nested in this one."""
        return [x for x in self._parts() if isinstance(x, Node)]

    def names(self):
        out = set()
        for x in self._parts():
            if isinstance(x, Expr):
                out |= x.names
            elif isinstance(x, Node):
                out |= x.names()
        return out

    def writes(self):
        out = set()
        for x in self._parts():
            if isinstance(x, Node):
                out |= x.writes()
        target = getattr(self, "target", None)
        if isinstance(target, Expr) and target.array:
            out.add(target.array)
        return out

    def reads(self):
        out = set()
        for f in fields(self):
            v = getattr(self, f.name)
            for x in (v if isinstance(v, tuple) else (v,)):
                if isinstance(x, Node):
                    out |= x.reads()
                elif isinstance(x, Expr) and f.name == "target" and x.array:
                    out |= x.names - {x.array}          # the index of the element stored into
                    if self.kind == "accumulate":
                        out.add(x.array)                # += loads it too
                elif isinstance(x, Expr):
                    out |= x.names
        return out


def arrays(nodes):
    """Every array the statements ``nodes`` read or write."""
    out = set()
    for n in nodes:
        out |= n.names()
    return out


# ---- scalar statements ---------------------------------------------------------------------
@dataclass(frozen=True)
class Decl(Node):
    """``const real name = value;`` (a common subexpression); ``ctype`` "int" for a truth value
    (a comparison kept as a real would stop the C compiler from vectorizing its loop)."""
    kind: ClassVar[str] = "decl"
    name: str
    value: Expr
    ctype: str = ""


@dataclass(frozen=True)
class Var(Node):
    """``real name = init;`` (an accumulator)."""
    kind: ClassVar[str] = "var"
    name: str
    init: Expr


@dataclass(frozen=True)
class Assign(Node):
    """``target = value;``"""
    kind: ClassVar[str] = "assign"
    target: Expr
    value: Expr


@dataclass(frozen=True)
class Accumulate(Node):
    """``target += value;``"""
    kind: ClassVar[str] = "accumulate"
    target: Expr
    value: Expr


@dataclass(frozen=True)
class MaxInto(Node):
    """``if (value > target) target = value;`` (a max reduction; ties keep the first)."""
    kind: ClassVar[str] = "max_into"
    target: str
    value: Expr


# ---- loops ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """One loop header: ``for (int var = 0; var < extent; var += step)``."""
    var: str
    extent: int
    step: int = 1


@dataclass(frozen=True)
class Loop(Node):
    """A sequential loop over ``ranges`` (outermost first) around ``body``."""
    kind: ClassVar[str] = "loop"
    ranges: tuple
    body: tuple


@dataclass(frozen=True)
class LaneLoop(Node):
    """The block's samples as an innermost, vectorized loop: ``for (b = 0; b < GC_L; ++b)``."""
    kind: ClassVar[str] = "lanes"
    body: tuple


@dataclass(frozen=True)
class Acc:
    """A register accumulator: its name, its start value and where it goes after the loop."""
    name: str
    init: str


@dataclass(frozen=True)
class LaneReduction(Node):
    """A reduction vectorized along the samples with the sum inside: per sample, the accumulators
    start at their ``init``, ``pre`` runs, the ``ranges`` loop runs ``body``, then ``post`` stores
    the accumulators. Each sample's accumulators stay in registers for the whole reduction."""
    kind: ClassVar[str] = "lane_reduction"
    accs: tuple
    pre: tuple
    ranges: tuple
    body: tuple
    post: tuple


@dataclass(frozen=True)
class LaneTile(Node):
    """A register tile of a contraction (a micro-kernel): ``accs`` are GC_L-wide arrays, one per
    output of the tile, zeroed (or set to their ``init``) before the ``ranges`` loops of the
    reduction; inside them a lane loop runs ``body``, which updates ``acc[b]``, so each step loads
    a lane vector of the shared operand once for every output and the accumulators stay in vector
    registers across the whole reduction (the reduction is outside the lanes: no compiler has to
    vectorize an outer loop). ``post`` runs in a lane loop after the reduction and stores them;
    then each ``totals[j]`` (when given) receives the sum of accumulator j over the lanes."""
    kind: ClassVar[str] = "lane_tile"
    accs: tuple
    ranges: tuple
    body: tuple
    post: tuple
    totals: tuple = ()


@dataclass(frozen=True)
class LaneSum(Node):
    """Sums over the block's samples into fixed elements: registers ``regs`` start at 0, the lane
    loop runs ``body`` (which adds into them), then each ``targets[j] += regs[j]``."""
    kind: ClassVar[str] = "lane_sum"
    regs: tuple
    targets: tuple
    body: tuple


@dataclass(frozen=True)
class SampleLoop(Node):
    """The block's real samples one after the other, ``ranges`` inside (a scatter-add whose rows
    two samples may share: each element receives the samples in order)."""
    kind: ClassVar[str] = "sample_loop"
    ranges: tuple
    body: tuple


@dataclass(frozen=True)
class RankOneUpdate(Node):
    """``grad[i, k] += coef * sum_b d[i, b] * src[k, b]`` over the block: a sample-major copy of
    ``src`` in ``mirror``, then ``unroll`` rows of ``grad`` at a time, vectorized along k."""
    kind: ClassVar[str] = "rank_one"
    src: str
    mirror: str
    d: str
    grad: str
    rows: int
    cols: int
    unroll: int
    coef: str           # "" when the coefficient is 1

    def names(self):
        return {self.src, self.mirror, self.d, self.grad}

    def writes(self):
        return {self.mirror, self.grad}

    def reads(self):
        return {self.src, self.mirror, self.d, self.grad}


@dataclass(frozen=True)
class RankOneLanes(Node):
    """``grad[(i, k), b] += coef * d[i, b] * src[k, b]`` for every lane b: the rank-1 update of
    ``RankOneUpdate`` kept sample by sample (``grad`` holds ``rows * cols`` values per lane, the
    lane innermost), for per-sample gradient norms."""
    kind: ClassVar[str] = "rank_one_lanes"
    src: str
    d: str
    grad: str
    rows: int
    cols: int
    coef: str           # "" when the coefficient is 1

    def names(self):
        return {self.src, self.d, self.grad}

    def writes(self):
        return {self.grad}

    def reads(self):
        return {self.src, self.d, self.grad}


@dataclass(frozen=True)
class Nest(Node):
    """One loop nest of a stage: ``loops`` around ``pre``, the ``inner`` loops around ``body``,
    then ``post``. ``comment`` says what it computes and where the user wrote it."""
    kind: ClassVar[str] = "nest"
    comment: str
    loops: tuple = ()
    pre: tuple = ()
    inner: tuple = ()
    body: tuple = ()
    post: tuple = ()


@dataclass(frozen=True)
class Call(Node):
    """``fn(args);``: a call of a generated static function, with the arrays it touches."""
    kind: ClassVar[str] = "call"
    fn: str
    args: tuple
    touches: frozenset = frozenset()

    def names(self):
        return set(self.touches)

    def writes(self):
        return set(self.touches)

    def reads(self):
        return set(self.touches)


# ---- CUDA: a kernel's body and its thread index ---------------------------------------------
@dataclass(frozen=True)
class ChunkLoop(Node):
    """The samples of this thread's chunk: ``for (b = ch_ * GC_CHUNK; ...)``."""
    kind: ClassVar[str] = "chunk_loop"
    body: tuple


@dataclass(frozen=True)
class AllSamples(Node):
    """Every sample of the batch, in order: ``for (b = 0; b < n; ++b)``."""
    kind: ClassVar[str] = "all_samples"
    body: tuple


@dataclass(frozen=True)
class OverChunks(Node):
    """``acc_ += part`` for every chunk, in order (the second level of a batch reduction)."""
    kind: ClassVar[str] = "over_chunks"
    part: Expr


@dataclass(frozen=True)
class Decode:
    """How a thread finds its indices in ``t_``: ``parts`` are (name, extent), the fastest first."""
    parts: tuple
