"""The fuzz oracle: what a generated model must compute, worked out independently of gradc.

For every tensor the generator builds, it keeps an object array holding one
SymPy expression per element, in terms of one symbol per parameter element and
per data value (``symbols``; an int32 datum selects rows through a
``Piecewise`` over its possible values, ``gather``). Sums, products and gathers
are expanded by plain Python loops (``emap``, ``scalar_array``); large
expressions are named as let bindings (``case.lets``). ``oracle(case, params,
data)`` evaluates them with ``sympy.lambdify`` in numpy (the functions gradc adds
take the numpy references of ``gradc.functions.PRIMITIVES``; lambdify's
Piecewise/And/Or get numpy forms here), and
``draw_values`` draws the parameters and the batch a case is checked at.

Nothing here uses gradc's compiler or the generator: the generator builds on these
helpers, and the checks (checks.py) compare gradc against ``oracle``.
"""
import functools

import numpy as np
import sympy as sp


# ---- numpy forms for lambdify -----------------------------------------------------
# gradc's own functions (Sigmoid, Softplus, ...) take the numpy reference declared beside them in
# gradc's primitives table: data, not the compiler (nothing of gradc's lowering or C is used).
from gradc.functions import numpy_functions  # noqa: E402


def _np_select(condlist, choicelist, default=np.nan):
    """numpy.select, broadcasting scalars and reading conditions as booleans (lambdify's Piecewise)."""
    arrays = np.broadcast_arrays(*[np.asarray(c) for c in condlist], *[np.asarray(c) for c in choicelist],
                                 np.asarray(default))
    n = len(condlist)
    return np.select([a.astype(bool) for a in arrays[:n]], arrays[n:2 * n], arrays[-1])


class _Reducer:
    """A numpy ufunc whose ``reduce`` broadcasts a tuple of scalars and arrays (lambdify's And/Or)."""

    def __init__(self, ufunc):
        self.ufunc = ufunc

    def __call__(self, *args):
        return self.ufunc(*args)

    def reduce(self, items):
        return functools.reduce(self.ufunc, [np.asarray(i) for i in items])


ORACLE_MODULES = [dict(numpy_functions(), select=_np_select, logical_and=_Reducer(np.logical_and),
                       logical_or=_Reducer(np.logical_or)),
                  "numpy"]


# ---- element-wise expressions ------------------------------------------------------
def symbols(prefix, name, shape, **assumptions):
    arr = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        arr[idx] = sp.Symbol(f"{prefix}_{name}" + "".join(f"_{i}" for i in idx), **assumptions)
    return arr


def emap(fn, shape, operands):
    """fn applied elementwise over object arrays (rank-0 operands broadcast)."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        out[idx] = fn(*[o[idx] if o.shape else o[()] for o in operands])
    return out


def scalar_array(e):
    a = np.empty((), dtype=object)
    a[()] = e
    return a


def gather(values, index_symbol):
    """values[u] for an int32 symbol u, written as a Piecewise over the rows."""
    rows = len(values)
    if rows == 1:
        return values[0]
    pieces = [(values[r], sp.Eq(index_symbol, r)) for r in range(rows - 1)]
    return sp.Piecewise(*pieces, (values[rows - 1], True))



# ---- evaluation ---------------------------------------------------------------------
def draw_values(case, rng):
    params = {name: rng.uniform(-1, 1, size=shape) for name, shape in case.params.items()}
    inputs, targets = {}, {}
    for d in case.data:
        shape = (case.n, *d.shape)
        if d.dist == "int":
            v = rng.integers(0, d.hi_int, size=shape).astype(np.int32)
        elif d.dist == "unit":
            v = rng.uniform(0, 1, size=shape)
        else:
            v = rng.uniform(-1, 1, size=shape)
        (inputs if d.kind == "input" else targets)[d.name] = v
    return params, inputs, targets


def oracle(case, params, data):
    """Expected (mean loss + reg, {output: (N, ...) array}) by lambdify of the generator's own expressions."""
    env = {}
    for name in case.params:
        for sym, v in zip(case.psyms[name].ravel(), np.ravel(params[name])):
            env[sym] = float(v)
    for d in case.data:
        a = np.asarray(data[d.name])
        for sym, idx in zip(d.syms.ravel(), np.ndindex(*d.shape)):
            env[sym] = a[(slice(None),) + idx]

    def evaluate(exprs):
        args = sorted(set().union(*[sp.sympify(e).free_symbols for e in exprs]), key=str)
        f = sp.lambdify(args, list(exprs), modules=ORACLE_MODULES, cse=True, docstring_limit=0)
        with np.errstate(all="ignore"):
            return f(*[env[a] for a in args])

    for syms, exprs in case.lets:
        for sym, v in zip(syms.ravel(), evaluate(exprs.ravel())):
            env[sym] = v
    vals = evaluate([case.loss, case.reg] + [e for _, el in case.outputs for e in el.ravel()])
    col = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64), (case.n,))  # noqa: E731
    loss = float(np.mean(col(vals[0])) + float(vals[1]))
    outs, k = {}, 2
    for name, el in case.outputs:
        size = el.size
        cols = [col(v) for v in vals[k:k + size]]
        outs[name] = np.stack(cols, axis=1).reshape((case.n, *el.shape)) if el.shape else cols[0]
        k += size
    return loss, outs


# ---- layers, as PyTorch defines them (element-wise over object arrays) -------------------
# The references of gradc.layers' helpers, written from PyTorch's documentation (torch.nn.functional,
# GRUCell, LSTMCell) with plain loops: nothing here reads gradc.layers. ``let`` (the generator's)
# names an array of expressions as symbols of the oracle (a statistic read by every element).
def sigmoid(e):
    return 1 / (1 + sp.exp(-e))


def zero_pad(x, pads):
    """x (C, *spatial) with pads[d] = (before, after) zeros around spatial dimension d."""
    shape = (x.shape[0],) + tuple(n + a + b for n, (a, b) in zip(x.shape[1:], pads))
    out = np.empty(shape, dtype=object)
    out[...] = sp.Integer(0)
    out[(slice(None),) + tuple(slice(a, a + n) for n, (a, _) in zip(x.shape[1:], pads))] = x
    return out


def same_pads(kernel, dilation):
    """padding='same' as PyTorch pads (stride 1): d * (k - 1) in all, the odd one after."""
    return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]


def conv(x, w, b, stride, pads, dilation, groups):
    """F.conv1d / F.conv2d of one sample: x (C, *spatial), w (O, C/groups, *kernel), b (O,) or None."""
    xp = zero_pad(x, pads)
    O, Cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    Og = O // groups
    size = tuple((n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(xp.shape[1:], kernel, stride, dilation))
    out = np.empty((O,) + size, dtype=object)
    for o in range(O):
        g = o // Og
        for pos in np.ndindex(*size):
            terms = [w[(o, c) + kk] * xp[(g * Cg + c,) + tuple(s * p + d * q for p, q, s, d in
                                                                zip(pos, kk, stride, dilation))]
                     for c in range(Cg) for kk in np.ndindex(*kernel)]
            out[(o,) + pos] = sp.Add(*terms) + (b[o] if b is not None else 0)
    return out


def _windows(xp, kernel, stride):
    size = tuple((n - k) // s + 1 for n, k, s in zip(xp.shape[1:], kernel, stride))
    for c in range(xp.shape[0]):
        for pos in np.ndindex(*size):
            yield (c,) + pos, [xp[(c,) + tuple(s * p + q for p, q, s in zip(pos, kk, stride))]
                               for kk in np.ndindex(*kernel)]


def max_pool(x, kernel, stride):
    """F.max_pool1d / 2d without padding."""
    size = tuple((n - k) // s + 1 for n, k, s in zip(x.shape[1:], kernel, stride))
    out = np.empty((x.shape[0],) + size, dtype=object)
    for idx, win in _windows(x, kernel, stride):
        out[idx] = sp.Max(*win)
    return out


def avg_pool(x, kernel, stride, padding):
    """F.avg_pool1d / 2d with zero padding counted in the mean (count_include_pad=True)."""
    xp = zero_pad(x, [(p, p) for p in padding])
    size = tuple((n - k) // s + 1 for n, k, s in zip(xp.shape[1:], kernel, stride))
    out = np.empty((x.shape[0],) + size, dtype=object)
    n = int(np.prod(kernel))
    for idx, win in _windows(xp, kernel, stride):
        out[idx] = sp.Add(*win) / n
    return out


def normalize(x, groups, eps, let):
    """(x - mean) / sqrt(var + eps) over each group (a list of index lists covering x), the biased
    variance computed from the mean: layer_norm and group_norm before their affine part."""
    mean = let(np.array([sp.Add(*[x[i] for i in g]) / len(g) for g in groups] + [None], dtype=object)[:-1])
    var = let(np.array([sp.Add(*[(x[i] - mean[n]) ** 2 for i in g]) / len(g) for n, g in enumerate(groups)]
                       + [None], dtype=object)[:-1])
    out = np.empty(x.shape, dtype=object)
    for n, g in enumerate(groups):
        for i in g:
            out[i] = (x[i] - mean[n]) / sp.sqrt(var[n] + eps)
    return out


def rms_normalize(x, groups, eps, let):
    """x / sqrt(mean(x**2) + eps) over each group (F.rms_norm before its weight)."""
    ms = let(np.array([sp.Add(*[x[i] ** 2 for i in g]) / len(g) for g in groups] + [None], dtype=object)[:-1])
    out = np.empty(x.shape, dtype=object)
    for n, g in enumerate(groups):
        for i in g:
            out[i] = x[i] / sp.sqrt(ms[n] + eps)
    return out


def _affine(x, w, b):
    """W x + b row by row (b None: none); x None: a zero vector."""
    rows = w.shape[0]
    out = np.empty(rows, dtype=object)
    for j in range(rows):
        s = sp.Integer(0) if x is None else sp.Add(*[w[j, k] * x[k] for k in range(w.shape[1])])
        out[j] = s + (b[j] if b is not None else 0)
    return out


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, let):
    """torch.nn.GRUCell: gates r, z, n in that order of W's rows; h None is zeros."""
    H = w_hh.shape[1]
    gi, gh = let(_affine(x, w_ih, b_ih)), let(_affine(h, w_hh, b_hh))
    out = np.empty(H, dtype=object)
    for i in range(H):
        r = sigmoid(gi[i] + gh[i])
        z = sigmoid(gi[H + i] + gh[H + i])
        n = sp.tanh(gi[2 * H + i] + r * gh[2 * H + i])
        out[i] = (1 - z) * n + (z * h[i] if h is not None else 0)
    return let(out)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, let):
    """torch.nn.LSTMCell: gates i, f, g, o; returns (h', c'); h, c None are zeros."""
    H = w_hh.shape[1]
    gates = let(_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh))
    c2 = np.empty(H, dtype=object)
    h2 = np.empty(H, dtype=object)
    for i in range(H):
        c2[i] = sigmoid(gates[H + i]) * (c[i] if c is not None else 0) + \
            sigmoid(gates[i]) * sp.tanh(gates[2 * H + i])
    c2 = let(c2)
    for i in range(H):
        h2[i] = sigmoid(gates[3 * H + i]) * sp.tanh(c2[i])
    return let(h2), c2
