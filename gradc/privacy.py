"""Privacy accounting for DP-SGD: the Renyi-DP of the Sampled Gaussian Mechanism.

One DP-SGD step samples each example independently with probability ``q`` (Poisson sampling),
clips every per-example gradient to L2 norm ``C`` and adds Gaussian noise of standard deviation
``sigma * C`` to their sum; ``sigma`` is the *noise multiplier*. Such a step is
``(alpha, rdp_alpha)``-Renyi-DP at every order ``alpha > 1``, with ``rdp_alpha`` computed here
from the analysis of Mironov, Talwar and Zhang (2019, "Renyi Differential Privacy of the Sampled
Gaussian Mechanism", arXiv:1908.10530). Renyi-DP composes by addition, so ``steps`` identical
steps cost ``steps * rdp_alpha``, and a run that changed its settings costs the sum over its
phases. The total converts to ``(eps, delta)``-DP by Balle et al. (2020, "Hypothesis testing
interpretations and Renyi differential privacy", Theorem 21)::

    eps = min over alpha of  rdp_alpha - (log(delta) + log(alpha)) / (alpha - 1)
                             + log((alpha - 1) / alpha)

the same conversion as Opacus's ``get_privacy_spent`` (except that eps is never reported below
0). With the same orders, eps and the best order agree with Opacus's ``RDPAccountant`` to about
1e-10 relative (tests/test_privacy.py checks that).

Example::

    from gradc.privacy import RDPAccountant, epsilon

    # 60000 examples, expected batch 256, 30 epochs, noise multiplier 1.1
    q = 256 / 60000
    steps = 30 * 60000 // 256
    eps, order = epsilon(q, 1.1, steps, delta=1e-5)          # 1.793..., at order 10.6

    acc = RDPAccountant()
    for _ in range(steps):
        ...                                                  # one DP-SGD step
        acc.step(noise_multiplier=1.1, sample_rate=q)
    acc.get_epsilon(delta=1e-5)                              # the same eps
    state = acc.state_dict()                                 # plain lists: JSON or a checkpoint

Only numpy and the standard library are used. One step's RDP at order ``a`` is
``log(A_a) / (a - 1)`` with ``A_a = E[(1 - q + q L(z))^a]``, ``z ~ N(0, sigma^2)`` and
``L(z) = exp((2z - 1) / (2 sigma^2))`` (MTZ section 3.3). ``A_a`` is summed as ``1 + (A_a - 1)``,
with the part above one summed directly, so that small RDP values keep their relative precision:

* integer orders: the finite binomial expansion, where the part above one is
  ``sum_{i>=2} C(a,i) q^i (1-q)^(a-i) expm1(i(i-1) / (2 sigma^2))``;
* fractional orders: the paper's two series, one for each side of the point ``z0`` where the
  mixture's two components cross, summed in log space with separate positive and negative
  accumulators; their alternating tails (which shrink only polynomially) are finished by an
  Euler transform.

Against 50-digit quadrature (mpmath) the values are within a few 1e-15 relative at the settings
tried, except near q = 1/2 with very large noise (about 1e-10 there). Opacus (1.6) stops its
fractional-order series at terms below e^-30 and sums A_a itself, so its RDP at small fractional
orders is off by up to 1e-12 per step absolute, which is up to 1e-6 relative where the RDP is tiny
(q = 0.001, sigma = 5, order 1.1); that never moves eps, whose best order is elsewhere.
"""
import math
import numbers
import warnings
from functools import lru_cache

import numpy as np

__all__ = ["DEFAULT_ORDERS", "rdp", "epsilon", "epsilon_from_rdp", "RDPAccountant"]

# the orders Opacus's RDPAccountant searches by default (DEFAULT_ALPHAS), written the same way so
# the floats are bit for bit the same
DEFAULT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))

_LOG_TAIL_TOL = math.log(1e-17)     # stop a series once its terms fall below this (relative)
_MAX_TERMS = 1 << 22                # a series still going after this many terms is a bug
_SQRT2 = math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# argument checks

def _real(name, value):
    """``value`` as a float, or ValueError naming ``name`` (bools and NaN are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must be a number, got NaN")
    return v


def _check_q(q, name="q"):
    q = _real(name, q)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"{name} (the sampling rate) must be in [0, 1], got {q!r}")
    return q


def _check_sigma(sigma, name="noise_multiplier"):
    sigma = _real(name, sigma)
    if sigma < 0:
        raise ValueError(f"{name} must be >= 0 (noise std / clipping bound), got {sigma!r}")
    return sigma


def _check_steps(steps, name="steps"):
    if isinstance(steps, bool) or not isinstance(steps, numbers.Real):
        raise ValueError(f"{name} must be a whole number >= 0, got {steps!r}")
    s = float(steps)
    if not (math.isfinite(s) and s.is_integer() and s >= 0):
        raise ValueError(f"{name} must be a whole number >= 0, got {steps!r}")
    return int(s)


def _check_delta(delta):
    delta = _real("delta", delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return delta


def _check_orders(orders):
    if isinstance(orders, (str, bytes)):
        raise ValueError(f"orders must be a sequence of numbers > 1, got {orders!r}")
    try:
        seq = list(np.atleast_1d(np.asarray(orders, dtype=object)).ravel())
    except Exception:
        raise ValueError(f"orders must be a sequence of numbers > 1, got {orders!r}") from None
    if not seq:
        raise ValueError("orders must not be empty")
    out = []
    for a in seq:
        a = _real("orders", a)
        if not (math.isfinite(a) and a > 1):
            raise ValueError(f"orders must be finite and > 1, got {a!r}")
        out.append(a)
    return out


# ---------------------------------------------------------------------------------------------
# log-space helpers (all on numpy arrays)

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _log_ndtr(x):
    """log of the standard normal CDF, elementwise, accurate in both tails."""
    x = np.asarray(x, dtype=float)
    out = np.empty_like(x)
    hi = x >= 0
    if hi.any():    # Phi(x) = 1 - Phi(-x) with Phi(-x) small: log1p keeps it
        out[hi] = np.log1p(-0.5 * _erfc(x[hi] / _SQRT2).astype(float))
    mid = (x < 0) & (x > -20)
    if mid.any():
        out[mid] = np.log(0.5 * _erfc(-x[mid] / _SQRT2).astype(float))
    lo = x <= -20
    if lo.any():    # asymptotic series of the Mills ratio; at |x| >= 20 twelve terms reach 1e-18
        t = x[lo]
        r = 1.0 / (t * t)
        s = np.ones_like(t)
        term = np.ones_like(t)
        for k in range(1, 13):
            term = -term * (2 * k - 1) * r
            s += term
        out[lo] = -0.5 * t * t - np.log(-t) - _HALF_LOG_2PI + np.log(s)
    return out


def _log_abs_expm1(y):
    """(log|e^y - 1|, sign(e^y - 1)) elementwise, without overflow for large y."""
    y = np.asarray(y, dtype=float)
    with np.errstate(divide="ignore"):
        mag = np.where(y > 0, y + np.log(-np.expm1(-np.abs(y))), np.log(-np.expm1(-np.abs(y))))
    return mag, np.sign(y)


def _log_sum(logs):
    """log(sum(exp(logs))) with an exactly rounded sum (math.fsum); -inf for no terms."""
    logs = np.asarray(logs, dtype=float)
    if logs.size == 0:
        return -math.inf
    m = float(np.max(logs))
    if m == -math.inf:
        return -math.inf
    return m + math.log(math.fsum(np.exp(logs - m)))


def _log_diff(log_p, log_n):
    """(log|P - N|, sign(P - N)) for P = e^log_p, N = e^log_n."""
    if log_n == -math.inf:
        return log_p, (1.0 if log_p > -math.inf else 0.0)
    if log_p == log_n:
        return -math.inf, 0.0
    if log_p > log_n:
        return log_p + math.log(-math.expm1(log_n - log_p)), 1.0
    return log_n + math.log(-math.expm1(log_p - log_n)), -1.0


def _log1p_exp(x):
    """log(1 + e^x) (softplus), stable for either sign of x."""
    if x == -math.inf:
        return 0.0
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# log A_alpha of the Sampled Gaussian Mechanism, 0 < q < 1, 0 < sigma < inf

def _log_a_int(q, sigma, alpha):
    """log A_alpha for an integer order: log1p of the binomial expansion's part above one."""
    n = int(alpha)
    k = np.arange(1, n + 1, dtype=float)
    log_binom = np.cumsum(np.log(n - k + 1) - np.log(k))[1:]          # log C(n, i), i = 2..n
    i = k[1:]
    c = i * (i - 1) / (2 * sigma * sigma)
    log_expm1 = c + np.log(-np.expm1(-c))                               # c > 0 here
    log_terms = log_binom + i * math.log(q) + (n - i) * math.log1p(-q) + log_expm1
    return _log1p_exp(_log_sum(log_terms))


def _euler(partial_sums):
    """Repeated averaging of consecutive partial sums (the Euler transform): the limit of an
    alternating series with smoothly shrinking terms, from a few of its partial sums."""
    p = np.asarray(partial_sums, dtype=float)
    while p.size > 1:
        p = 0.5 * (p[:-1] + p[1:])
    return float(p[0])


def _log_a_frac(q, sigma, alpha):
    """log A_alpha for a fractional order: MTZ's two series, split at z0.

    A = sum_i C(a,i) [ q^i (1-q)^(a-i) E0[L^i; z <= z0] + q^(a-i) (1-q)^i E0[L^(a-i); z > z0] ],
    L = exp((2z - 1) / (2 sigma^2)) the likelihood ratio of the two Gaussians, z ~ N(0, sigma^2)
    under E0, E0[L^m; z <= z0] = exp(m(m-1) / (2 sigma^2)) Phi((z0 - m) / sigma) and
    E0[L^m; z > z0] = exp(m(m-1) / (2 sigma^2)) Phi((m - z0) / sigma). For q <= 1/2 the first
    series' coefficients sum to one (the binomial series of ((1-q) + q)^a, ratio q/(1-q) <= 1),
    for q > 1/2 the second's do; that series is summed with E0[...] - 1 in place of E0[...], so
    the total is A - 1, and small RDP values keep their relative precision.

    From i = floor(a) + 2 on the terms alternate in sign; far out they shrink only like
    i^-(a+1) or i^-(a+2), so rather than summing until they drop below 1e-17 (10^5 terms and
    more at small orders), the sum stops once the Euler transform of the last terms' partial
    sums has settled (three estimates within 1e-16 of the value), or once a term is below 1e-17
    of the value.
    """
    s2 = sigma * sigma
    z0 = s2 * (math.log1p(-q) - math.log(q)) + 0.5       # q L(z0) = (1 - q)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    head = int(math.floor(alpha)) + 2                     # C(a, i) alternates in sign from here
    window = 24                                           # terms the Euler transform looks at
    pos, neg = [], []                                     # log terms summed so far, by sign
    log_c_last = 0.0                                      # log|C(a, 0)|
    start, size = 0, max(64, head + 2 * window)
    while True:
        i = np.arange(start, start + size, dtype=float)
        with np.errstate(divide="ignore"):
            ratio = np.log(np.abs(alpha - i + 1)) - np.log(i)   # |C(a,i) / C(a,i-1)|
        if start == 0:
            ratio[0] = 0.0
        log_c = log_c_last + np.cumsum(ratio)
        log_c_last = float(log_c[-1])
        sign = np.where(i < head, 1.0, np.where((i - head) % 2 == 0, -1.0, 1.0))
        j = alpha - i
        log_m0 = i * (i - 1) / (2 * s2) + _log_ndtr((z0 - i) / sigma)
        log_m1 = j * (j - 1) / (2 * s2) + _log_ndtr((j - z0) / sigma)
        t0 = log_c + i * log_q + j * log_1mq
        t1 = log_c + j * log_q + i * log_1mq
        if q <= 0.5:          # the first series' coefficients sum to one: subtract it there
            mag, s = _log_abs_expm1(log_m0)
            t0, sign0, t1, sign1 = t0 + mag, sign * s, t1 + log_m1, sign
        else:                 # the second one's do
            mag, s = _log_abs_expm1(log_m1)
            t0, sign0, t1, sign1 = t0 + log_m0, sign, t1 + mag, sign * s
        # all but the last `window` terms join the sum; the value so far sets the tolerance
        for t, sg in ((t0[:-window], sign0[:-window]), (t1[:-window], sign1[:-window])):
            pos.append(t[sg > 0])
            neg.append(t[sg < 0])
        log_val, val_sign = _log_diff(_log_sum(np.concatenate(pos)), _log_sum(np.concatenate(neg)))
        tol = _LOG_TAIL_TOL + (log_val if val_sign > 0 else 0.0)
        tail = i >= head
        last = slice(size - window, size)
        if val_sign != 0 and tail[last].all():
            # the last terms relative to the value so far, as one alternating sequence
            u = sign0[last] * np.exp(t0[last] - log_val) + sign1[last] * np.exp(t1[last] - log_val)
            sums = np.cumsum(u)
            est = [_euler(sums[:window - k]) for k in range(3)]
            if max(est) - min(est) < 1e-16 or (tail & (np.maximum(t0, t1) < tol)).any():
                scaled = val_sign + est[0]                # the whole sum / exp(log_val)
                log_val = log_val + math.log(abs(scaled)) if scaled != 0 else -math.inf
                val_sign = math.copysign(1.0, scaled) if scaled != 0 else 0.0
                break
        for t, sg in ((t0[-window:], sign0[-window:]), (t1[-window:], sign1[-window:])):
            pos.append(t[sg > 0])
            neg.append(t[sg < 0])
        start += size
        size *= 2
        if start >= _MAX_TERMS:
            raise RuntimeError(f"RDP series did not converge for q={q!r}, noise_multiplier="
                               f"{sigma!r}, order {alpha!r}")
    # the sum is A - 1 >= 0 (rounding may leave it a hair below)
    return _log1p_exp(log_val) if val_sign > 0 else 0.0


@lru_cache(maxsize=4096)
def _rdp_one(q, sigma, alpha):
    """RDP of one step of the Sampled Gaussian Mechanism at order ``alpha``."""
    if q == 0 or math.isinf(sigma):
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1:
        return alpha / (2 * sigma * sigma)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, alpha)
    else:
        log_a = _log_a_frac(q, sigma, alpha)
    return max(log_a, 0.0) / (alpha - 1)


# ---------------------------------------------------------------------------------------------
# public functions

def rdp(q, noise_multiplier, steps, orders=DEFAULT_ORDERS):
    """RDP of ``steps`` steps of the Sampled Gaussian Mechanism, one value per order.

    ``q``: the Poisson sampling rate in [0, 1]; ``noise_multiplier``: noise std / clipping bound
    (0 means no noise: infinite RDP unless q == 0); ``steps``: a whole number >= 0; ``orders``:
    finite Renyi orders > 1 (a sequence, or one number). Returns a 1-D float numpy array, one
    value per order; entries may be ``inf``. Per-order values are cached, so repeated calls with
    the same ``q`` and ``noise_multiplier`` (an accountant asked every epoch) are cheap.
    """
    q = _check_q(q)
    sigma = _check_sigma(noise_multiplier)
    steps = _check_steps(steps)
    alphas = _check_orders(orders)
    if steps == 0:
        return np.zeros(len(alphas))
    return np.array([_rdp_one(q, sigma, a) for a in alphas]) * steps


def epsilon_from_rdp(rdp_values, delta, orders=DEFAULT_ORDERS):
    """``(eps, best_order)`` for total RDP values ``rdp_values`` (one per order) at ``delta``.

    The Balle et al. (2020) conversion, minimised over the orders; eps is never below 0. When
    every order's RDP is infinite the answer is ``(inf, nan)``; when every one is 0 (nothing was
    spent) it is ``(0.0, nan)``. Warns when the best order is the first or last one searched: a
    wider range of orders may give a smaller eps.
    """
    delta = _check_delta(delta)
    alphas = np.array(_check_orders(orders))
    r = np.atleast_1d(np.asarray(rdp_values, dtype=float)).ravel()
    if r.shape != alphas.shape:
        raise ValueError(f"rdp_values has {r.size} values but orders has {alphas.size}")
    if np.isnan(r).any() or (r < 0).any():
        raise ValueError("rdp_values must be >= 0 (inf allowed), got NaN or a negative value")
    if np.isinf(r).all():
        return math.inf, math.nan
    if not r.any():
        return 0.0, math.nan
    eps = r - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    best = int(np.argmin(eps))
    if len(alphas) > 1 and best in (0, len(alphas) - 1):
        end = "smallest" if best == 0 else "largest"
        warnings.warn(f"the best Renyi order is the {end} one searched ({alphas[best]:g}); "
                      "widening the range of orders may give a smaller epsilon", stacklevel=2)
    return max(float(eps[best]), 0.0), float(alphas[best])


def epsilon(q, noise_multiplier, steps, delta, orders=DEFAULT_ORDERS):
    """``(eps, best_order)``: the (eps, delta)-DP of ``steps`` DP-SGD steps at sampling rate
    ``q`` and noise multiplier ``noise_multiplier``, via RDP at ``orders``."""
    delta = _check_delta(delta)
    return epsilon_from_rdp(rdp(q, noise_multiplier, steps, orders), delta, orders)


class RDPAccountant:
    """Keeps the history of a DP-SGD run and reports its privacy spent.

    ``history`` is a list of ``(noise_multiplier, sample_rate, steps)`` tuples, consecutive steps
    with the same settings merged into one entry, as in Opacus's ``RDPAccountant`` (whose
    ``state_dict`` this class also loads).
    """
    mechanism = "rdp"

    def __init__(self):
        self.history = []

    def step(self, noise_multiplier, sample_rate, steps=1):
        """Record ``steps`` steps at ``noise_multiplier`` and ``sample_rate``."""
        sigma = _check_sigma(noise_multiplier)
        q = _check_q(sample_rate, "sample_rate")
        steps = _check_steps(steps)
        if steps == 0:
            return
        if self.history and self.history[-1][:2] == (sigma, q):
            self.history[-1] = (sigma, q, self.history[-1][2] + steps)
        else:
            self.history.append((sigma, q, steps))

    @property
    def total_steps(self):
        """The number of steps recorded."""
        return sum(n for _, _, n in self.history)

    def rdp(self, orders=None):
        """The composed RDP of the whole history, one value per order."""
        orders = DEFAULT_ORDERS if orders is None else orders
        total = np.zeros(len(_check_orders(orders)))
        for sigma, q, n in self.history:
            total = total + rdp(q, sigma, n, orders)
        return total

    def get_privacy_spent(self, delta, orders=None):
        """``(eps, best_order)`` for the history so far; ``(0.0, nan)`` before any step."""
        orders = DEFAULT_ORDERS if orders is None else orders
        return epsilon_from_rdp(self.rdp(orders), delta, orders)

    def get_epsilon(self, delta, orders=None):
        """The eps spent so far at ``delta`` (0.0 before any step)."""
        return self.get_privacy_spent(delta, orders)[0]

    def state_dict(self):
        """The accountant's state as plain lists, floats, ints and strings (JSON-able)."""
        return {"mechanism": self.mechanism,
                "history": [[float(s), float(q), int(n)] for s, q, n in self.history]}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned (a JSON round trip of it, or Opacus's)."""
        if not isinstance(state, dict) or "history" not in state:
            raise ValueError("state must be a dict with a 'history' key, as state_dict returns")
        mech = state.get("mechanism", self.mechanism)
        if mech != self.mechanism:
            raise ValueError(f"state's mechanism is {mech!r}, this accountant's {self.mechanism!r}")
        history = []
        for k, entry in enumerate(state["history"]):
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise ValueError(f"history[{k}] must be (noise_multiplier, sample_rate, steps), "
                                 f"got {entry!r}")
            history.append((_check_sigma(entry[0], f"history[{k}] noise_multiplier"),
                            _check_q(entry[1], f"history[{k}] sample_rate"),
                            _check_steps(entry[2], f"history[{k}] steps")))
        self.history = history
