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
