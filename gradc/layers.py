"""Layers with PyTorch's layouts and semantics, as thin builders of SymPy stages.

Every helper takes one sample's tensors (no batch dimension): a convolution's input is
``(C, L)`` or ``(C, H, W)`` and its weight ``(O, C/groups, kw)`` or ``(O, C/groups, kh, kw)``, as
``torch.nn.functional`` lays them out; a recurrent cell's weights are ``torch.nn.GRUCell``'s and
``torch.nn.LSTMCell``'s. What they build is what you would write by hand: a convolution is one
reduction stage ``sum_{c,k,l} W[o, c, k, l] * x[c, s*i + d*k, s*j + d*l] + b[o]``, a max-pool a
``Max`` of the window's reads, zero padding a stage of guarded reads (``pad``). Helpers that only
compute elementwise return a lazy tensor expression, so ``gc.relu(conv2d(x, K, c))`` is one stage,
as in LeNet-5 written by hand; statistics (a norm's mean and variance) and recurrent states are
materialized. A shape or argument that does not fit raises ``gradc.ModelError`` naming the helper
and the argument.

Example::

    import sympy as sp, gradc as gc
    from gradc import layers as L
    m = gc.Model("cnn")
    x, label = m.input("x", (1, 28, 28)), m.target("label", dtype="int32")
    K1, c1 = m.param("K1", (6, 1, 5, 5)), m.param("c1", 6)
    W, b = m.param("W", (10, 6 * 14 * 14)), m.param("b", 10)
    h = L.max_pool2d(gc.relu(L.conv2d(x, K1, c1, padding=2)), 2)          # (6, 14, 14)
    m.loss(gc.softmax_cross_entropy(W @ L.flatten(h) + b, label))
"""
import sympy as sp
from sympy.codegen.cfunctions import expm1

from .errors import ModelError
from .functions import Sigmoid
from .model import Tensor, TensorExpr
from .nn import elementwise

# PyTorch's default eps of rms_norm for float64 (torch.finfo(torch.float64).eps)
FLOAT64_EPS = 2.220446049250313e-16


# ---- argument checks ------------------------------------------------------------------------

def _fail(helper, message):
    return ModelError(f"{helper}: {message}")


def _tensor_arg(helper, arg, t, rank=None, shape=None, optional=False):
    """``t`` checked to be a tensor expression (of ``rank``, or of ``shape``); None when optional."""
    if t is None:
        if optional:
            return None
        raise _fail(helper, f"{arg} is required")
    if not isinstance(t, TensorExpr):
        raise _fail(helper, f"{arg} must be a gradc tensor (a declared tensor or a tensor expression), "
                            f"not {type(t).__name__}")
    if rank is not None and t.rank not in ((rank,) if isinstance(rank, int) else rank):
        want = rank if isinstance(rank, int) else " or ".join(map(str, rank))
        raise _fail(helper, f"{arg} must have rank {want}, got shape {t.shape}")
    if shape is not None and t.shape != tuple(shape):
        raise _fail(helper, f"{arg} must have shape {tuple(shape)}, got {t.shape}")
    return t


def _ints(helper, arg, v, n, minimum):
    """``v`` (an int, or a sequence of ``n`` ints) as a tuple of ``n`` ints, each >= ``minimum``."""
    given = v
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,) * n
    try:
        v = tuple(v)
    except TypeError:
        raise _fail(helper, f"{arg} must be an int or a sequence of {n} ints, not {v!r}") from None
    if len(v) != n or not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        raise _fail(helper, f"{arg} must be an int or a sequence of {n} ints, got {v!r}")
    if any(e < minimum for e in v):
        raise _fail(helper, f"{arg} must be >= {minimum}, got {given!r}")
    return v


def _real(helper, arg, v, positive=False):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise _fail(helper, f"{arg} must be a number, not {v!r}") from None
    if positive and not f > 0:
        raise _fail(helper, f"{arg} must be > 0, got {v!r}")
    return sp.Float(f)


def _named(t):
    """``t`` as a named tensor: itself when it is one, else a stage defined from it."""
    return t if isinstance(t, Tensor) else t.model.materialize(t)


def _sum(body, limits):
    """``Sum(body, *limits)`` with every loop of extent 1 replaced by its one value (no Sum when
    none is left), so a 1-channel convolution reads ``x[0, ...]`` as one would write it."""
    keep = []
    for k, lo, hi in limits:
        if lo == hi:
            body = body.subs(k, lo)
        else:
            keep.append((k, lo, hi))
    return sp.Sum(body, *keep) if keep else body


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# ---- padding, convolutions, pooling --------------------------------------------------------

def pad(x, pads):
    """Zero padding of the spatial dimensions of ``x`` (every dimension after the first).

    ``pads`` is an int (that many zeros on both sides of every spatial dimension) or one entry per
    spatial dimension, each an int or a ``(before, after)`` pair. The result is a stage of guarded
    reads, ``Piecewise((x[c, i - p0, j - p1], (i >= p0) & (i < p0 + H) & ...), (0, True))``, over
    the padded shape::

        xp = pad(x, 1)                # (C, H, W) -> (C, H + 2, W + 2)
    """
    x = _tensor_arg("pad", "x", x)
    if x.rank < 2:
        raise _fail("pad", f"x must have a channel dimension and at least one spatial dimension, "
                           f"got shape {x.shape}")
    nd = x.rank - 1
    if isinstance(pads, int) and not isinstance(pads, bool):
        pads = (pads,) * nd
    try:
        pads = tuple(pads)
    except TypeError:
        raise _fail("pad", f"pads must be an int or one int or (before, after) pair per spatial "
                           f"dimension, not {pads!r}") from None
    if len(pads) != nd:
        raise _fail("pad", f"pads has {len(pads)} entries but x has {nd} spatial dimensions "
                           f"(shape {x.shape})")
    pairs = tuple(_ints("pad", "pads", p if isinstance(p, (tuple, list)) else (p, p), 2, 0) for p in pads)
    return _pad(x, pairs)


def _pad(x, pairs):
    """``x`` padded by ``pairs`` ((before, after) per spatial dimension); ``x`` itself for none."""
    if all(p == (0, 0) for p in pairs):
        return _named(x)
    X = _named(x)
    m = X.model
    shape = (X.shape[0],) + tuple(n + a + b for n, (a, b) in zip(X.shape[1:], pairs))

    def body(c, *sp_idx):
        conds = []
        for i, n, (a, b) in zip(sp_idx, X.shape[1:], pairs):
            if a:
                conds.append(i >= a)
            if b:
                conds.append(i < a + n)
        read = X[(c,) + tuple(i - a for i, (a, _) in zip(sp_idx, pairs))]
        return sp.Piecewise((read, sp.And(*conds)), (0, True))
    return m.define(m.auto_name(), shape, body)


def _conv(helper, nd, x, W, b, stride, padding, dilation, groups):
    x = _tensor_arg(helper, "x", x, rank=nd + 1)
    W = _tensor_arg(helper, "weight", W, rank=nd + 2)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise _fail(helper, f"groups must be a positive int, got {groups!r}")
    C, O, Cg = x.shape[0], W.shape[0], W.shape[1]
    if C % groups:
        raise _fail(helper, f"groups={groups} does not divide the {C} channels of x")
    if O % groups:
        raise _fail(helper, f"groups={groups} does not divide the {O} output channels of weight")
    if Cg * groups != C:
        raise _fail(helper, f"weight has {Cg} input channels per group but x has {C} channels"
                            + (f" ({C // groups} per group with groups={groups})" if groups > 1 else ""))
    b = _tensor_arg(helper, "bias", b, shape=(O,), optional=True)
    stride = _ints(helper, "stride", stride, nd, 1)
    dilation = _ints(helper, "dilation", dilation, nd, 1)
    kernel = W.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            pairs = ((0, 0),) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise _fail(helper, f"padding='same' needs stride 1 (as in PyTorch), got stride {stride}")
            # as PyTorch: the total d*(k-1) split in two, the odd one on the right (bottom)
            tot = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pairs = tuple((t // 2, t - t // 2) for t in tot)
        else:
            raise _fail(helper, f"padding must be an int, a sequence of {nd} ints, 'same' or 'valid', "
                                f"not {padding!r}")
    else:
        pairs = tuple((p, p) for p in _ints(helper, "padding", padding, nd, 0))
    size = []
    for ax, (n, (p0, p1), k, s, d) in enumerate(zip(x.shape[1:], pairs, kernel, stride, dilation)):
        span = d * (k - 1) + 1
        if n + p0 + p1 < span:
            raise _fail(helper, f"the kernel spans {span} positions (size {k}, dilation {d}) in spatial "
                                f"dimension {ax} but x has only {n + p0 + p1} there (padding included)")
        size.append((n + p0 + p1 - span) // s + 1)
    Xp = _pad(x, pairs)
    m = Xp.model
    c = m.fresh_index()
    ks = [m.fresh_index() for _ in range(nd)]
    Og = O // groups
    limits = [(c, 0, Cg - 1)] + [(k, 0, n - 1) for k, n in zip(ks, kernel)]

    def window(out_idx):
        return [s * i + d * k for i, k, s, d in zip(out_idx, ks, stride, dilation)]

    if groups == 1 or Og == 1:
        # one reduction stage over (O, *out): groups of one output channel read channels o*Cg + c
        def fn(o, *out):
            ch = c if groups == 1 else o * Cg + c
            z = _sum(W[(o, c) + tuple(ks)] * Xp[(ch,) + tuple(window(out))], limits)
            return z if b is None else z + b[o]
        return TensorExpr(m, (O,) + tuple(size), fn)

    # several output channels per group: a stage over (groups, O/groups, *out), read as (O, *out)
    def grouped(g, o, *out):
        z = _sum(W[(g * Og + o, c) + tuple(ks)] * Xp[(g * Cg + c,) + tuple(window(out))], limits)
        return z if b is None else z + b[g * Og + o]
    Z = m.define(m.auto_name(), (groups, Og) + tuple(size), grouped)
    return TensorExpr(m, (O,) + tuple(size), lambda o, *out: Z[(o // Og, o % Og) + tuple(out)])


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's ``F.conv1d`` for one sample: x (C, L), weight (O, C/groups, k), bias (O,) -> (O, L_out).

    ``padding`` is an int, ``"valid"`` (none) or ``"same"`` (stride 1 only; an odd total goes on the
    right, as PyTorch). Returns a lazy tensor expression (one reduction stage once used)::

        h = gc.relu(conv1d(x, K, c, padding="same"))
    """
    return _conv("conv1d", 1, x, weight, bias, stride, padding, dilation, groups)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's ``F.conv2d`` for one sample: x (C, H, W), weight (O, C/groups, kh, kw), bias (O,)
    -> (O, H_out, W_out).

    ``stride``, ``padding`` and ``dilation`` are ints or (height, width) pairs; ``padding`` may also
    be ``"valid"`` (none) or ``"same"`` (stride 1 only; an odd total goes on the bottom and right, as
    PyTorch). The body is ``sum_{c,k,l} W[o,c,k,l] * xp[c, s0*i + d0*k, s1*j + d1*l] + b[o]`` over
    the zero-padded input ``xp`` (see ``pad``), returned as a lazy tensor expression::

        h = gc.relu(conv2d(x, K1, c1, padding=2))        # (1, 28, 28) -> (6, 28, 28)
    """
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups)


def _pool_args(helper, nd, x, kernel_size, stride, padding):
    x = _tensor_arg(helper, "x", x, rank=nd + 1)
    kernel = _ints(helper, "kernel_size", kernel_size, nd, 1)
    stride = kernel if stride is None else _ints(helper, "stride", stride, nd, 1)
    padding = _ints(helper, "padding", padding, nd, 0)
    for k, p in zip(kernel, padding):
        if 2 * p > k:
            raise _fail(helper, f"padding {p} is more than half the kernel size {k} (PyTorch refuses it)")
    size = []
    for ax, (n, k, s, p) in enumerate(zip(x.shape[1:], kernel, stride, padding)):
        if n + 2 * p < k:
            raise _fail(helper, f"kernel_size {k} is larger than x's spatial dimension {ax} "
                                f"({n}{f' + 2*{p} padding' if p else ''})")
        size.append((n + 2 * p - k) // s + 1)
    return x, kernel, stride, padding, tuple(size)


def _offsets(kernel):
    out = [()]
    for k in kernel:
        out = [o + (a,) for o in out for a in range(k)]
    return out


def _max_pool(helper, nd, x, kernel_size, stride, padding):
    x, kernel, stride, pads, size = _pool_args(helper, nd, x, kernel_size, stride, padding)
    if any(pads):
        raise _fail(helper, f"padding={padding!r} is not supported: PyTorch pads a "
                            f"max-pool with -inf; pad the input yourself (e.g. after a relu, zero padding "
                            f"with layers.pad gives the same result) or use padding=0")
    X = _named(x)

    def fn(c, *out):
        return sp.Max(*[X[(c,) + tuple(s * i + a for i, a, s in zip(out, off, stride))]
                        for off in _offsets(kernel)])
    return TensorExpr(X.model, (X.shape[0],) + size, fn)


def max_pool1d(x, kernel_size, stride=None, padding=0):
    """PyTorch's ``F.max_pool1d`` for one sample: (C, L) -> (C, L_out); ``stride`` defaults to
    ``kernel_size``; padding must be 0. A ``Max`` of the window's reads: ``p = max_pool1d(h, 2)``."""
    return _max_pool("max_pool1d", 1, x, kernel_size, stride, padding)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """PyTorch's ``F.max_pool2d`` for one sample: (C, H, W) -> (C, H_out, W_out); ``kernel_size`` and
    ``stride`` (default: ``kernel_size``) are ints or pairs; padding must be 0. The body is a
    ``Max`` of the window's reads, as LeNet-5 written by hand: ``p = max_pool2d(h, 2)``."""
    return _max_pool("max_pool2d", 2, x, kernel_size, stride, padding)


def _avg_pool(helper, nd, x, kernel_size, stride, padding):
    x, kernel, stride, padding, size = _pool_args(helper, nd, x, kernel_size, stride, padding)
    Xp = _pad(x, tuple((p, p) for p in padding))
    m = Xp.model
    ks = [m.fresh_index() for _ in range(nd)]
    n = _size(kernel)

    def fn(c, *out):
        read = Xp[(c,) + tuple(s * i + k for i, k, s in zip(out, ks, stride))]
        return _sum(read, [(k, 0, e - 1) for k, e in zip(ks, kernel)]) / n
    return TensorExpr(m, (Xp.shape[0],) + size, fn)


def avg_pool1d(x, kernel_size, stride=None, padding=0):
    """PyTorch's ``F.avg_pool1d`` for one sample: (C, L) -> (C, L_out); ``stride`` defaults to
    ``kernel_size``; zero padding counts in the mean (``count_include_pad=True``):
    ``p = avg_pool1d(h, 3, stride=1, padding=1)``."""
    return _avg_pool("avg_pool1d", 1, x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """PyTorch's ``F.avg_pool2d`` for one sample: (C, H, W) -> (C, H_out, W_out); ints or pairs,
    ``stride`` defaults to ``kernel_size``; zero padding counts in the mean
    (``count_include_pad=True``): ``p = avg_pool2d(h, 2)``."""
    return _avg_pool("avg_pool2d", 2, x, kernel_size, stride, padding)


def global_avg_pool(x):
    """The mean over every spatial position: (C, *spatial) -> (C,), as
    ``F.adaptive_avg_pool2d(x, 1).flatten()``: ``v = global_avg_pool(h)``."""
    x = _tensor_arg("global_avg_pool", "x", x)
    if x.rank < 2:
        raise _fail("global_avg_pool", f"x must be (C, *spatial) with at least one spatial dimension, "
                                       f"got shape {x.shape}")
    X = _named(x)
    ks = [X.model.fresh_index() for _ in X.shape[1:]]
    n = _size(X.shape[1:])
    return TensorExpr(X.model, X.shape[:1], lambda c: _sum(
        X[(c,) + tuple(ks)], [(k, 0, e - 1) for k, e in zip(ks, X.shape[1:])]) / n)


def flatten(x):
    """All elements of ``x`` in row-major order as a vector, as ``torch.flatten``: a stage that reads
    ``x[f // (H*W), (f // W) % H, f % W]`` for a (C, H, W) tensor. ``z = W @ flatten(p) + b``."""
    x = _tensor_arg("flatten", "x", x)
    if x.rank == 1:
        return x
    X = _named(x)
    m = X.model
    if X.rank == 0:
        return m.define(m.auto_name(), (1,), lambda f: X.fn())

    def body(f):
        idx, inner = [], 1
        for r in range(X.rank - 1, -1, -1):
            q = f // inner if inner > 1 else f
            idx.append(q % X.shape[r] if r > 0 else q)
            inner *= X.shape[r]
        return X[tuple(reversed(idx))]
    return m.define(m.auto_name(), (_size(X.shape),), body)


# ---- normalization --------------------------------------------------------------------------

def _norm_shape(helper, x, normalized_shape):
    if normalized_shape is None:
        return x.shape
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        ns = tuple(normalized_shape)
    except TypeError:
        raise _fail(helper, f"normalized_shape must be an int or a tuple of ints, not {normalized_shape!r}") from None
    if not ns or len(ns) > x.rank or x.shape[x.rank - len(ns):] != ns:
        raise _fail(helper, f"normalized_shape {ns} is not a trailing part of x's shape {x.shape}")
    return ns


def _affine(helper, shape, weight, bias):
    w = _tensor_arg(helper, "weight", weight, shape=shape, optional=True)
    b = _tensor_arg(helper, "bias", bias, shape=shape, optional=True)
    return w, b


def _at(t, li):
    """Element ``li`` of a statistic: a tensor over the leading dims, or a scalar (a Symbol) for none."""
    return t[tuple(li)] if li else t


def _root(v, eps):
    """sqrt(v + eps) for a variance or mean square v (never negative), written sqrt(Max(0, v) + eps) so
    that SymPy knows the root is real: else Abs or a fractional power of a normalized value becomes
    atan2 and arg terms (``Abs(2**(x / sqrt(v + eps)))``). The same values, and the same gradient: v
    is 0 only where every term it multiplies is 0."""
    return sp.sqrt(sp.Max(0, v) + eps)


def _mean_var(X, lead, limits_of):
    """Materialized (mean, variance) per index of the ``lead`` dims, in two passes: the mean, then
    the mean of the squared deviations from it (never E[x^2] - E[x]^2, which cancels)."""
    m = X.model

    def over(e_of):
        def body(*li):
            idx, limits = limits_of(li)
            n = _size([hi + 1 for _, _, hi in limits])
            return _sum(e_of(li, idx), limits) / n
        return body
    mean = m.define(m.auto_name(), lead, over(lambda li, idx: X[idx]))
    var = m.define(m.auto_name(), lead, over(lambda li, idx: (X[idx] - _at(mean, li)) ** 2))
    return mean, var


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """PyTorch's ``F.layer_norm`` for one sample: ``(x - mean) / sqrt(var + eps) * weight + bias``
    over the trailing ``normalized_shape`` dims (default: all of x), the biased variance computed
    in two passes. weight and bias have shape ``normalized_shape``::

        h = layer_norm(z, weight=g, bias=beta)
    """
    x = _tensor_arg("layer_norm", "x", x)
    if x.rank == 0:
        raise _fail("layer_norm", "x must have at least one dimension")
    ns = _norm_shape("layer_norm", x, normalized_shape)
    w, b = _affine("layer_norm", ns, weight, bias)
    eps = _real("layer_norm", "eps", eps, positive=True)
    X = _named(x)
    m = X.model
    nl = X.rank - len(ns)
    ks = [m.fresh_index() for _ in ns]
    lead = X.shape[:nl] or ()

    def limits_of(li):
        return tuple(li) + tuple(ks), [(k, 0, n - 1) for k, n in zip(ks, ns)]
    mean, var = _mean_var(X, lead, limits_of)

    def fn(*idx):
        li, ti = idx[:nl], idx[nl:]
        y = (X[idx] - _at(mean, li)) / _root(_at(var, li), eps)
        if w is not None:
            y = y * w[ti]
        return y if b is None else y + b[ti]
    return TensorExpr(m, X.shape, fn)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """PyTorch's ``F.group_norm`` for one sample: x (C, *spatial), the C channels split into
    ``num_groups`` groups, each normalized over its channels and positions (two-pass variance),
    then scaled by weight (C,) and shifted by bias (C,) per channel::

        h = group_norm(z, 2, weight=g, bias=beta)
    """
    x = _tensor_arg("group_norm", "x", x)
    if x.rank < 1:
        raise _fail("group_norm", "x must be (C, *spatial)")
    C = x.shape[0]
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
        raise _fail("group_norm", f"num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups:
        raise _fail("group_norm", f"num_groups={num_groups} does not divide the {C} channels of x")
    w, b = _affine("group_norm", (C,), weight, bias)
    eps = _real("group_norm", "eps", eps, positive=True)
    X = _named(x)
    m = X.model
    G, Cg = num_groups, C // num_groups
    c = m.fresh_index()
    ks = [m.fresh_index() for _ in X.shape[1:]]

    def limits_of(li):
        (g,) = li
        return (g * Cg + c,) + tuple(ks), [(c, 0, Cg - 1)] + [(k, 0, n - 1) for k, n in zip(ks, X.shape[1:])]
    mean, var = _mean_var(X, (G,), limits_of)

    def group(ch):
        return 0 if G == 1 else ch if G == C else ch // Cg

    def fn(ch, *pos):
        g = group(ch)
        y = (X[(ch,) + pos] - mean[g]) / _root(var[g], eps)
        if w is not None:
            y = y * w[ch]
        return y if b is None else y + b[ch]
    return TensorExpr(m, X.shape, fn)


def rms_norm(x, weight=None, eps=None, *, normalized_shape=None):
    """PyTorch's ``F.rms_norm`` for one sample: ``x / sqrt(mean(x^2) + eps) * weight`` over the
    trailing ``normalized_shape`` dims (default: all of x). ``eps`` defaults, as in PyTorch, to
    the machine epsilon of float64 (2.2e-16; PyTorch uses float32's for float32 tensors)::

        h = rms_norm(z, weight=g)
    """
    x = _tensor_arg("rms_norm", "x", x)
    if x.rank == 0:
        raise _fail("rms_norm", "x must have at least one dimension")
    ns = _norm_shape("rms_norm", x, normalized_shape)
    w = _tensor_arg("rms_norm", "weight", weight, shape=ns, optional=True)
    eps = _real("rms_norm", "eps", FLOAT64_EPS if eps is None else eps, positive=True)
    X = _named(x)
    m = X.model
    nl = X.rank - len(ns)
    ks = [m.fresh_index() for _ in ns]
    n = _size(ns)

    def ms(*li):
        return _sum(X[tuple(li) + tuple(ks)] ** 2, [(k, 0, e - 1) for k, e in zip(ks, ns)]) / n
    msq = m.define(m.auto_name(), X.shape[:nl], ms)

    def fn(*idx):
        li, ti = idx[:nl], idx[nl:]
        y = X[idx] / _root(_at(msq, li), eps)
        return y if w is None else y * w[ti]
    return TensorExpr(m, X.shape, fn)


# ---- activations ----------------------------------------------------------------------------

def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x, elementwise (PyTorch's ``F.leaky_relu``, whose
    derivative at 0 is negative_slope): ``h = leaky_relu(z, 0.2)``."""
    a = _real("leaky_relu", "negative_slope", negative_slope)
    return elementwise(lambda t: sp.Piecewise((t, t > 0), (a * t, True)))(x)


def elu(x, alpha=1.0):
    """x if x > 0 else alpha * (exp(x) - 1), elementwise (``F.elu``; exp(x) - 1 as expm1):
    ``h = elu(z)``."""
    a = _real("elu", "alpha", alpha)
    return elementwise(lambda t: sp.Piecewise((t, t > 0), (a * expm1(t), True)))(x)


def gelu(x, approximate="none"):
    """PyTorch's ``F.gelu``, elementwise: ``x/2 * (1 + erf(x/sqrt(2)))``, or with
    ``approximate="tanh"`` ``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``: ``h = gelu(z)``."""
    if approximate == "none":
        return elementwise(lambda t: t / 2 * (1 + sp.erf(t / sp.sqrt(2))))(x)
    if approximate == "tanh":
        k, c = sp.sqrt(2 / sp.pi), sp.Float(0.044715)
        return elementwise(lambda t: t / 2 * (1 + sp.tanh(k * (t + c * t ** 3))))(x)
    raise _fail("gelu", f"approximate must be 'none' or 'tanh', not {approximate!r}")


silu = elementwise(lambda t: t * Sigmoid(t))
silu.__name__ = "silu"
silu.__doc__ = "x * sigmoid(x), elementwise (``F.silu``, also called swish): ``h = silu(z)``."


# ---- recurrent cells ------------------------------------------------------------------------

def _cell_args(helper, x, h, W_ih, W_hh, b_ih, b_hh, gates):
    x = _tensor_arg(helper, "x", x, rank=1)
    W_ih = _tensor_arg(helper, "W_ih", W_ih, rank=2)
    W_hh = _tensor_arg(helper, "W_hh", W_hh, rank=2)
    G, F = W_ih.shape
    if G % gates:
        raise _fail(helper, f"W_ih has {G} rows, not a multiple of {gates} ({gates} gates of hidden_size rows)")
    H = G // gates
    if F != x.shape[0]:
        raise _fail(helper, f"W_ih has {F} columns (input size) but x has {x.shape[0]} elements")
    if W_hh.shape != (G, H):
        raise _fail(helper, f"W_hh must have shape {(G, H)} (hidden_size {H} from W_ih), got {W_hh.shape}")
    h = _tensor_arg(helper, "h", h, shape=(H,), optional=True)
    b_ih = _tensor_arg(helper, "b_ih", b_ih, shape=(G,), optional=True)
    b_hh = _tensor_arg(helper, "b_hh", b_hh, shape=(G,), optional=True)
    return x, h, W_ih, W_hh, b_ih, b_hh, H


def _gate_sums(x, W, b):
    """The function j -> ``(W @ x + b)[j]``, without the product when x is None (a zero state)."""
    m = W.model
    G, F = W.shape
    k = m.fresh_index()
    X = None if x is None else _operand(x)

    def fn(j):
        z = sp.Integer(0) if X is None else sp.Sum(W[j, k] * X.fn(k), (k, 0, F - 1))
        return z if b is None else z + b[j]
    return fn


def _operand(t):
    """``t`` readable at any index: a named tensor or a view of one (as ``unroll``'s steps), else
    a stage defined from it."""
    return t if isinstance(t, (Tensor, _Row)) else _named(t)


class _Row(TensorExpr):
    """Row ``t`` of a named rank-2 tensor, read in place: ``xs[t, k]``."""

    def __init__(self, X, t):
        super().__init__(X.model, X.shape[1:], lambda k: X[t, k])


def gru_cell(x, h, W_ih, W_hh, b_ih=None, b_hh=None):
    """One step of ``torch.nn.GRUCell``: x (F,), h (H,) (None: zeros), W_ih (3H, F), W_hh (3H, H),
    biases (3H,), gates in PyTorch's order r, z, n::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      z likewise
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   h' = (1 - z) * n + z * h

    Returns h' as a named tensor: ``h = gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)``.
    """
    x, h, W_ih, W_hh, b_ih, b_hh, H = _cell_args("gru_cell", x, h, W_ih, W_hh, b_ih, b_hh, 3)
    m = W_ih.model
    Hh = None if h is None else _operand(h)
    gi = m.define(m.auto_name(), (3 * H,), _gate_sums(x, W_ih, b_ih))
    gh = m.define(m.auto_name(), (3 * H,), _gate_sums(Hh, W_hh, b_hh))
    rz = m.define(m.auto_name(), (2 * H,), lambda j: Sigmoid(gi[j] + gh[j]))
    n = m.define(m.auto_name(), (H,), lambda i: sp.tanh(gi[2 * H + i] + rz[i] * gh[2 * H + i]))
    prev = (lambda i: 0) if Hh is None else Hh.fn
    return m.define(m.auto_name(), (H,), lambda i: (1 - rz[H + i]) * n[i] + rz[H + i] * prev(i))


def lstm_cell(x, h, c, W_ih, W_hh, b_ih=None, b_hh=None):
    """One step of ``torch.nn.LSTMCell``: x (F,), h and c (H,) (None: zeros), W_ih (4H, F),
    W_hh (4H, H), biases (4H,), gates in PyTorch's order i, f, g, o::

        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)      h' = sigmoid(o) * tanh(c')

    Returns (h', c') as named tensors: ``h, c = lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh)``.
    """
    x, h, W_ih, W_hh, b_ih, b_hh, H = _cell_args("lstm_cell", x, h, W_ih, W_hh, b_ih, b_hh, 4)
    c = _tensor_arg("lstm_cell", "c", c, shape=(H,), optional=True)
    m = W_ih.model
    fi = _gate_sums(x, W_ih, b_ih)
    fh = _gate_sums(h, W_hh, b_hh)
    gates = m.define(m.auto_name(), (4 * H,), lambda j: fi(j) + fh(j))
    C = None if c is None else _operand(c)
    keep = (lambda i: 0) if C is None else (lambda i: Sigmoid(gates[H + i]) * C.fn(i))
    c2 = m.define(m.auto_name(), (H,),
                  lambda i: keep(i) + Sigmoid(gates[i]) * sp.tanh(gates[2 * H + i]))
    h2 = m.define(m.auto_name(), (H,), lambda i: Sigmoid(gates[3 * H + i]) * sp.tanh(c2[i]))
    return h2, c2


def unroll(cell, xs, state, steps=None, return_all=False):
    """Apply a recurrent ``cell`` over the time steps of a per-sample sequence ``xs`` (T, F).

    ``cell(x_t, state)`` (or ``cell(x_t, *state)`` when ``state`` is a tuple, as an LSTM's (h, c))
    returns the next state; step t reads row t of ``xs`` in place. ``steps`` (default T) unrolls
    the first ``steps`` rows. Returns the final state, or with ``return_all=True`` the pair
    (final state, [the state after each step])::

        h, c = unroll(lambda x, h, c: lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh), xs, (h0, c0))
    """
    if not callable(cell):
        raise _fail("unroll", f"cell must be a callable (x_t, state) -> state, not {type(cell).__name__}")
    xs = _tensor_arg("unroll", "xs", xs, rank=2)
    T = xs.shape[0]
    if steps is None:
        steps = T
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise _fail("unroll", f"steps must be an int from 1 to {T} (the length of xs), got {steps!r}")
    X = _named(xs)
    states = []
    for t in range(steps):
        xt = _Row(X, t)
        state = cell(xt, *state) if isinstance(state, tuple) else cell(xt, state)
        states.append(state)
    return (state, states) if return_all else state


__all__ = ["pad", "conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
           "global_avg_pool", "flatten", "layer_norm", "group_norm", "rms_norm", "leaky_relu", "elu",
           "gelu", "silu", "gru_cell", "lstm_cell", "unroll"]
