"""L-BFGS, as ``torch.optim.LBFGS``: the class (its docstring holds the update rule) and its
functional core: ``lbfgs`` (one ``step``: up to ``max_iter`` iterations on a flat vector),
``two_loop`` (the inverse-Hessian product), ``strong_wolfe`` and ``cubic_interpolate`` (the line
search), each with torch's floating-point operations in torch's order.

L-BFGS re-evaluates the loss several times per step, so ``step`` takes a closure instead of a
gradient: ``closure()`` returns ``(loss, grads)`` for the parameters as they are when it is called,
which is exactly ``mod.loss_and_grad`` on a fixed (full) batch::

    opt = LBFGS(p, line_search_fn="strong_wolfe")
    for epoch in range(10):
        L = opt.step(lambda: mod.loss_and_grad(p, x=X, y=Y))
"""
import math

import numpy as np

from .optimizer import Optimizer, nonnegative_option, real_option, register


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through ``(x1, f1)``, ``(x2, f2)`` with slopes ``g1``, ``g2``,
    clamped to ``bounds`` (default: between ``x1`` and ``x2``); the midpoint of the bounds when the
    cubic has no minimizer. As torch's ``_cubic_interpolate`` (minFunc's ``polyinterp``).

    Example: ``cubic_interpolate(0.0, 1.0, -1.0, 1.0, 0.5, 0.2)`` is the step that the zoom tries.
    """
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def strong_wolfe(obj_func, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """A step ``t`` along ``d`` that satisfies the strong Wolfe conditions, as torch's ``_strong_wolfe``:
    bracketing by cubic extrapolation, then zooming by cubic interpolation (minFunc's ``WolfeLineSearch``).

    ``obj_func(t)`` returns ``(loss, flat_grad)`` at ``x + t * d``; ``f``, ``g``, ``gtd`` are the loss,
    flat gradient and slope ``g . d`` at ``t = 0``. Returns ``(f_new, g_new, t, evaluations)``::

        f(x + t d) <= f + c1 t gtd          (sufficient decrease)
        |g(x + t d) . d| <= -c2 gtd         (curvature)

    Example::

        f1, g1, t, n = strong_wolfe(lambda t: loss_grad(x + t * d), 1.0, d, f0, g0, g0 @ d)
    """
    d_norm = float(np.abs(d).max())
    g = g.copy()
    f_new, g_new = obj_func(t)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)

    # bracket an interval holding a point that satisfies the conditions
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        # extrapolate, between 1.01 t and 10 t
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(t)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:          # out of evaluations: the best of t = 0 and the last step
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket until a point satisfies the conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # a point too close to an end of the bracket: move it in by 10% of the bracket (after the
        # second such point in a row, or when it is at or beyond an end)
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(t)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def two_loop(g, old_dirs, old_stps, ro, H_diag):
    """The L-BFGS direction ``d = -H g``: the inverse-Hessian approximation built from the curvature
    pairs ``y_i`` (``old_dirs``), ``s_i`` (``old_stps``), ``ro_i = 1 / (y_i . s_i)``, oldest first, and
    the initial scaling ``H_diag``, applied by the two-loop recursion (Nocedal & Wright, Alg. 7.4)::

        q = -g;  for i newest..oldest:  a_i = ro_i s_i . q;  q = q - a_i y_i
        r = H_diag q;  for i oldest..newest:  b_i = ro_i y_i . r;  r = r + (a_i - b_i) s_i
        d = r

    Example: ``d = two_loop(g, [y], [s], [1 / y.dot(s)], y.dot(s) / y.dot(y))``.
    """
    al = [None] * len(old_dirs)
    q = -g
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q -= al[i] * old_dirs[i]
    r = q * H_diag
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r += (al[i] - be_i) * old_stps[i]
    return r


def lbfgs(evaluate, x, state, *, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
          history_size=100, line_search_fn=None):
    """One ``torch.optim.LBFGS.step``: up to ``max_iter`` iterations on the flat vector ``x``, in place.

    ``evaluate(x)`` returns ``(loss, flat_grad)`` at ``x`` (a float and a new 1-d array); it is called
    once at the start, then once per iteration (or per line-search trial). ``state`` is a dict that
    carries the history from one call to the next (start with ``{}``); its keys are torch's:
    ``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
    ``prev_flat_grad``, ``prev_loss``. Returns the loss at the start of the step.

    Example::

        st = {}
        for _ in range(5):
            L = lbfgs(lambda v: (f(v), grad_f(v)), x, st, line_search_fn="strong_wolfe")
    """
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)
    orig_loss, flat_grad = evaluate(x)
    loss = float(orig_loss)
    current_evals = 1
    state["func_evals"] += 1
    if np.abs(flat_grad).max() <= tolerance_grad:       # already optimal
        return orig_loss

    d, t = state.get("d"), state.get("t")
    old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
    H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1
        if state["n_iter"] == 1:
            d = -flat_grad
            old_dirs, old_stps, ro = [], [], []
            H_diag = 1
        else:
            # the newest curvature pair, kept when it is positive enough to keep H positive definite
            y = flat_grad - prev_flat_grad
            s = d * t
            ys = y.dot(s)
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / y.dot(y)
            d = two_loop(flat_grad, old_dirs, old_stps, ro, H_diag)
        if prev_flat_grad is None:
            prev_flat_grad = flat_grad.copy()
        else:
            prev_flat_grad[...] = flat_grad
        prev_loss = loss

        # the step length: the first iteration ever is scaled down by the gradient's size
        if state["n_iter"] == 1:
            t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr
        else:
            t = lr
        gtd = flat_grad.dot(d)
        if gtd > -tolerance_change:      # not a descent direction
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            if line_search_fn != "strong_wolfe":
                raise ValueError(f"LBFGS: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
            x0 = x.copy()
            loss, flat_grad, t, ls_func_evals = strong_wolfe(
                lambda t_: evaluate(x0 + t_ * d), t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
            x += t * d
            opt_cond = np.abs(flat_grad).max() <= tolerance_grad
        else:
            x += t * d
            opt_cond = False
            if n_iter != max_iter:
                # no line search: one evaluation at the new point (torch skips it on the last iteration)
                loss, flat_grad = evaluate(x)
                loss = float(loss)
                opt_cond = np.abs(flat_grad).max() <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        if n_iter == max_iter or current_evals >= max_eval or opt_cond:
            break
        if np.abs(d * t).max() <= tolerance_change:       # no progress in the parameters
            break
        if abs(loss - prev_loss) < tolerance_change:      # nor in the loss
            break

    state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                 prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
    return orig_loss


def _count_option(where, key, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: option {key!r} must be a whole number >= 1, got {value!r}")
    return int(value)


def _line_search_option(where, key, value):
    if value not in (None, "strong_wolfe"):
        raise ValueError(f"{where}: option {key!r} must be None or 'strong_wolfe', got {value!r}")
    return value


#: the state ``state_dict`` saves under ``"lbfgs"``: scalars, flat vectors, lists of flat vectors
_SCALARS = ("func_evals", "n_iter", "t", "H_diag", "prev_loss")
_VECTORS = ("d", "prev_flat_grad")
_LISTS = ("old_dirs", "old_stps")


@register("lbfgs")
class LBFGS(Optimizer):
    """L-BFGS, as ``torch.optim.LBFGS`` (minFunc's algorithm), on the trainable parameters as one
    flat vector x (in dict order). ``step(closure)`` runs up to ``max_iter`` iterations; in each,
    with g the gradient at x and (s_i, y_i) the last ``history_size`` steps and gradient changes
    that had y_i . s_i > 1e-10::

        d = -H g               H: the L-BFGS inverse Hessian from (s_i, y_i), H0 = (y.s / y.y) I
                               of the newest pair (two_loop); d = -g on the very first iteration
        t = lr                 (the very first iteration: min(1, 1 / |g|_1) * lr)
        t = strong_wolfe(t)    (line_search_fn="strong_wolfe": cubic bracketing and zoom)
        x = x + t d

    and stops early when max|g| <= tolerance_grad, g . d > -tolerance_change, max|t d| or the change
    of the loss is below tolerance_change, or after ``max_eval`` evaluations (default
    ``max_iter * 5 // 4``). ``closure()`` returns ``(loss, grads)`` at the current parameters;
    ``step`` returns the loss at the start. One set of options for all parameters (torch has one
    group); ``frozen`` parameters are left out of x. ``fit(optimizer="lbfgs")`` trains on full batches.

    Example::

        opt = LBFGS(p, history_size=10, line_search_fn="strong_wolfe")
        L = opt.step(lambda: mod.loss_and_grad(p, x=X, y=Y))
    """

    #: the training loop calls ``step(closure)`` on the whole training set, not ``step(grads)`` per batch
    needs_closure = True

    _DEFAULTS = dict(lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                     history_size=100, line_search_fn=None)
    _OPTIONS = dict(lr=nonnegative_option, max_iter=_count_option, max_eval=_count_option,
                    tolerance_grad=nonnegative_option, tolerance_change=nonnegative_option,
                    history_size=_count_option, line_search_fn=_line_search_option)

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None, *, options=None, frozen=None, **unknown):
        for k, opts in (options or {}).items():
            for o in (opts if isinstance(opts, dict) else {}):
                if o != "frozen":
                    raise ValueError(f"LBFGS: options[{k!r}]: per-parameter option {o!r} is not supported "
                                     "(L-BFGS updates all parameters as one vector; only 'frozen' may differ)")
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change, history_size=history_size,
                                      line_search_fn=line_search_fn), options, frozen, unknown)
        self._lbfgs = {}

    def _check(self, h, where):
        h = dict(h)
        if h["max_eval"] is None:             # torch stores the resolved default
            h["max_eval"] = _count_option(where, "max_iter", h["max_iter"]) * 5 // 4
        return super()._check(h, where)

    @staticmethod
    def _state_keys(h):
        return ()

    def _flat(self, arrays):
        ks = self.trainable
        return np.concatenate([np.asarray(arrays[k], dtype=self.params[k].dtype).reshape(-1) for k in ks]) \
            if len(ks) > 1 else np.array(arrays[ks[0]], dtype=self.params[ks[0]].dtype).reshape(-1)

    def _write(self, x):
        off = 0
        for k in self.trainable:
            p = self.params[k]
            p[...] = x[off:off + p.size].reshape(p.shape)
            off += p.size

    def _lr(self):
        lrs = {float(self.lr[k]) for k in self.trainable}
        if len(lrs) != 1:
            raise ValueError(f"LBFGS.step: all parameters need one learning rate, got opt.lr = {self.lr}")
        lr = lrs.pop()
        if not 0 <= lr < math.inf:
            raise ValueError(f"LBFGS.step: the learning rate must be a finite number >= 0, got {lr!r}")
        return lr

    def step(self, closure):
        """Up to ``max_iter`` L-BFGS iterations, in place; returns the loss at the start of the step.

        ``closure()`` must return ``(loss, grads)`` for the parameters as they are when it is called
        (grads: a dict name -> array, as ``mod.loss_and_grad`` returns).

        Example::

            L = opt.step(lambda: mod.loss_and_grad(p, x=X, y=Y))
        """
        if not callable(closure):
            raise ValueError("LBFGS.step needs a closure that returns (loss, grads), e.g. "
                             f"opt.step(lambda: mod.loss_and_grad(p, **batch)); got {type(closure).__name__}")
        if not self.trainable:
            raise ValueError(f"LBFGS.step: nothing to train: every parameter is frozen ({', '.join(self.params)})")
        h = self._hyper[self.trainable[0]]
        x = self._flat(self.params)

        def evaluate(v):
            self._write(v)                # x itself, or a line-search trial point
            loss, grads = closure()
            missing = [k for k in self.trainable if k not in grads]
            if missing:
                raise ValueError(f"LBFGS.step: the closure's grads lack parameter {missing[0]!r}")
            return float(loss), self._flat(grads)

        try:
            return lbfgs(evaluate, x, self._lbfgs, lr=self._lr(), max_iter=h["max_iter"], max_eval=h["max_eval"],
                         tolerance_grad=h["tolerance_grad"], tolerance_change=h["tolerance_change"],
                         history_size=h["history_size"], line_search_fn=h["line_search_fn"])
        finally:
            self._write(x)

    def state_dict(self):
        """As ``Optimizer.state_dict``, plus ``"lbfgs"``: torch's state (``func_evals``, ``n_iter``,
        ``t``, ``H_diag``, ``prev_loss``, ``d``, ``prev_flat_grad``, ``old_dirs``, ``old_stps``, ``ro``)
        over the flat vector of the trainable parameters in dict order; ``{}`` before the first step.

        Example::

            sd = opt.state_dict(); opt2 = LBFGS(p); opt2.load_state_dict(sd)   # continues bit-identically
        """
        sd = super().state_dict()
        st = {}
        for k, v in self._lbfgs.items():
            if k in _VECTORS:
                st[k] = v.copy()
            elif k in _LISTS:
                st[k] = [a.copy() for a in v]
            elif k == "ro":
                st[k] = [float(r) for r in v]
            elif k in _SCALARS:
                st[k] = v if isinstance(v, int) else float(v)
        sd["lbfgs"] = st
        return sd

    def load_state_dict(self, state_dict):
        """Restore hyperparameters, learning rate and the L-BFGS history exactly (bit for bit).

        Checks every entry first and raises ``ValueError`` naming the problem; on error nothing changes.

        Example::

            opt = LBFGS(p); opt.load_state_dict(saved)
        """
        where = "LBFGS.load_state_dict"
        if not isinstance(state_dict, dict):
            raise ValueError(f"{where}: expected a dict, got {type(state_dict).__name__}")
        sd = dict(state_dict)
        st = sd.pop("lbfgs", {})
        if sd.get("state"):
            raise ValueError(f"{where}: L-BFGS keeps no per-parameter state, but 'state' holds "
                             f"{sorted(sd['state'])}")
        saved = super().state_dict()
        super().load_state_dict(sd)
        try:
            new = self._checked_state(st, where)
        except ValueError:
            super().load_state_dict(saved)
            raise
        self._lbfgs = new

    def _checked_state(self, st, where):
        if not isinstance(st, dict):
            raise ValueError(f"{where}: 'lbfgs' must be a dict, got {type(st).__name__}")
        known = _SCALARS + _VECTORS + _LISTS + ("ro",)
        for k in st:
            if k not in known:
                raise ValueError(f"{where}: lbfgs: unexpected entry {k!r}")
        if not st:
            return {}
        counters = ("func_evals", "n_iter")
        if "d" not in st and set(st) <= set(counters):
            known = counters          # every step so far stopped at once: the gradient was already ~0
        for k in known:
            if k not in st:
                raise ValueError(f"{where}: lbfgs: missing entry {k!r}")
        n = sum(self.params[k].size for k in self.trainable)
        dtype = self.params[self.trainable[0]].dtype

        def vector(v, what):
            if not isinstance(v, np.ndarray) or v.shape != (n,) or v.dtype.kind != "f":
                raise ValueError(f"{where}: lbfgs: {what} must be a float vector of the {n} trainable values, "
                                 f"got {getattr(v, 'shape', type(v).__name__)}")
            return np.array(v, dtype=dtype, copy=True)

        new = {}
        for k in ("func_evals", "n_iter"):
            v = st[k]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{where}: lbfgs: {k!r} must be an int >= 0, got {v!r}")
            new[k] = int(v)
        if known == counters:
            return new
        for k in ("t", "H_diag", "prev_loss"):
            new[k] = real_option(f"{where}: lbfgs", k, st[k])
        for k in _VECTORS:
            new[k] = vector(st[k], repr(k))
        hist = self._hyper[self.trainable[0]]["history_size"]
        lens = {len(st[k]) if isinstance(st[k], list) else -1 for k in _LISTS + ("ro",)}
        if len(lens) != 1 or -1 in lens or lens.pop() > hist:
            raise ValueError(f"{where}: lbfgs: 'old_dirs', 'old_stps' and 'ro' must be lists of one length "
                             f"<= history_size {hist}")
        for k in _LISTS:
            new[k] = [vector(v, f"{k}[{i}]") for i, v in enumerate(st[k])]
        new["ro"] = [real_option(f"{where}: lbfgs", f"ro[{i}]", r) for i, r in enumerate(st["ro"])]
        return new
