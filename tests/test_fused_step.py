"""The fused training step: ``opt.train_step(mod, ...)``, ``mod.sgd_step`` and ``mod.adam_step``.

One call into the generated C computes the loss, the gradient and the update. It must agree with the
unfused path (``loss_and_grad`` + ``optim.X.step``) to rounding, keep the optimizer's state what
``state_dict`` reports, fall back to the unfused path whenever the update is not plain SGD / Adam,
and refuse bad arguments without touching the parameters.
"""
import numpy as np
import pytest

import gradc
from gradc import optim

MLP = """
import gradc as gc
m = gc.Model("fused_mlp")
x = m.input("x", 3)
y = m.target("y", dtype="int32")
W1, b1 = m.param("l1_W", (8, 3), init=gc.init.linear()), m.param("l1_b", 8, init=gc.init.linear(3))
W2, b2 = m.param("l2_W", (4, 8), init=gc.init.linear()), m.param("l2_b", 4, init=gc.init.linear(8))
h = gc.dropout(gc.tanh(W1 @ x + b1), 0.25, name="drop")
z = m.output("z", W2 @ h + b2)
m.loss(gc.softmax_cross_entropy(z, y))
"""

EMB = """
import sympy as sp
import gradc as gc
m = gc.Model("fused_mf")
u, i = m.input("u", dtype="int32"), m.input("i", dtype="int32")
r = m.target("r")
P = m.param("P", (7, 5), init=gc.init.normal(0, 0.3))
Q = m.param("Q", (9, 5), init=gc.init.normal(0, 0.3))
bu = m.param("bu", 7, init=0)
k = gc.index("k")
rh = m.output("rh", bu[u] + sp.Sum(P[u, k] * Q[i, k], (k, 0, 4)))
m.loss((r - rh) ** 2 + 0.01 * (gc.embedding(P, u) ** 2).sum())
"""

TOL = {"float64": 1e-12, "float32": 3e-5}


def _mlp_batch(rng, n, dtype):
    return {"x": rng.normal(size=(n, 3)).astype(dtype), "y": rng.integers(0, 4, n).astype(np.int32)}


def _emb_batch(rng, n, dtype):
    # repeated users and items: several samples of one block scatter into the same rows
    return {"u": rng.integers(0, 7, n).astype(np.int32), "i": rng.integers(0, 9, n).astype(np.int32),
            "r": rng.normal(size=n).astype(dtype)}


CASES = [(MLP, _mlp_batch, 37), (EMB, _emb_batch, 50)]


def _close(a, b, dtype, what):
    err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))
    assert err <= TOL[dtype], f"{what}: fused and unfused differ by {err:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("src,make,n", CASES, ids=["mlp-dropout", "embedding"])
@pytest.mark.parametrize("Opt,kw", [(optim.SGD, {"lr": 0.1}), (optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99)})],
                         ids=["sgd", "adam"])
def test_train_step_agrees_with_loss_and_grad_then_step(write_model, src, make, n, Opt, kw, dtype):
    mod = gradc.load(write_model(src), dtype=dtype)
    p1, p2 = mod.init_params(seed=3), mod.init_params(seed=3)
    o1, o2 = Opt(p1, **kw), Opt(p2, **kw)
    rng = np.random.default_rng(0)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)      # the same dropout masks
    for step in range(25):
        batch = make(rng, n, dtype)
        L1, g = mod.loss_and_grad(p1, dropout_rng=r1, **batch)
        o1.step(g)
        L2 = o2.train_step(mod, dropout_rng=r2, **batch)
        assert abs(L1 - L2) <= TOL[dtype] * max(1.0, abs(L1)), f"step {step}: loss {L1} against {L2}"
    assert o2._fused is not None, "the fused path was not taken"
    for k in p1:
        _close(p2[k], p1[k], dtype, f"parameter {k}")
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    for k in p1:
        assert s2[k]["step"] == s1[k]["step"] == 25
        for key in s1[k]:
            if key != "step":
                _close(s2[k][key], s1[k][key], dtype, f"state {k}.{key}")


def test_a_resumed_fused_adam_continues_as_the_unfused_one(write_model):
    mod = gradc.load(write_model(MLP))
    rng = np.random.default_rng(1)
    batches = [_mlp_batch(rng, 16, "float64") for _ in range(10)]
    p1 = mod.init_params(seed=0)
    o1 = optim.Adam(p1, lr=0.01)
    for b in batches:
        L, g = mod.loss_and_grad(p1, **b)
        o1.step(g)
    p2 = mod.init_params(seed=0)
    o2 = optim.Adam(p2, lr=0.01)
    for b in batches[:5]:
        o2.train_step(mod, **b)
    saved_p, saved = p2.copy(), o2.state_dict()
    p3 = mod.init_params(seed=9)
    p3.update(saved_p)
    o3 = optim.Adam(p3, lr=0.01)
    o3.load_state_dict(saved)
    for b in batches[5:]:
        o3.train_step(mod, **b)
    assert o3._fused is not None
    for k in p1:
        _close(p3[k], p1[k], "float64", f"parameter {k} after resuming")


@pytest.mark.parametrize("Opt,kw", [
    (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (optim.SGD, {"lr": 0.1, "weight_decay": 0.01}),
    (optim.SGD, {"lr": 0.1, "frozen": ["l1_b"]}),
    (optim.SGD, {"lr": 0.1, "options": {"l2_W": {"lr": 0.01}}}),
    (optim.Adam, {"lr": 0.01, "amsgrad": True}),
    (optim.AdamW, {"lr": 0.01}),
    (optim.RMSprop, {"lr": 0.01}),
], ids=["momentum", "weight-decay", "frozen", "per-parameter-lr", "amsgrad", "adamw", "rmsprop"])
def test_train_step_falls_back_to_the_exact_unfused_path(write_model, Opt, kw):
    mod = gradc.load(write_model(MLP))
    p1, p2 = mod.init_params(seed=2), mod.init_params(seed=2)
    o1, o2 = Opt(p1, **kw), Opt(p2, **kw)
    rng = np.random.default_rng(4)
    for _ in range(5):
        b = _mlp_batch(rng, 20, "float64")
        L, g = mod.loss_and_grad(p1, **b)
        o1.step(g)
        assert o2.train_step(mod, **b) == L
    assert o2._fused is None
    for k in p1:
        np.testing.assert_array_equal(p2[k], p1[k])


def test_a_scheduler_changing_lr_is_followed_by_the_fused_step(write_model):
    mod = gradc.load(write_model(MLP))
    p1, p2 = mod.init_params(seed=2), mod.init_params(seed=2)
    o1, o2 = optim.SGD(p1, lr=0.5), optim.SGD(p2, lr=0.5)
    s1, s2 = optim.lr_scheduler.StepLR(o1, 2, gamma=0.1), optim.lr_scheduler.StepLR(o2, 2, gamma=0.1)
    rng = np.random.default_rng(4)
    for _ in range(6):
        b = _mlp_batch(rng, 20, "float64")
        L, g = mod.loss_and_grad(p1, **b)
        o1.step(g)
        s1.step()
        o2.train_step(mod, **b)
        s2.step()
    for k in p1:
        _close(p2[k], p1[k], "float64", k)


def test_module_sgd_and_adam_steps(write_model):
    mod = gradc.load(write_model(EMB))
    rng = np.random.default_rng(0)
    b = _emb_batch(rng, 30, "float64")
    p, ref = mod.init_params(seed=1), mod.init_params(seed=1)
    L0, g = mod.loss_and_grad(ref, **b)
    assert mod.sgd_step(p, 0.2, **b) == L0
    for k in p:
        np.testing.assert_allclose(p[k], ref[k] - 0.2 * g[k], rtol=0, atol=1e-15)
    st = mod.adam_state()
    p, ref = mod.init_params(seed=1), mod.init_params(seed=1)
    opt = optim.Adam(ref, lr=0.05)
    for _ in range(3):
        L, g = mod.loss_and_grad(ref, **b)
        opt.step(g)
        assert mod.adam_step(p, st, lr=0.05, **b) == L
    assert st["step"] == 3
    for k in p:
        _close(p[k], ref[k], "float64", k)


def test_fused_steps_refuse_bad_arguments_and_leave_params_unchanged(write_model):
    mod = gradc.load(write_model(EMB))
    rng = np.random.default_rng(0)
    b = _emb_batch(rng, 40, "float64")
    p = mod.init_params(seed=1)
    before = p.flat.copy()
    with pytest.raises(ValueError, match="Params of this model"):
        mod.sgd_step(dict(p), 0.1, **b)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        mod.sgd_step(p, float("nan"), **b)
    bad = dict(b, u=b["u"].copy())
    bad["u"][33] = 7                                   # one past the last row of P
    with pytest.raises(ValueError, match=r"'u': sample 33 holds 7, outside 0..6"):
        mod.sgd_step(p, 0.1, **bad)
    st = mod.adam_state()
    with pytest.raises(ValueError, match=r"'u': sample 33"):
        mod.adam_step(p, st, **bad)
    assert st["step"] == 0
    with pytest.raises(ValueError, match="exp_avg"):
        mod.adam_step(p, {"step": 0, "exp_avg": np.zeros(3), "exp_avg_sq": st["exp_avg_sq"]}, **b)
    with pytest.raises(ValueError, match="betas"):
        mod.adam_step(p, st, betas=(1.5, 0.9), **b)
    opt = optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match=r"'u': sample 33"):
        opt.train_step(mod, **bad)
    np.testing.assert_array_equal(p.flat, before)
    # and a wrong index raises from the unfused fast path too, naming the argument
    with pytest.raises(ValueError, match=r"'u': sample 33"):
        mod.loss_and_grad(p, **bad)


@pytest.mark.parametrize("bad", ["0.1", True, float("nan"), float("inf"), -0.1, None, np.array([0.1, 0.1])],
                         ids=["str", "bool", "nan", "inf", "negative", "none", "array"])
def test_a_bad_learning_rate_in_opt_lr_is_refused_by_name_by_train_step(write_model, bad):
    """A rate written into ``opt.lr`` (by hand or by a scheduler) that is not a finite real number
    >= 0 is refused as ``opt.step`` refuses it, naming it, on the fused path too; nothing moves."""
    mod = gradc.load(write_model(MLP))
    rng = np.random.default_rng(4)
    b = _mlp_batch(rng, 20, "float64")
    for Opt in (optim.SGD, optim.Adam):
        p = mod.init_params(seed=2)
        opt = Opt(p, lr=0.1)
        opt.train_step(mod, **b)                 # fused
        assert opt._fused is not None
        before, st = p.flat.copy(), opt.state_dict()["state"]
        for k in opt.lr:
            opt.lr[k] = bad
        with pytest.raises(ValueError, match=r"opt\.lr\['l1_W'\] must be a finite number >= 0"):
            opt.train_step(mod, **b)
        np.testing.assert_array_equal(p.flat, before)
        assert opt.state_dict()["state"]["l1_W"]["step"] == st["l1_W"]["step"]


def test_equal_learning_rates_of_any_real_type_take_the_fused_step(write_model):
    """One rate for every parameter, whatever real type holds it (int, numpy float64), is one fused
    step with that rate; different rates are the unfused step."""
    mod = gradc.load(write_model(MLP))
    rng = np.random.default_rng(4)
    b = _mlp_batch(rng, 20, "float64")
    for rates in ([1, 1, 1, 1], [np.float64(0.5)] * 4, [0.5, np.float64(0.5), 0.5, 0.5]):
        p1, p2 = mod.init_params(seed=2), mod.init_params(seed=2)
        o1, o2 = optim.SGD(p1, lr=0.3), optim.SGD(p2, lr=0.3)
        for k, r in zip(o2.lr, rates):
            o2.lr[k] = r
        L = o2.train_step(mod, **b)
        assert o2._fused_lr(mod._compiled) == float(rates[0])
        assert mod.sgd_step(p1, float(rates[0]), **b) == L
        np.testing.assert_array_equal(p2.flat, p1.flat)
    o2.lr["l2_b"] = 0.25
    assert o2._fused_lr(mod._compiled) is None
