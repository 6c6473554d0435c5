"""Helpers for checking gradients: finite differences, a SymPy scalar oracle,
and comparisons with readable failure messages.

Everything here works on the module contract only (``loss``,
``loss_and_grad``, ``param_shapes``): nothing of gradc's internals is used,
so a check cannot share a bug with the compiler.

Example::

    fd = central_differences(mod, params, data)             # every coordinate
    assert_close(grad, fd, rtol=1e-6, what="moons vs FD")
"""
import mpmath
import numpy as np
import sympy as sp


# ---- coordinates -------------------------------------------------------
def all_coords(params):
    """Every (name, index tuple) of a parameter dict, in order."""
    return [(name, idx) for name, v in params.items() for idx in np.ndindex(np.shape(v))]


def sample_coords(params, n_per_param, rng):
    """Up to ``n_per_param`` distinct random coordinates of each parameter."""
    out = []
    for name, v in params.items():
        shape = np.shape(v)
        size = int(np.prod(shape, dtype=int))
        pick = rng.choice(size, size=min(n_per_param, size), replace=False)
        out += [(name, tuple(int(i) for i in np.unravel_index(k, shape))) for k in sorted(pick)]
    return out


def pick(grads, coords):
    """The values of ``grads`` at ``coords``, as a float64 vector."""
    return np.array([float(np.asarray(grads[n])[i]) for n, i in coords], dtype=np.float64)


# ---- finite differences --------------------------------------------------
def copy_params(params, dtype=np.float64):
    return {k: np.array(v, dtype=dtype, copy=True) for k, v in params.items()}


def central_differences(mod, params, data, coords=None, h=1e-6):
    """Central differences (L(p + h e) - L(p - h e)) / 2h of ``mod.loss`` at ``coords``.

    The step is relative to the coordinate's size: h * max(1, |p_i|).
    """
    coords = all_coords(params) if coords is None else coords
    p = copy_params(params)
    out = np.empty(len(coords))
    for n, (name, idx) in enumerate(coords):
        v = p[name]
        x0 = float(v[idx])
        step = h * max(1.0, abs(x0))
        v[idx] = x0 + step
        up = mod.loss(p, **data)
        v[idx] = x0 - step
        down = mod.loss(p, **data)
        v[idx] = x0
        out[n] = (up - down) / (2 * step)
    return out


# ---- comparison -------------------------------------------------------------
def rel_err(a, b, floor):
    """|a - b| / max(|a|, |b|, floor), elementwise."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


def assert_close(got, want, rtol, floor=1e-3, coords=None, what="gradient"):
    """Assert ``rel_err(got, want, F) <= rtol`` everywhere; the message lists the worst coordinates.

    The floor F is ``floor * max(1, max |want|)``: a gradient entry far
    smaller than the largest one (or than 1) is compared absolutely, since
    the round-off of a finite difference or of float32 arithmetic scales with
    the loss, not with that entry.
    """
    got, want = np.ravel(np.asarray(got, dtype=np.float64)), np.ravel(np.asarray(want, dtype=np.float64))
    assert got.shape == want.shape, f"{what}: {got.shape} values against {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values {got[~np.isfinite(got)][:5]}"
    floor = floor * max(1.0, float(np.abs(want).max(initial=0.0)))
    err = rel_err(got, want, floor)
    bad = np.flatnonzero(~(err <= rtol))
    if bad.size:
        worst = bad[np.argsort(-err[bad])][:8]
        label = (lambda k: f"{coords[k][0]}{list(coords[k][1])}") if coords else (lambda k: f"[{k}]")
        rows = "\n".join(f"  {label(k):>14}: got {got[k]: .12e}  want {want[k]: .12e}  rel {err[k]:.2e}"
                         for k in worst)
        raise AssertionError(f"{what}: {bad.size} of {got.size} values differ by more than {rtol:g} "
                             f"relative (floor {floor:.3g}); worst:\n{rows}")
    return float(err.max(initial=0.0))


# ---- the SymPy scalar oracle ---------------------------------------------------
def symbol_array(name, shape):
    """One real SymPy symbol per element: an object array of shape ``shape``."""
    arr = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        arr[idx] = sp.Symbol(name + "".join(f"_{i}" for i in idx), real=True)
    return arr


def _heaviside(x, h0=None):
    return mpmath.mpf(1) if x > 0 else mpmath.mpf(0) if x < 0 else mpmath.mpf(h0 if h0 is not None else 0.5)


_LAMBDIFY_MODULES = [{"Heaviside": _heaviside, "sign": mpmath.sign}, "mpmath"]


def sympy_oracle(shapes, per_sample, params, data, reg=None, dps=30):
    """Loss and gradient of the batch mean of ``per_sample`` (+ ``reg``), by ``sympy.diff``.

    ``per_sample(P, d)`` writes out the loss of one sample by hand, as a
    scalar SymPy expression in ``P`` (parameter name -> object array of one
    symbol per element) and ``d`` (data name -> one symbol per real value;
    int32 data are given as the sample's actual ints, since they pick
    elements). ``reg(P)`` writes out the regularization. Each derivative is
    taken with ``sympy.diff``, then evaluated with mpmath at ``dps`` digits at
    each sample's exact float64 data and at the exact parameter values; the
    per-sample values are averaged.
    """
    P = {name: symbol_array(name, shape) for name, shape in shapes.items()}
    psyms = [P[name][idx] for name in shapes for idx in np.ndindex(shapes[name])]
    arrays = {k: np.asarray(v) for k, v in data.items()}
    n = len(next(iter(arrays.values())))
    real = [k for k, a in arrays.items() if a.dtype.kind == "f"]
    D = {k: symbol_array("data_" + k, arrays[k].shape[1:]) for k in real}
    dsyms = [D[k][idx] for k in real for idx in np.ndindex(D[k].shape)]

    def compile_(expr):
        exprs = [expr] + [sp.diff(expr, s) for s in psyms]
        return sp.lambdify(psyms + dsyms, exprs, modules=_LAMBDIFY_MODULES, cse=True, docstring_limit=0)

    with mpmath.workdps(dps):
        pvals = [mpmath.mpf(float(np.asarray(params[name])[idx])) for name in shapes
                 for idx in np.ndindex(shapes[name])]
        total = [mpmath.mpf(0)] * (1 + len(psyms))
        fns = {}
        for s in range(n):
            ints = tuple((k, tuple(np.ravel(arrays[k][s]).tolist())) for k in arrays if k not in D)
            if ints not in fns:       # one expansion per distinct combination of int32 data
                d = {k: (v[()] if v.ndim == 0 else v) for k, v in D.items()}
                d.update({k: (int(arrays[k][s]) if arrays[k].ndim == 1 else arrays[k][s].astype(object))
                          for k, _ in ints})
                fns[ints] = compile_(sp.sympify(per_sample(P, d)))
            dvals = [mpmath.mpf(float(arrays[k][s][idx])) for k in real for idx in np.ndindex(D[k].shape)]
            vals = fns[ints](*pvals, *dvals)
            total = [t + v for t, v in zip(total, vals)]
        total = [t / n for t in total]
        if reg is not None:
            r = sp.sympify(reg(P))
            rvals = sp.lambdify(psyms, [r] + [sp.diff(r, s) for s in psyms], modules=_LAMBDIFY_MODULES)(*pvals)
            total = [t + v for t, v in zip(total, rvals)]
        for v in total:
            if not isinstance(v, mpmath.mpf):
                raise AssertionError(f"the oracle evaluated to {v!r}, not a real number")
        out = [float(v) for v in total]
    grads, k = {}, 1
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=int))
        grads[name] = np.array(out[k:k + size]).reshape(shape)
        k += size
    return out[0], grads

