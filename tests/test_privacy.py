"""gradc.privacy: the RDP accountant for DP-SGD (Sampled Gaussian Mechanism).

Two kinds of checks: against Opacus where it is installed (eps, best order and per-order RDP on a
grid of settings, and the accountant on mixed histories), and, always, properties that follow
from the math plus values pinned from a 50-digit mpmath quadrature and from Opacus.
"""
import json
import math
import warnings

import numpy as np
import pytest

from gradc.privacy import DEFAULT_ORDERS, RDPAccountant, epsilon, epsilon_from_rdp, rdp

QS = [0.001, 0.01, 0.05, 0.2, 1.0]
SIGMAS = [0.5, 0.8, 1.1, 2.0, 5.0]
STEPS = [1, 100, 10000]
DELTAS = [1e-5, 1e-6]


def quiet(f, *args, **kwargs):
    """Call f with the 'best order is at the end of the range' warnings (ours and Opacus's)
    silenced: several grid settings end there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*order.*")
        return f(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# against Opacus

@pytest.fixture(scope="module")
def opacus_rdp():
    pytest.importorskip("opacus")
    from opacus.accountants.analysis import rdp as analysis
    return analysis


def test_default_orders_are_opacus_defaults():
    opacus = pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant as OpacusRDP
    assert DEFAULT_ORDERS == OpacusRDP.DEFAULT_ALPHAS
    assert opacus.__version__


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", QS)
def test_matches_opacus_grid(opacus_rdp, q, sigma):
    # Opacus's compute_rdp is its one-step RDP times steps, so one call per (q, sigma) serves
    # every steps; get_privacy_spent is what its RDPAccountant reports
    theirs_one = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1,
                                        orders=DEFAULT_ORDERS)
    for steps in STEPS:
        theirs = theirs_one * steps
        mine = rdp(q, sigma, steps)
        # Opacus stops its fractional-order series at terms below e^-30 and sums A_alpha rather
        # than A_alpha - 1, which leaves up to ~1.2e-12 per step absolute at small fractional
        # orders on this grid (1e-6 relative where the RDP is tiny, e.g. q=0.001, sigma=5,
        # order 1.1; the 50-digit values pinned below side with us there)
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=2e-12 * steps)
        for delta in DELTAS:
            eps, order = quiet(epsilon, q, sigma, steps, delta)
            t_eps, t_order = quiet(opacus_rdp.get_privacy_spent, orders=DEFAULT_ORDERS,
                                   rdp=theirs, delta=delta)
            assert order == t_order
            assert eps == pytest.approx(float(t_eps), rel=1e-9)


def test_accountant_matches_opacus_mixed_history(opacus_rdp):
    from opacus.accountants import RDPAccountant as OpacusRDP
    phases = [(1.0, 0.01, 37), (2.0, 0.05, 12), (1.0, 0.01, 25), (0.7, 0.2, 3), (0.7, 0.2, 4),
              (5.0, 1.0, 9)]
    mine, theirs = RDPAccountant(), OpacusRDP()
    for sigma, q, n in phases:
        mine.step(noise_multiplier=sigma, sample_rate=q, steps=n)
        for _ in range(n):
            theirs.step(noise_multiplier=sigma, sample_rate=q)
    # the same merging: the two (0.7, 0.2) phases are one entry, the two (1.0, 0.01) are not
    assert mine.history == theirs.history
    assert len(mine.history) == 5 and mine.total_steps == 90
    for delta in DELTAS:
        e, o = quiet(mine.get_privacy_spent, delta)
        te, to = quiet(theirs.get_privacy_spent, delta=delta)
        assert o == to and e == pytest.approx(te, rel=1e-9)
    orders = [1.5, 2, 3.25, 8, 20.5, 64, 128]
    assert quiet(mine.get_epsilon, 1e-5, orders) == pytest.approx(
        quiet(theirs.get_epsilon, 1e-5, alphas=orders), rel=1e-9)

    # long mixed histories, set directly (stepping 10^5 times would be slow)
    long = [(1.1, 0.004, 20000), (0.9, 0.01, 5000), (1.1, 0.004, 30000), (3.0, 0.3, 700)]
    mine, theirs = RDPAccountant(), OpacusRDP()
    theirs.history = list(long)
    for sigma, q, n in long:
        mine.step(sigma, q, n)
    assert mine.history == long
    e, o = quiet(mine.get_privacy_spent, 1e-6)
    te, to = quiet(theirs.get_privacy_spent, delta=1e-6)
    assert o == to and e == pytest.approx(te, rel=1e-9)


def test_loads_opacus_state_dict(opacus_rdp):
    from opacus.accountants import RDPAccountant as OpacusRDP
    theirs = OpacusRDP()
    for _ in range(5):
        theirs.step(noise_multiplier=1.3, sample_rate=0.02)
    theirs.step(noise_multiplier=0.9, sample_rate=0.02)
    mine = RDPAccountant()
    mine.load_state_dict(theirs.state_dict())
    assert mine.history == [(1.3, 0.02, 5), (0.9, 0.02, 1)]
    assert mine.get_epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# properties from the math (no Opacus needed)

def test_eps_decreases_with_noise_and_grows_with_steps_and_rate():
    by_sigma = [quiet(epsilon, 0.01, s, 1000, 1e-5)[0] for s in (0.6, 0.8, 1.0, 1.5, 2.0, 4.0)]
    assert all(a > b for a, b in zip(by_sigma, by_sigma[1:])), by_sigma
    by_steps = [quiet(epsilon, 0.01, 1.0, n, 1e-5)[0] for n in (1, 10, 100, 1000, 10000)]
    assert all(a < b for a, b in zip(by_steps, by_steps[1:])), by_steps
    by_q = [quiet(epsilon, q, 1.0, 100, 1e-5)[0] for q in (1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0)]
    assert all(a < b for a, b in zip(by_q, by_q[1:])), by_q
    by_delta = [quiet(epsilon, 0.01, 1.0, 100, d)[0] for d in (1e-3, 1e-5, 1e-7, 1e-9)]
    assert all(a < b for a, b in zip(by_delta, by_delta[1:])), by_delta


def test_rdp_monotone_in_order_rate_and_noise():
    # Renyi divergence never decreases with the order; A_alpha(q) is convex in q with zero slope
    # at q = 0, so RDP never decreases with q; more noise never costs more
    for q in (0.001, 0.05, 0.3, 0.5, 0.8):
        for sigma in (0.4, 1.0, 3.0):
            r = rdp(q, sigma, 1)
            assert np.all(np.diff(r) >= -1e-15 * r[1:]), (q, sigma)
    grid_q = np.array([rdp(q, 1.0, 1) for q in (0.0, 1e-4, 0.01, 0.1, 0.4, 0.5, 0.6, 0.9, 1.0)])
    assert np.all(np.diff(grid_q, axis=0) >= 0)
    grid_s = np.array([rdp(0.05, s, 1) for s in (0.3, 0.5, 1.0, 2.0, 10.0, 100.0)])
    assert np.all(np.diff(grid_s, axis=0) <= 0)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 7.0])
def test_full_batch_is_the_gaussian_mechanism(sigma):
    orders = np.array(DEFAULT_ORDERS + [100.5, 1000])
    np.testing.assert_allclose(rdp(1.0, sigma, 37, orders), orders * 37 / (2 * sigma ** 2),
                               rtol=1e-15)


def test_no_sampling_no_steps_no_noise():
    assert not rdp(0.0, 1.0, 100).any()
    assert not rdp(0.0, 0.0, 100).any()            # nothing sampled: no noise needed
    assert not rdp(0.3, 1.0, 0).any()
    assert np.isinf(rdp(0.3, 0.0, 1)).all()
    assert not rdp(0.3, math.inf, 5).any()
    eps, order = epsilon(0.0, 1.0, 100, 1e-5)
    assert eps == 0.0 and math.isnan(order)
    eps, order = epsilon(0.3, 0.0, 1, 1e-5)
    assert eps == math.inf and math.isnan(order)
    assert RDPAccountant().get_epsilon(1e-5) == 0.0


@pytest.mark.parametrize("q,sigma", [(0.01, 0.5), (0.2, 1.3), (0.7, 4.0), (0.001, 20.0),
                                     (0.5, 0.2)])
def test_order_two_closed_form(q, sigma):
    # A_2 = E[(1 - q + qL)^2] = 1 + q^2 (exp(1/sigma^2) - 1)
    exact = math.log1p(q * q * math.expm1(1 / sigma ** 2))
    assert rdp(q, sigma, 3, [2])[0] == pytest.approx(3 * exact, rel=1e-13)


def test_integer_and_fractional_expansions_meet():
    # orders a hair either side of an integer go through the two-series expansion, the integer
    # itself through the binomial one; RDP is smooth in the order, so they must agree
    for a in (2, 3, 10, 33):
        for q, sigma in ((0.01, 1.0), (0.3, 0.7), (0.5, 50.0), (0.7, 2.0), (0.999, 0.4)):
            lo, mid, hi = rdp(q, sigma, 1, [a - 1e-9, a, a + 1e-9])
            assert lo <= mid <= hi
            assert (hi - mid) == pytest.approx(mid - lo, rel=1e-2)
            assert hi - lo < 1e-7 * mid


def test_linear_in_steps_and_additive_in_the_accountant():
    one = rdp(0.02, 1.2, 1)
    np.testing.assert_allclose(rdp(0.02, 1.2, 250), 250 * one, rtol=1e-15)
    acc = RDPAccountant()
    acc.step(1.2, 0.02, 100)
    acc.step(0.8, 0.1)
    acc.step(1.2, 0.02, 150)
    np.testing.assert_allclose(acc.rdp(), 250 * one + rdp(0.1, 0.8, 1), rtol=1e-14)
    eps, order = quiet(acc.get_privacy_spent, 1e-5)
    assert (eps, order) == quiet(epsilon_from_rdp, acc.rdp(), 1e-5)


# 50-digit values of one step's RDP: mpmath.quad of E[(1 - q + qL)^a] - 1 over z ~ N(0, sigma^2)
# (mp.dps = 50, split at 0, 1/2, z0 and a). Opacus 1.6's compute_rdp gives, in order,
# 2.244511465935002e-08 (1.1e-6 relative off), 0.05269607105541025, 0.00016207740933199663,
# 0.005043815122190421, 1.0059940684960786, 0.09092827114187771.
MPMATH_RDP = [
    (0.001, 5.0, 1.1, 2.2445090613383967685e-8),
    (0.2, 0.8, 1.1, 0.052696071054309854219),
    (0.01, 1.1, 2.5, 0.00016207740937000371393),
    (0.05, 2.0, 12, 0.0050438151221904660711),
    (0.5, 1.0, 3.7, 1.0059940684960823836),
    (0.9, 3.0, 2, 0.090928271141877715609),
]


@pytest.mark.parametrize("q,sigma,order,value", MPMATH_RDP)
def test_pinned_rdp_values(q, sigma, order, value):
    assert rdp(q, sigma, 1, [order])[0] == pytest.approx(value, rel=1e-13)


# (eps, best order) by this module, checked against Opacus 1.6 (RDPAccountant's
# get_privacy_spent on the same orders), whose eps were 1.7933392781909565,
# 2.1013652716430564, 5.496204958478549 and 10.725509696418232 at the same orders
PINNED_EPS = [
    ((256 / 60000, 1.1, 7031, 1e-5), (1.7933392781827155, 10.6)),
    ((0.01, 1.0, 1000, 1e-5), (2.1013652716483957, 7.8)),
    ((0.2, 2.0, 100, 1e-5), (5.496204958476392, 4.5)),
    ((1.0, 5.0, 100, 1e-5), (10.725509696418232, 3.3)),
]


@pytest.mark.parametrize("args,expected", PINNED_EPS)
def test_pinned_epsilon(args, expected):
    eps, order = epsilon(*args)
    assert order == expected[1]
    assert eps == pytest.approx(expected[0], rel=1e-12)


def test_large_orders_stay_finite_and_sane():
    # far above the amplification regime RDP approaches the unsampled a / (2 sigma^2) plus
    # a log(q) / (a - 1)
    for a in (1000, 1000.5, 12345.5):
        r = rdp(0.3, 0.7, 1, [a])[0]
        assert r == pytest.approx(a / (2 * 0.49) + a * math.log(0.3) / (a - 1), rel=1e-6)
    assert np.isfinite(rdp(1e-9, 1e6, 1, [1.0001, 2, 500.5])).all()


def test_edge_order_warns():
    with pytest.warns(UserWarning, match="largest"):
        epsilon(0.001, 5.0, 1, 1e-5)           # wants orders above 63
    with pytest.warns(UserWarning, match="smallest"):
        epsilon(1.0, 0.5, 10000, 1e-5)          # wants orders below 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epsilon(0.01, 1.0, 1000, 1e-5)


def test_history_merges_consecutive_identical_settings():
    acc = RDPAccountant()
    acc.step(1.0, 0.01)
    acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=4)
    acc.step(1.0, 0.02)
    acc.step(1.0, 0.02, steps=0)               # nothing recorded
    acc.step(np.float64(1.0), np.float32(0.5))
    acc.step(1.0, 0.01)
    assert acc.history == [(1.0, 0.01, 5), (1.0, 0.02, 1), (1.0, 0.5, 1), (1.0, 0.01, 1)]
    assert all(type(x) is float for s, q, _ in acc.history for x in (s, q))
    assert acc.total_steps == 8


def test_state_dict_round_trips_through_json():
    acc = RDPAccountant()
    acc.step(1.1, 256 / 60000, 700)
    acc.step(0.9, 0.01, 3)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state == {"mechanism": "rdp",
                     "history": [[1.1, 256 / 60000, 700], [0.9, 0.01, 3]]}
    back = RDPAccountant()
    back.load_state_dict(state)
    assert back.history == acc.history
    assert back.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
    back.step(0.9, 0.01)                        # merges with the restored last entry
    assert back.history[-1] == (0.9, 0.01, 4)


@pytest.mark.parametrize("call,name", [
    (lambda: rdp(-0.1, 1.0, 1), "q"),
    (lambda: rdp(1.5, 1.0, 1), "q"),
    (lambda: rdp(float("nan"), 1.0, 1), "q"),
    (lambda: rdp("0.1", 1.0, 1), "q"),
    (lambda: rdp(0.1, -1.0, 1), "noise_multiplier"),
    (lambda: rdp(0.1, float("nan"), 1), "noise_multiplier"),
    (lambda: rdp(0.1, 1.0, -1), "steps"),
    (lambda: rdp(0.1, 1.0, 2.5), "steps"),
    (lambda: rdp(0.1, 1.0, True), "steps"),
    (lambda: rdp(0.1, 1.0, math.inf), "steps"),
    (lambda: rdp(0.1, 1.0, 1, [1.0, 2.0]), "orders"),
    (lambda: rdp(0.1, 1.0, 1, [0.5]), "orders"),
    (lambda: rdp(0.1, 1.0, 1, []), "orders"),
    (lambda: rdp(0.1, 1.0, 1, [2, math.inf]), "orders"),
    (lambda: rdp(0.1, 1.0, 1, "2"), "orders"),
    (lambda: epsilon(0.1, 1.0, 1, 0.0), "delta"),
    (lambda: epsilon(0.1, 1.0, 1, 1.0), "delta"),
    (lambda: epsilon(0.1, 1.0, 1, -1e-5), "delta"),
    (lambda: epsilon(0.1, 1.0, 1, None), "delta"),
    (lambda: epsilon(2.0, 1.0, 1, 1e-5), "q"),
    (lambda: epsilon_from_rdp([0.1, 0.2], 1e-5, [2, 3, 4]), "rdp_values"),
    (lambda: epsilon_from_rdp([-0.1], 1e-5, [2]), "rdp_values"),
    (lambda: RDPAccountant().step(-1.0, 0.1), "noise_multiplier"),
    (lambda: RDPAccountant().step(1.0, 1.1), "sample_rate"),
    (lambda: RDPAccountant().step(1.0, 0.1, steps=-3), "steps"),
    (lambda: RDPAccountant().get_epsilon(0), "delta"),
    (lambda: RDPAccountant().load_state_dict({"mechanism": "prv", "history": []}), "mechanism"),
    (lambda: RDPAccountant().load_state_dict({"mechanism": "rdp"}), "history"),
    (lambda: RDPAccountant().load_state_dict({"history": [[1.0, 0.1]]}), r"history\[0\]"),
    (lambda: RDPAccountant().load_state_dict({"history": [[1.0, 7, 3]]}),
     r"history\[0\] sample_rate"),
])
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=rf"(^|\W){name}(\W|$)"):
        call()
