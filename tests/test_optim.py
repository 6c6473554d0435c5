"""gradc.optim: optimizers and schedulers against PyTorch's documented algorithms.

Every optimizer configuration runs 200 steps on a small deterministic problem
and is compared with (a) an independent reference written here from the
formulas in torch.optim's documentation, and (b) torch.optim itself when
torch is installed (foreach=False, float64). Schedulers likewise against
closed-form formulas and torch.optim.lr_scheduler.
"""
import math
import warnings

import numpy as np
import pytest

import gradc.optim as optim
from gradc.optim import lr_scheduler as sch

STEPS = 200
SHAPES = {"W": (3, 4), "b": (4,), "s": ()}
COEF = {"W": 1.0, "b": 0.5, "s": 2.0}


def init_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {k: np.asarray(rng.standard_normal(shape), dtype=dtype) for k, shape in SHAPES.items()}


TARGET = init_params(seed=1)


def grad_fn(p, sign=1.0):
    """Gradient of sum(c/2 (p-t)^2 - 0.1 cos 2p): strongly convex, so rounding differences do not grow.

    ``sign=-1`` gives the gradient of the negated objective, for maximize=True runs.
    """
    return {k: np.asarray(sign * (COEF[k] * (p[k] - TARGET[k].astype(p[k].dtype)) + 0.2 * np.sin(2 * p[k])),
                          dtype=p[k].dtype) for k in p}


# ---- reference implementations, from the formulas in torch.optim's docs -------------

REF_DEFAULTS = {
    "SGD": dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                    maximize=False),
}


def ref_sgd(theta, grad, st, t, h):
    g = -grad if h["maximize"] else grad
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * theta
    if h["momentum"] != 0:
        if t > 1:
            st["b"] = h["momentum"] * st["b"] + (1 - h["dampening"]) * g
        else:
            st["b"] = g
        g = g + h["momentum"] * st["b"] if h["nesterov"] else st["b"]
    return theta - h["lr"] * g


def ref_adam(theta, grad, st, t, h, decoupled=False):
    b1, b2 = h["betas"]
    g = -grad if h["maximize"] else grad
    if decoupled:
        theta = theta - h["lr"] * h["weight_decay"] * theta
    elif h["weight_decay"] != 0:
        g = g + h["weight_decay"] * theta
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g ** 2
    m_hat = st["m"] / (1 - b1 ** t)
    if h["amsgrad"]:
        st["vmax"] = np.maximum(st.get("vmax", 0.0), st["v"])
        v_hat = st["vmax"] / (1 - b2 ** t)
    else:
        v_hat = st["v"] / (1 - b2 ** t)
    return theta - h["lr"] * m_hat / (np.sqrt(v_hat) + h["eps"])


def ref_rmsprop(theta, grad, st, t, h):
    a = h["alpha"]
    g = -grad if h["maximize"] else grad
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * theta
    st["v"] = a * st.get("v", 0.0) + (1 - a) * g ** 2
    v_tilde = st["v"]
    if h["centered"]:
        st["g_ave"] = st.get("g_ave", 0.0) * a + (1 - a) * g
        v_tilde = v_tilde - st["g_ave"] ** 2
    if h["momentum"] > 0:
        st["b"] = h["momentum"] * st.get("b", 0.0) + g / (np.sqrt(v_tilde) + h["eps"])
        return theta - h["lr"] * st["b"]
    return theta - h["lr"] * g / (np.sqrt(v_tilde) + h["eps"])


def ref_adagrad(theta, grad, st, t, h):
    g = -grad if h["maximize"] else grad
    clr = h["lr"] / (1 + (t - 1) * h["lr_decay"])
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * theta
    st["sum"] = st.get("sum", h["initial_accumulator_value"]) + g ** 2
    return theta - clr * g / (np.sqrt(st["sum"]) + h["eps"])


REF = {"SGD": ref_sgd, "Adam": ref_adam, "AdamW": lambda *a: ref_adam(*a, decoupled=True),
       "RMSprop": ref_rmsprop, "Adagrad": ref_adagrad}


# ---- configurations -----------------------------------------------------------------

CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.5)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.05, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, maximize=True)),
    ("Adam", dict(lr=0.01, betas=(0.3, 0.4), eps=0.1)),   # beta < 0.5: torch.lerp's other branch
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=0.01, betas=(0.45, 0.6), eps=0.1, weight_decay=0.3)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.005, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, alpha=0.3, centered=True, eps=1e-4)),
    ("RMSprop", dict(lr=0.005, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.05, initial_accumulator_value=0.1, eps=1e-6,
                     maximize=True)),
    # per-parameter options
    ("SGD", dict(lr=0.05, momentum=0.9, options={"W": {"lr": 0.02, "nesterov": True}, "s": {"momentum": 0.0}})),
    ("Adam", dict(lr=0.01, options={"W": {"lr": 1e-3, "weight_decay": 0.1}, "b": {"amsgrad": True}})),
    ("AdamW", dict(lr=0.01, options={"b": {"weight_decay": 0.0, "betas": (0.8, 0.99)}})),
    ("RMSprop", dict(lr=0.01, options={"W": {"centered": True, "momentum": 0.5}})),
    ("Adagrad", dict(lr=0.1, options={"s": {"lr_decay": 0.1, "lr": 0.3}})),
]
IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items() if k != "options")
       + ("-options" if "options" in kw else "") for n, kw in CONFIGS]


def sign_of(kw):
    # maximize runs ascend the negated objective: the same contractive trajectory, so
    # comparisons stay at rounding level instead of diverging
    return -1.0 if kw.get("maximize") else 1.0


def run_mine(name, kw, steps=STEPS, dtype=np.float64):
    p = init_params(dtype)
    opt = getattr(optim, name)(p, **kw)
    for _ in range(steps):
        opt.step(grad_fn(p, sign_of(kw)))
    return p, opt


def run_ref(name, kw, steps=STEPS):
    p = init_params()
    base = dict(REF_DEFAULTS[name])
    base.update({k: v for k, v in kw.items() if k != "options"})
    hyper = {k: {**base, **kw.get("options", {}).get(k, {})} for k in p}
    state = {k: {} for k in p}
    for t in range(1, steps + 1):
        g = grad_fn(p, sign_of(kw))
        p = {k: REF[name](p[k], g[k], state[k], t, hyper[k]) for k in p}
    return p


def run_torch(torch, name, kw, steps=STEPS, dtype=np.float64):
    tp = {k: torch.tensor(v) for k, v in init_params(dtype).items()}
    base = {k: v for k, v in kw.items() if k != "options"}
    groups = [{"params": [t], **kw.get("options", {}).get(k, {})} for k, t in tp.items()]
    topt = getattr(torch.optim, name)(groups, foreach=False, **base)
    for _ in range(steps):
        g = grad_fn({k: t.numpy() for k, t in tp.items()}, sign_of(kw))
        for k, t in tp.items():
            t.grad = torch.from_numpy(np.array(g[k]))
        topt.step()
    return {k: t.numpy() for k, t in tp.items()}


def assert_close(a, b, atol=1e-12):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_matches_documented_algorithm(name, kw):
    p, _ = run_mine(name, kw)
    ref = run_ref(name, kw)
    assert_close(p, ref)
    moved = max(float(np.max(np.abs(p[k] - init_params()[k]))) for k in p)
    assert moved > 1e-2    # the run does something


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    p, _ = run_mine(name, kw)
    assert_close(p, run_torch(torch, name, kw))


@pytest.mark.parametrize("name,kw", [c for c in CONFIGS if "options" not in c[1]][::2])
def test_float32_stays_float32(name, kw):
    p, opt = run_mine(name, kw, steps=30, dtype=np.float32)
    for k in p:
        assert p[k].dtype == np.float32
        for s, v in opt.state(k).items():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32, (k, s)
    p64, _ = run_mine(name, kw, steps=30)
    assert_close(p, p64, atol=1e-4)
    try:
        import torch
    except ImportError:
        return
    assert_close(p, run_torch(torch, name, kw, steps=30, dtype=np.float32), atol=2e-5)


def test_maximize_of_negated_objective_is_bit_identical_to_minimize():
    for name, kw in CONFIGS:
        if not kw.get("maximize"):
            continue
        p_max, _ = run_mine(name, kw, steps=50)
        p_min = init_params()
        opt = getattr(optim, name)(p_min, **{**kw, "maximize": False})
        for _ in range(50):
            opt.step(grad_fn(p_min))
        for k in p_max:
            assert np.array_equal(p_max[k], p_min[k]), (name, kw, k)


def test_sgd_momentum_buffer_is_a_copy_of_the_first_grad_and_grads_are_not_modified():
    p = init_params()
    opt = optim.SGD(p, lr=0.1, momentum=0.9)
    g = grad_fn(p)
    g_copy = {k: v.copy() for k, v in g.items()}
    opt.step(g)
    for k in p:
        assert np.array_equal(g[k], g_copy[k])
        buf = opt.state(k)["momentum_buffer"]
        assert np.array_equal(buf, g_copy[k]) and not np.shares_memory(buf, g[k])
    g[k][...] = 123.0     # reusing the gradient buffer must not touch the optimizer's state
    assert np.array_equal(opt.state(k)["momentum_buffer"], g_copy[k])
    for name, kw in CONFIGS:
        p = init_params()
        o = getattr(optim, name)(p, **kw)
        for _ in range(3):
            g = grad_fn(p, sign_of(kw))
            gc = {k: v.copy() for k, v in g.items()}
            o.step(g)
            assert all(np.array_equal(g[k], gc[k]) for k in g), name


# ---- in place, frozen, per-parameter ------------------------------------------------

def test_updates_in_place_the_callers_arrays():
    p = init_params()
    ids = {k: id(v) for k, v in p.items()}
    opt = optim.Adam(p, lr=0.1)
    before = {k: v.copy() for k, v in p.items()}
    opt.step(grad_fn(p))
    for k in p:
        assert id(p[k]) == ids[k] and opt.params[k] is p[k]
        assert not np.array_equal(p[k], before[k])


@pytest.mark.parametrize("name", list(REF_DEFAULTS))
def test_frozen_parameters_are_bit_identical_and_stateless(name):
    kw = {"SGD": dict(lr=0.05, momentum=0.9), "Adagrad": dict(lr=0.1)}.get(name, dict(lr=0.01))
    for frozen_kw in (dict(frozen=["b"]), dict(options={"b": {"frozen": True, "lr": 5.0}}), dict(frozen="b")):
        p = init_params()
        b0 = p["b"].copy()
        opt = getattr(optim, name)(p, weight_decay=0.1, **kw, **frozen_kw)
        assert opt.frozen == ["b"] and opt.trainable == ["W", "s"]
        assert "b" not in opt.lr and opt.hyper("b")["frozen"] is True
        for i in range(STEPS):
            g = grad_fn(p)
            if i % 2:
                del g["b"]    # a frozen parameter's gradient may be missing
            opt.step(g)
        assert p["b"].tobytes() == b0.tobytes()
        assert opt.state("b") == {} and "b" not in opt.state_dict()["state"]
        # the others train exactly as without the frozen one
        q = {k: v for k, v in init_params().items() if k != "b"}
        o2 = getattr(optim, name)(q, weight_decay=0.1, **kw)
        for _ in range(STEPS):
            o2.step(grad_fn(q))
        assert np.array_equal(p["W"], q["W"]) and np.array_equal(p["s"], q["s"])


def test_per_parameter_lr_and_hyper():
    p = init_params()
    opt = optim.Adam(p, lr=1e-3, options={"W": {"lr": 1e-4, "weight_decay": 0.0}, "s": {"amsgrad": True}},
                     frozen=["b"])
    assert opt.lr == {"W": 1e-4, "s": 1e-3}
    assert opt.hyper("W") == dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                                  maximize=False, frozen=False)
    assert opt.hyper("s")["amsgrad"] is True and "max_exp_avg_sq" not in opt.state("W")
    opt.step(grad_fn(p))
    assert "max_exp_avg_sq" in opt.state("s") and "max_exp_avg_sq" not in opt.state("W")
    # changing opt.lr changes the next step (what schedulers do)
    q = init_params()
    o1, o2 = optim.SGD(q, lr=0.1), optim.SGD(init_params(), lr=0.1)
    o1.lr["W"] = 0.0
    o1.step(grad_fn(q))
    assert np.array_equal(q["W"], init_params()["W"]) and not np.array_equal(q["b"], init_params()["b"])
    o1.lr["W"] = 0.5
    assert o1.hyper("W")["lr"] == 0.5
    h = o2.hyper("W")
    h["lr"] = 9.0
    assert o2.lr["W"] == 0.1     # hyper() is a copy


# ---- state_dict ---------------------------------------------------------------------

ROUNDTRIP = [c for c in CONFIGS if any(k in c[1] for k in ("momentum", "amsgrad", "centered", "lr_decay",
                                                           "options", "weight_decay"))]


def _train(opt, p, n, sign=1.0, sched=None):
    for _ in range(n):
        opt.step(grad_fn(p, sign))
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("name,kw", ROUNDTRIP)
def test_state_dict_round_trip_continues_bit_identically(name, kw):
    cls, sign = getattr(optim, name), sign_of(kw)
    p_ref = init_params()
    _train(cls(p_ref, **kw), p_ref, 100, sign)

    p = init_params()
    opt = cls(p, **kw)
    _train(opt, p, 50, sign)
    sd = opt.state_dict()
    _train(opt, p, 5, sign)            # the saved dict is a copy: later steps do not change it
    for k, st in sd["state"].items():
        assert st["step"] == 50
        for v in st.values():
            assert isinstance(v, (np.ndarray, int))
    for h in sd["hyper"].values():
        for v in h.values():
            assert isinstance(v, (float, bool, tuple)) and not isinstance(v, np.generic)

    p2 = {k: v.copy() for k, v in init_params().items()}
    _train(cls(p2, **kw), p2, 50, sign)  # the parameters at step 50
    fresh = cls(p2, lr=0.123) if name != "SGD" else cls(p2, lr=0.123, momentum=0.5)
    fresh.load_state_dict(sd)
    _train(fresh, p2, 50, sign)
    for k in p_ref:
        assert p2[k].tobytes() == p_ref[k].tobytes(), k
    assert fresh.lr == cls(init_params(), **kw).lr


def test_state_dict_round_trip_with_a_scheduler():
    kw = dict(lr=0.01, weight_decay=0.1, options={"W": {"lr": 0.003}})
    p_ref = init_params()
    o = optim.AdamW(p_ref, **kw)
    _train(o, p_ref, 100, sched=sch.warmup(o, 30, after=sch.CosineAnnealingLR(o, T_max=70)))

    for cut in (10, 30, 60):
        p = init_params()
        o = optim.AdamW(p, **kw)
        s = sch.warmup(o, 30, after=sch.CosineAnnealingLR(o, T_max=70))
        _train(o, p, cut, sched=s)
        osd, ssd = o.state_dict(), s.state_dict()
        o2 = optim.AdamW(p, **kw)
        s2 = sch.warmup(o2, 30, after=sch.CosineAnnealingLR(o2, T_max=70))
        o2.load_state_dict(osd)
        s2.load_state_dict(ssd)
        assert s2.get_last_lr() == s.get_last_lr() and s2.last_epoch == cut
        _train(o2, p, 100 - cut, sched=s2)
        for k in p:
            assert p[k].tobytes() == p_ref[k].tobytes(), (cut, k)


def test_load_state_dict_validates_and_changes_nothing_on_error():
    p = init_params()
    opt = optim.Adam(p, lr=0.01, amsgrad=True)
    opt.step(grad_fn(p))
    good = opt.state_dict()

    def bad(edit, match):
        sd = opt.state_dict()
        edit(sd)
        o = optim.Adam(init_params(), lr=0.5)
        before = o.state_dict()
        with pytest.raises(ValueError, match=match):
            o.load_state_dict(sd)
        after = o.state_dict()
        assert after["hyper"] == before["hyper"] and after["state"] == {} and o.lr["W"] == 0.5

    bad(lambda sd: sd["hyper"].pop("W"), "no entry for parameter 'W'")
    bad(lambda sd: sd["hyper"].__setitem__("Z", sd["hyper"]["W"]), "unknown parameter 'Z'")
    bad(lambda sd: sd["state"]["b"].__setitem__("exp_avg", np.zeros(5)), r"state\['b'\].*shape \(5,\)")
    bad(lambda sd: sd["state"]["W"].pop("max_exp_avg_sq"), "missing state entry 'max_exp_avg_sq'")
    bad(lambda sd: sd["state"]["W"].__setitem__("momentum_buffer", np.zeros((3, 4))), "unexpected state entry")
    bad(lambda sd: sd["hyper"]["W"].__setitem__("lr", -1.0), r"hyper\['W'\].*'lr' must be >= 0")
    bad(lambda sd: sd["hyper"]["W"].__setitem__("momentum", 0.9), "unknown option 'momentum'")
    bad(lambda sd: sd["hyper"]["s"].pop("eps"), "missing option 'eps'")
    bad(lambda sd: sd["state"]["s"].__setitem__("step", 0), "'step' must be an int >= 1")
    bad(lambda sd: sd.__setitem__("extra", 1), "unexpected key 'extra'")
    sgd = optim.SGD(init_params(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="unknown option"):
        sgd.load_state_dict(good)
    optim.Adam(init_params()).load_state_dict(good)     # the good one loads
    with pytest.raises(ValueError, match="expected a dict"):
        opt.load_state_dict([1, 2])


# ---- clip_grad_norm -----------------------------------------------------------------

def test_clip_grad_norm():
    g = {k: np.asarray(3 * v) for k, v in init_params().items()}
    flat = np.concatenate([v.ravel() for v in g.values()])
    want = float(np.sqrt(np.sum(flat ** 2)))
    ids = {k: id(v) for k, v in g.items()}
    orig = {k: v.copy() for k, v in g.items()}
    total = optim.clip_grad_norm(g, 1.0)
    assert isinstance(total, float) and total == pytest.approx(want, rel=1e-14)
    coef = 1.0 / (want + 1e-6)
    for k in g:
        assert id(g[k]) == ids[k]
        np.testing.assert_allclose(g[k], orig[k] * coef, rtol=1e-14)
    new = float(np.sqrt(sum(np.sum(v ** 2) for v in g.values())))
    assert new == pytest.approx(1.0, rel=1e-5)
    # below the threshold nothing changes, bit for bit
    before = {k: v.copy() for k, v in g.items()}
    assert optim.clip_grad_norm(g, 10.0) == pytest.approx(new, rel=1e-14)
    assert all(g[k].tobytes() == before[k].tobytes() for k in g)
    # other norms
    g = {k: v.copy() for k, v in orig.items()}
    assert optim.clip_grad_norm(g, 1e9, norm_type="inf") == float(np.max(np.abs(flat)))
    assert optim.clip_grad_norm(g, 1e9, norm_type=1) == pytest.approx(float(np.sum(np.abs(flat))), rel=1e-14)
    assert optim.clip_grad_norm(g, 1e9, norm_type=3.0) == pytest.approx(
        float(np.sum(np.abs(flat) ** 3) ** (1 / 3)), rel=1e-13)
    assert optim.clip_grad_norm({}, 1.0) == 0.0
    assert optim.clip_grad_norm_ is optim.clip_grad_norm
    # float32 stays float32
    g32 = {k: v.astype(np.float32) for k, v in orig.items()}
    optim.clip_grad_norm(g32, 0.5)
    assert all(v.dtype == np.float32 for v in g32.values())
    # non-finite
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm({"a": np.array([1.0, np.inf])}, 1.0, error_if_nonfinite=True)
    for bad, match in [((orig, -1.0), "max_norm"), ((orig, 1.0, 0), "norm_type"), (({"a": [1.0]}, 1.0), "'a'"),
                       (({"a": np.arange(3)}, 1.0), "'a'")]:
        with pytest.raises(ValueError, match=match):
            optim.clip_grad_norm(*bad)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    for norm_type, max_norm in [(2.0, 1.0), (2.0, 1e6), (1.0, 2.0), (math.inf, 0.5), (3.0, 0.7)]:
        g = {k: np.asarray(3 * v) for k, v in init_params().items()}
        tp = []
        for v in g.values():
            t = torch.zeros(v.shape, dtype=torch.float64, requires_grad=True)
            t.grad = torch.from_numpy(v.copy())
            tp.append(t)
        tt = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type=norm_type, foreach=False)
        total = optim.clip_grad_norm(g, max_norm, norm_type=norm_type)
        assert total == pytest.approx(float(tt), rel=1e-14)
        for v, t in zip(g.values(), tp):
            np.testing.assert_allclose(v, t.grad.numpy(), rtol=1e-14, atol=0)


# ---- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda p: optim.Adam(p, momentum=0.9), "Adam: unknown option 'momentum'"),
    (lambda p: optim.SGD(p, lr=-0.1), "SGD: option 'lr' must be >= 0"),
    (lambda p: optim.SGD(p, lr="fast"), "SGD: option 'lr' must be a real number"),
    (lambda p: optim.SGD(p, lr=float("nan")), "SGD: option 'lr' must be finite"),
    (lambda p: optim.SGD(p, nesterov=True), "SGD: option 'nesterov' requires momentum > 0 and dampening == 0"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda p: optim.SGD(p, nesterov=1), "SGD: option 'nesterov' must be True or False"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), r"Adam: option 'betas\[0\]' must be < 1.0"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), r"Adam: option 'betas\[1\]' must be >= 0.0"),
    (lambda p: optim.AdamW(p, betas=0.9), "AdamW: option 'betas' must be a pair"),
    (lambda p: optim.Adam(p, eps=-1e-8), "Adam: option 'eps'"),
    (lambda p: optim.AdamW(p, weight_decay=-0.01), "AdamW: option 'weight_decay'"),
    (lambda p: optim.RMSprop(p, alpha=-0.5), "RMSprop: option 'alpha'"),
    (lambda p: optim.RMSprop(p, momentum=-0.5), "RMSprop: option 'momentum'"),
    (lambda p: optim.Adagrad(p, lr_decay=-1), "Adagrad: option 'lr_decay'"),
    (lambda p: optim.Adagrad(p, initial_accumulator_value=-1), "Adagrad: option 'initial_accumulator_value'"),
    (lambda p: optim.Adagrad(p, foreach=False), "Adagrad: unknown option 'foreach'"),
    (lambda p: optim.Adam(p, options={"W": {"momentum": 0.9}}), r"Adam: options\['W'\]: unknown option 'momentum'"),
    (lambda p: optim.Adam(p, options={"W": {"lr": -1}}), r"Adam: options\['W'\]: option 'lr' must be >= 0"),
    (lambda p: optim.Adam(p, options={"Q": {"lr": 1}}), "Adam: options names unknown parameter 'Q'"),
    (lambda p: optim.Adam(p, options={"W": 0.1}), r"options\['W'\] must be a dict"),
    (lambda p: optim.Adam(p, frozen=["Q"]), "Adam: frozen names unknown parameter 'Q'"),
    (lambda p: optim.SGD(p, options={"W": {"nesterov": True}}), r"SGD: options\['W'\]: option 'nesterov'"),
    (lambda p: optim.Adam({**p, "i": np.arange(3)}), "parameter 'i' must have a floating dtype"),
    (lambda p: optim.Adam({**p, "f": 1.5}), "parameter 'f' must be a numpy array"),
    (lambda p: optim.Adam({}), "empty"),
    (lambda p: optim.Adam([1.0]), "params must be a dict"),
])
def test_constructor_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(init_params())


def test_step_errors_name_the_parameter_and_change_nothing():
    p = init_params()
    opt = optim.Adam(p, lr=0.1, frozen=["s"])
    before = {k: v.copy() for k, v in p.items()}
    g = grad_fn(p)
    for grads, match in [
        ({k: v for k, v in g.items() if k != "W"}, "Adam.step: missing gradient for parameter 'W'"),
        ({**g, "b": np.zeros(5)}, r"Adam.step: gradient for 'b' has shape \(5,\), but the parameter has shape \(4,\)"),
        ({**g, "extra": np.zeros(1)}, "Adam.step: gradient for unknown parameter 'extra'"),
        ({**g, "b": np.array(["x"] * 4)}, "Adam.step: gradient for 'b' must be real numbers"),
        ([1, 2], "grads must be a dict"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.step(grads)
    opt.lr["W"] = -1.0
    with pytest.raises(ValueError, match=r"opt.lr\['W'\] must be a finite number >= 0"):
        opt.step(g)
    for k in p:
        assert np.array_equal(p[k], before[k])
    assert opt.state("W") == {}
    with pytest.raises(ValueError, match="unknown parameter 'Q'"):
        opt.hyper("Q")


# ---- schedulers ---------------------------------------------------------------------

LR0 = {"W": 0.1, "b": 0.05, "s": 0.3}


def sgd_with_lrs():
    return optim.SGD(init_params(), lr=LR0["W"], options={"b": {"lr": LR0["b"]}, "s": {"lr": LR0["s"]}})


def cos_ref(b, e, T, eta_min=0.0):
    return eta_min + (b - eta_min) * (1 + math.cos(math.pi * e / T)) / 2


def lin_ref(b, e, s, f, n):
    return b * (s + (f - s) * min(e, n) / n)


SCHEDULES = {
    "StepLR": (lambda o: sch.StepLR(o, step_size=7, gamma=0.5),
               lambda t: sch_t(t).StepLR(t.o, step_size=7, gamma=0.5),
               lambda b, e: b * 0.5 ** (e // 7)),
    "MultiStepLR": (lambda o: sch.MultiStepLR(o, milestones=[120, 10, 50, 50], gamma=0.3),
                    lambda t: sch_t(t).MultiStepLR(t.o, milestones=[120, 10, 50, 50], gamma=0.3),
                    lambda b, e: b * 0.3 ** sum(m <= e for m in [10, 50, 50, 120])),
    "ExponentialLR": (lambda o: sch.ExponentialLR(o, gamma=0.98),
                      lambda t: sch_t(t).ExponentialLR(t.o, gamma=0.98),
                      lambda b, e: b * 0.98 ** e),
    "CosineAnnealingLR": (lambda o: sch.CosineAnnealingLR(o, T_max=60, eta_min=1e-3),
                          lambda t: sch_t(t).CosineAnnealingLR(t.o, T_max=60, eta_min=1e-3),
                          lambda b, e: cos_ref(b, e, 60, 1e-3)),
    "CosineAnnealingLR-default": (lambda o: sch.CosineAnnealingLR(o, T_max=200),
                                  lambda t: sch_t(t).CosineAnnealingLR(t.o, T_max=200),
                                  lambda b, e: cos_ref(b, e, 200)),
    "LinearLR": (lambda o: sch.LinearLR(o, start_factor=0.25, end_factor=0.9, total_iters=40),
                 lambda t: sch_t(t).LinearLR(t.o, start_factor=0.25, end_factor=0.9, total_iters=40),
                 lambda b, e: lin_ref(b, e, 0.25, 0.9, 40)),
    "LinearLR-default": (lambda o: sch.LinearLR(o), lambda t: sch_t(t).LinearLR(t.o),
                         lambda b, e: lin_ref(b, e, 1 / 3, 1.0, 5)),
    "LambdaLR": (lambda o: sch.LambdaLR(o, lambda e: 1 / (1 + 0.1 * e)),
                 lambda t: sch_t(t).LambdaLR(t.o, lambda e: 1 / (1 + 0.1 * e)),
                 lambda b, e: b / (1 + 0.1 * e)),
    "SequentialLR-warmup-cosine": (
        lambda o: sch.SequentialLR(o, [sch.LinearLR(o, start_factor=0.1, total_iters=10),
                                       sch.CosineAnnealingLR(o, T_max=100)], milestones=[10]),
        lambda t: sch_t(t).SequentialLR(t.o, [sch_t(t).LinearLR(t.o, start_factor=0.1, total_iters=10),
                                              sch_t(t).CosineAnnealingLR(t.o, T_max=100)], milestones=[10]),
        lambda b, e: lin_ref(b, e, 0.1, 1.0, 10) if e < 10 else cos_ref(b, e - 10, 100)),
    "SequentialLR-three": (
        lambda o: sch.SequentialLR(o, [sch.LinearLR(o, start_factor=0.5, total_iters=20),
                                       sch.ExponentialLR(o, gamma=0.97),
                                       sch.StepLR(o, step_size=30, gamma=0.5)], milestones=[10, 60]),
        lambda t: sch_t(t).SequentialLR(t.o, [sch_t(t).LinearLR(t.o, start_factor=0.5, total_iters=20),
                                              sch_t(t).ExponentialLR(t.o, gamma=0.97),
                                              sch_t(t).StepLR(t.o, step_size=30, gamma=0.5)], milestones=[10, 60]),
        lambda b, e: (lin_ref(b, e, 0.5, 1.0, 20) if e < 10 else
                      b * 0.97 ** (e - 10) if e < 60 else b * 0.5 ** ((e - 60) // 30))),
    "warmup-cosine": (
        lambda o: sch.warmup(o, 20, after=sch.CosineAnnealingLR(o, T_max=180)),
        lambda t: sch_t(t).SequentialLR(t.o, [sch_t(t).LinearLR(t.o, start_factor=1 / 21, total_iters=20),
                                              sch_t(t).CosineAnnealingLR(t.o, T_max=180)], milestones=[20]),
        lambda b, e: b * (e + 1) / 21 if e < 20 else cos_ref(b, e - 20, 180)),
    "warmup-only": (
        lambda o: sch.warmup(o, 20, start_factor=0.2),
        lambda t: sch_t(t).SequentialLR(t.o, [sch_t(t).LinearLR(t.o, start_factor=0.2, total_iters=20)],
                                        milestones=[]),
        lambda b, e: lin_ref(b, e, 0.2, 1.0, 20)),
}


def sch_t(t):
    return t.torch.optim.lr_scheduler


def run_schedule(make, steps=STEPS):
    opt = sgd_with_lrs()
    s = make(opt)
    lrs = [dict(opt.lr)]
    assert s.get_last_lr() == opt.lr and s.last_epoch == 0
    for _ in range(steps):
        s.step()
        assert s.get_last_lr() == opt.lr
        lrs.append(dict(opt.lr))
    assert s.last_epoch == steps
    return lrs


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_scheduler_matches_formula(name):
    make, _, formula = SCHEDULES[name]
    for e, lrs in enumerate(run_schedule(make)):
        for k, b in LR0.items():
            assert lrs[k] == pytest.approx(formula(b, e), rel=1e-12, abs=1e-15), (e, k)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_scheduler_matches_torch_exactly(name):
    torch = pytest.importorskip("torch")
    _, make_t, _ = SCHEDULES[name]

    class T:
        pass
    t = T()
    t.torch = torch
    ps = [torch.zeros(2, requires_grad=True) for _ in LR0]
    t.o = torch.optim.SGD([{"params": [q], "lr": lr} for q, lr in zip(ps, LR0.values())], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = make_t(t)
        want = [ts.get_last_lr()]
        for _ in range(STEPS):
            t.o.step()
            ts.step()
            want.append(ts.get_last_lr())
    got = run_schedule(SCHEDULES[name][0])
    for e, (g, w) in enumerate(zip(got, want)):
        assert list(g.values()) == [float(x) for x in w], e


def test_scheduler_basics():
    opt = sgd_with_lrs()
    s = sch.LinearLR(opt, start_factor=0.5, total_iters=4)
    assert opt.lr == {k: v * 0.5 for k, v in LR0.items()}      # construction applies epoch 0
    assert s.base_lrs == LR0 and s.last_epoch == 0
    last = s.get_last_lr()
    last["W"] = 99.0
    assert s.get_last_lr()["W"] == 0.05                          # a copy
    # chainable: two schedulers on one optimizer compose, and the second starts from initial_lr
    opt = sgd_with_lrs()
    a = sch.ExponentialLR(opt, gamma=0.5)
    b = sch.StepLR(opt, step_size=2, gamma=0.1)
    assert b.base_lrs == LR0
    for _ in range(4):
        a.step()
        b.step()
    assert opt.lr["W"] == pytest.approx(0.1 * 0.5 ** 4 * 0.1 ** 2, rel=1e-14)
    # frozen parameters are not scheduled
    opt = optim.Adam(init_params(), lr=0.1, frozen=["b"])
    s = sch.StepLR(opt, 1, gamma=0.5)
    s.step()
    assert set(s.get_last_lr()) == {"W", "s"} and opt.hyper("b")["lr"] == 0.1
    # the optimizer uses the scheduled lr: SGD's step is exactly lr * g
    p = init_params()
    opt = optim.SGD(p, lr=0.1)
    s = sch.LambdaLR(opt, {"W": lambda e: 0.0, "b": lambda e: 1.0, "s": lambda e: e})
    assert opt.lr == {"W": 0.0, "b": 0.1, "s": 0.0}
    w0 = p["W"].copy()
    opt.step(grad_fn(p))
    assert np.array_equal(p["W"], w0)


def test_scheduler_state_dict_round_trip():
    for name, (make, _, _) in SCHEDULES.items():
        ref = run_schedule(make, steps=120)
        opt = sgd_with_lrs()
        s = make(opt)
        for _ in range(45):
            s.step()
        sd, osd = s.state_dict(), opt.state_dict()
        opt2 = sgd_with_lrs()
        s2 = make(opt2)
        opt2.load_state_dict(osd)
        s2.load_state_dict(sd)
        assert s2.last_epoch == 45 and s2.get_last_lr() == ref[45]
        got = []
        for _ in range(75):
            s2.step()
            got.append(dict(opt2.lr))
        assert got == ref[46:], name


def test_scheduler_errors():
    opt = sgd_with_lrs()
    for call, match in [
        (lambda: sch.StepLR(opt, step_size=0), "StepLR: option 'step_size' must be >= 1"),
        (lambda: sch.StepLR(opt, step_size=2.5), "StepLR: option 'step_size' must be an int"),
        (lambda: sch.ExponentialLR(opt, gamma="x"), "ExponentialLR: option 'gamma'"),
        (lambda: sch.LinearLR(opt, start_factor=0.0), "LinearLR: option 'start_factor'"),
        (lambda: sch.LinearLR(opt, end_factor=1.5), "LinearLR: option 'end_factor'"),
        (lambda: sch.CosineAnnealingLR(opt, T_max=0), "CosineAnnealingLR: option 'T_max'"),
        (lambda: sch.MultiStepLR(opt, milestones=5), "MultiStepLR: option 'milestones'"),
        (lambda: sch.LambdaLR(opt, {"W": lambda e: 1}), "LambdaLR: lr_lambda has no function for parameter 'b'"),
        (lambda: sch.LambdaLR(opt, 3), "LambdaLR: option 'lr_lambda'"),
        (lambda: sch.StepLR(object(), 3), "StepLR: expected a gradc.optim optimizer"),
        (lambda: sch.SequentialLR(opt, [], []), "at least one scheduler"),
        (lambda: sch.SequentialLR(opt, [sch.StepLR(opt, 3), sch.StepLR(opt, 4)], [5, 6]), "one milestone fewer"),
        (lambda: sch.SequentialLR(opt, [sch.StepLR(sgd_with_lrs(), 3)], []), "belongs to another optimizer"),
        (lambda: sch.warmup(opt, 0), "warmup: option 'warmup_steps' must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    s = sch.StepLR(opt, 3)
    sd = s.state_dict()
    for edit, match in [(lambda d: d.pop("gamma"), "missing key 'gamma'"),
                        (lambda d: d.__setitem__("x", 1), "unexpected key 'x'"),
                        (lambda d: d["base_lrs"].pop("W"), "no entry for parameter 'W'"),
                        (lambda d: d.__setitem__("step_size", 0), "'step_size' must be >= 1")]:
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in sd.items()}
        edit(d)
        with pytest.raises(ValueError, match=match):
            s.load_state_dict(d)
    assert s.state_dict() == sd


def test_training_with_schedule_matches_torch():
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.02, weight_decay=0.05, amsgrad=True)
    p = init_params()
    opt = optim.AdamW(p, **kw, options={"W": {"lr": 0.01}})
    s = sch.warmup(opt, 20, after=sch.CosineAnnealingLR(opt, T_max=180, eta_min=1e-4))
    tp = {k: torch.tensor(v) for k, v in init_params().items()}
    topt = torch.optim.AdamW([{"params": [t], "lr": 0.01 if k == "W" else 0.02} for k, t in tp.items()],
                             foreach=False, **{k: v for k, v in kw.items() if k != "lr"})
    L = torch.optim.lr_scheduler
    ts = L.SequentialLR(topt, [L.LinearLR(topt, start_factor=1 / 21, total_iters=20),
                               L.CosineAnnealingLR(topt, T_max=180, eta_min=1e-4)], milestones=[20])
    for _ in range(STEPS):
        opt.step(grad_fn(p))
        s.step()
        g = grad_fn({k: t.numpy() for k, t in tp.items()})
        for k, t in tp.items():
            t.grad = torch.from_numpy(np.array(g[k]))
        topt.step()
        ts.step()
        assert list(s.get_last_lr().values()) == ts.get_last_lr()
    assert_close(p, {k: t.numpy() for k, t in tp.items()})
