"""gradc.optim.LBFGS: the iterates of torch.optim.LBFGS, its line search, its checkpoints, and full-batch
training through ``fit`` and ``gradc train``.

Three compiled float64 models (logistic regression, a tanh MLP, a matrix factorization as in
examples/recsys) are each trained by gradc's LBFGS and by torch.optim.LBFGS on the same data from
the same start, with and without the strong-Wolfe line search, for several ``step`` calls with a
history shorter than the iterations: parameters, losses and evaluation counts must agree.
"""
import json

import numpy as np
import pytest

import gradc as gc
import gradc.optim as optim
from gradc.optim.lbfgs import cubic_interpolate, lbfgs, strong_wolfe, two_loop
from gradc.train import Trainer

N = 60
N_USERS, N_ITEMS, RANK = 12, 9, 3


# ---- three models, each with its torch twin (the loss is the batch mean) ----------------

def _logreg():
    m = gc.Model("lbfgs_logreg")
    x, y = m.input("x", 5), m.target("y")
    w, b = m.param("w", (1, 5), init=gc.init.normal(0, 0.5)), m.param("b", 1, init=0.1)
    z = m.output("z", (w @ x + b)[0])
    m.loss(gc.bce_with_logits(z, y) + 0.01 * (w * w).sum())
    return gc.compile_model(m)


def _logreg_torch(p, d):
    import torch
    z = d["x"] @ p["w"][0] + p["b"][0]
    return (torch.nn.functional.softplus(-z) * d["y"] + torch.nn.functional.softplus(z) * (1 - d["y"])
            + 0.01 * (p["w"] ** 2).sum()).mean()


def _mlp():
    m = gc.Model("lbfgs_mlp")
    x, label = m.input("x", 4), m.target("label", dtype="int32")
    W1, b1 = m.param("W1", (6, 4), init=gc.init.linear()), m.param("b1", 6, init=gc.init.linear(4))
    W2, b2 = m.param("W2", (3, 6), init=gc.init.linear()), m.param("b2", 3, init=gc.init.linear(6))
    logits = m.output("logits", W2 @ gc.tanh(W1 @ x + b1) + b2)
    m.loss(gc.softmax_cross_entropy(logits, label))
    return gc.compile_model(m)


def _mlp_torch(p, d):
    import torch
    h = torch.tanh(d["x"] @ p["W1"].T + p["b1"])
    return torch.nn.functional.cross_entropy(h @ p["W2"].T + p["b2"], d["label"].long())


def _mf():
    import sympy as sp
    m = gc.Model("lbfgs_mf")
    u, i = m.input("user", dtype="int32"), m.input("item", dtype="int32")
    r = m.target("rating")
    P = m.param("P", (N_USERS, RANK), init=gc.init.normal(0, 0.3))
    Q = m.param("Q", (N_ITEMS, RANK), init=gc.init.normal(0, 0.3))
    bu = m.param("bu", N_USERS)
    k = gc.index("k")
    r_hat = m.output("r_hat", bu[u] + sp.Sum(P[u, k] * Q[i, k], (k, 0, RANK - 1)))
    Pu, Qi = gc.embedding(P, u), gc.embedding(Q, i)
    m.loss((r - r_hat) ** 2 + 0.05 * ((Pu * Pu).sum() + (Qi * Qi).sum()))
    return gc.compile_model(m)


def _mf_torch(p, d):
    u, i = d["user"].long(), d["item"].long()
    Pu, Qi = p["P"][u], p["Q"][i]
    r_hat = p["bu"][u] + (Pu * Qi).sum(1)
    return ((d["rating"] - r_hat) ** 2 + 0.05 * ((Pu * Pu).sum(1) + (Qi * Qi).sum(1))).mean()


def _data(name, seed=0):
    rng = np.random.default_rng(seed)
    if name == "logreg":
        X = rng.normal(size=(N, 5))
        return {"x": X, "y": (X @ [1.0, -2.0, 0.5, 0.0, 1.0] + rng.normal(size=N) > 0).astype(np.float64)}
    if name == "mlp":
        X = rng.normal(size=(N, 4))
        return {"x": X, "label": (np.argmax(X[:, :3] + 0.3 * rng.normal(size=(N, 3)), 1)).astype(np.int32)}
    return {"user": rng.integers(0, N_USERS, N).astype(np.int32), "item": rng.integers(0, N_ITEMS, N).astype(np.int32),
            "rating": rng.normal(3.0, 1.0, N)}


MODELS = {"logreg": (_logreg, _logreg_torch), "mlp": (_mlp, _mlp_torch), "mf": (_mf, _mf_torch)}


@pytest.fixture(scope="module")
def mods():
    return {k: build() for k, (build, _) in MODELS.items()}


def _closure(mod, p, data):
    return lambda: mod.loss_and_grad(p, **data)


# ---- the same iterates as torch.optim.LBFGS -------------------------------------------

@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("model", list(MODELS))
def test_iterates_equal_torch_lbfgs_to_1e_10(mods, model, line_search_fn):
    torch = pytest.importorskip("torch")
    mod, twin = mods[model], MODELS[model][1]
    data = _data(model)
    p = mod.init_params(seed=1)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p.items()}
    td = {k: torch.tensor(v) for k, v in data.items()}
    kw = dict(lr=0.8 if line_search_fn is None else 1.0, max_iter=7, history_size=4,
              line_search_fn=line_search_fn, tolerance_change=1e-12)
    opt = optim.LBFGS(p, **kw)
    topt = torch.optim.LBFGS(list(tp.values()), **kw)

    def tclosure():
        topt.zero_grad()
        L = twin(tp, td)
        L.backward()
        return L

    # the models are the same function
    L0, _ = mod.loss_and_grad(p, **data)
    assert abs(L0 - float(twin(tp, td).detach())) < 1e-12
    for s in range(4):            # 4 steps x up to 7 iterations > history_size 4
        L = opt.step(_closure(mod, p, data))
        tL = float(topt.step(tclosure).detach())
        assert abs(L - tL) <= 1e-10 * max(1.0, abs(tL)), (s, L, tL)
        for k in p:
            np.testing.assert_allclose(p[k], tp[k].detach().numpy(), rtol=0, atol=1e-10, err_msg=f"step {s}, {k}")
        tst = topt.state[tp[next(iter(tp))]]
        assert (opt.state_dict()["lbfgs"]["n_iter"], opt.state_dict()["lbfgs"]["func_evals"]) == \
            (tst["n_iter"], tst["func_evals"])
    assert len(opt.state_dict()["lbfgs"]["old_dirs"]) == 4        # the history was cut to history_size
    L_end, _ = mod.loss_and_grad(p, **data)
    assert L_end < L0


def test_cubic_interpolate_equals_torchs():
    torch = pytest.importorskip("torch")
    from torch.optim.lbfgs import _cubic_interpolate
    rng = np.random.default_rng(0)
    for _ in range(200):
        x1, x2 = rng.normal(size=2)
        f1, g1, f2, g2 = rng.normal(size=4)
        b = tuple(sorted(rng.normal(size=2))) if rng.random() < 0.5 else None
        t = [torch.tensor(v, dtype=torch.float64) for v in (x1, f1, g1, x2, f2, g2)]
        want = float(_cubic_interpolate(*t, bounds=b))
        assert abs(cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=b) - want) <= 1e-12 * max(1, abs(want))


def test_strong_wolfe_returns_a_step_that_meets_both_conditions():
    A = np.diag([1.0, 10.0, 100.0])

    def fg(x):
        return 0.5 * x @ A @ x + np.sum(np.cos(x)), A @ x - np.sin(x)

    x = np.array([1.0, -2.0, 0.5])
    f, g = fg(x)
    d = -g
    gtd = g @ d
    f1, g1, t, n = strong_wolfe(lambda t: fg(x + t * d), 1.0, d, f, g, gtd)
    assert f1 <= f + 1e-4 * t * gtd and abs(g1 @ d) <= -0.9 * gtd
    assert 1 <= n <= 25 and np.allclose(fg(x + t * d)[0], f1)


def test_two_loop_with_no_history_is_the_scaled_negative_gradient():
    g = np.array([1.0, -2.0])
    np.testing.assert_array_equal(two_loop(g, [], [], [], 0.5), -0.5 * g)
    # with one pair the direction satisfies the secant equation H y = s
    s, y = np.array([0.3, 0.1]), np.array([0.5, 0.4])
    Hy = -two_loop(y, [y], [s], [1 / y.dot(s)], y.dot(s) / y.dot(y))
    np.testing.assert_allclose(Hy, s, rtol=1e-14)


def test_the_functional_core_equals_the_class_step_bit_for_bit(mods):
    mod, data = mods["mlp"], _data("mlp")
    p = mod.init_params(seed=2)
    q = {k: v.copy() for k, v in p.items()}
    opt = optim.LBFGS(p, history_size=3, max_iter=6, line_search_fn="strong_wolfe")
    x = np.concatenate([v.ravel() for v in q.values()])

    def evaluate(v):
        off = 0
        for a in q.values():
            a[...] = v[off:off + a.size].reshape(a.shape)
            off += a.size
        L, g = mod.loss_and_grad(q, **data)
        return L, np.concatenate([g[k].ravel() for k in q])

    st = {}
    for _ in range(3):
        assert opt.step(_closure(mod, p, data)) == lbfgs(evaluate, x, st, history_size=3, max_iter=6,
                                                         line_search_fn="strong_wolfe")
    assert x.tobytes() == np.concatenate([v.ravel() for v in p.values()]).tobytes()


# ---- checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_state_dict_round_trip_resumes_bit_exactly(mods, line_search_fn):
    mod, data = mods["mf"], _data("mf")
    kw = dict(max_iter=5, history_size=3, line_search_fn=line_search_fn)
    p = mod.init_params(seed=3)
    opt = optim.LBFGS(p, **kw)
    for _ in range(2):
        opt.step(_closure(mod, p, data))
    sd = opt.state_dict()
    q = {k: v.copy() for k, v in p.items()}
    for _ in range(3):
        opt.step(_closure(mod, p, data))
    sd["lbfgs"]["d"][0] += 0          # the saved copies are not the optimizer's live arrays
    opt2 = optim.LBFGS(q)             # other hyperparameters: the checkpoint's win
    opt2.load_state_dict(sd)
    assert opt2.defaults["history_size"] == 100 and opt2.hyper("P")["history_size"] == 3
    for _ in range(3):
        opt2.step(_closure(mod, q, data))
    for k in p:
        assert p[k].tobytes() == q[k].tobytes(), k


def test_a_damaged_state_is_refused_by_name_and_changes_nothing(mods):
    mod, data = mods["logreg"], _data("logreg")
    p = mod.init_params(seed=0)
    opt = optim.LBFGS(p, history_size=2, max_iter=6)
    opt.step(_closure(mod, p, data))
    sd = opt.state_dict()
    fresh = optim.LBFGS(mod.init_params(seed=0))
    bad = dict(sd, lbfgs=dict(sd["lbfgs"], d=np.zeros(3)))
    with pytest.raises(ValueError, match=r"'d' must be a float vector of the 6 trainable values"):
        fresh.load_state_dict(bad)
    bad = dict(sd, lbfgs=dict(sd["lbfgs"], ro=sd["lbfgs"]["ro"][:-1]))
    with pytest.raises(ValueError, match=r"'old_dirs', 'old_stps' and 'ro' must be lists of one length"):
        fresh.load_state_dict(bad)
    assert fresh.state_dict()["lbfgs"] == {} and fresh.hyper("w")["history_size"] == 100


def test_options_are_checked_and_per_parameter_options_refused(mods):
    p = mods["logreg"].init_params(seed=0)
    assert optim.LBFGS(p, max_iter=8).hyper("w")["max_eval"] == 10       # torch's max_iter * 5 // 4
    with pytest.raises(ValueError, match=r"'line_search_fn' must be None or 'strong_wolfe'"):
        optim.LBFGS(p, line_search_fn="backtracking")
    with pytest.raises(ValueError, match=r"'history_size' must be a whole number >= 1"):
        optim.LBFGS(p, history_size=0)
    with pytest.raises(ValueError, match=r"per-parameter option 'lr' is not supported"):
        optim.LBFGS(p, options={"w": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"LBFGS.step needs a closure"):
        optim.LBFGS(p).step({"w": np.zeros((1, 5)), "b": np.zeros(1)})


def test_frozen_parameters_stay_bit_identical(mods):
    mod, data = mods["mlp"], _data("mlp")
    p = mod.init_params(seed=0)
    w1 = p["W1"].tobytes()
    opt = optim.LBFGS(p, frozen=["W1"], line_search_fn="strong_wolfe")
    L0 = opt.step(_closure(mod, p, data))
    assert p["W1"].tobytes() == w1 and mod.loss_and_grad(p, **data)[0] < L0


# ---- full-batch training: fit and the command line ------------------------------------

def test_fit_with_lbfgs_reaches_a_low_loss_on_full_batches(mods):
    mod, data = mods["mlp"], _data("mlp")
    p = mod.init_params(seed=0)
    hist = gc.fit(mod, p, data, epochs=5, optimizer="lbfgs", optimizer_options={"line_search_fn": "strong_wolfe"},
                  metrics=["loss", "accuracy"], val_data=data)
    # the logged loss is the one at the start of each epoch's step (torch's step returns that one)
    assert hist["loss"][0] > 1.0 and hist["val_loss"][-1] < 1e-3 and hist["val_accuracy"][-1] == 1.0
    assert all(b <= a for a, b in zip(hist["loss"], hist["loss"][1:]))


def test_fit_with_lbfgs_refuses_a_batch_smaller_than_the_data(mods):
    mod, data = mods["logreg"], _data("logreg")
    with pytest.raises(ValueError, match=r"LBFGS trains on the full batch, but batch_size=16 is smaller than the "
                                         r"60 training samples; leave batch_size out"):
        gc.fit(mod, mod.init_params(seed=0), data, epochs=1, optimizer="lbfgs", batch_size=16)
    gc.fit(mod, mod.init_params(seed=0), data, epochs=1, optimizer="lbfgs", batch_size=N)


def test_fit_with_lbfgs_resumes_from_a_checkpoint_bit_exactly(mods, tmp_path):
    mod, data = mods["mf"], _data("mf")
    ck = str(tmp_path / "ck.npz")
    kw = dict(optimizer="lbfgs", optimizer_options={"history_size": 4, "max_iter": 5}, seed=0)
    p = mod.init_params(seed=0)
    Trainer(mod, p, **kw).fit(data, epochs=4)
    q = mod.init_params(seed=0)
    Trainer(mod, q, **kw).fit(data, epochs=2, checkpoint=ck)
    Trainer(mod, q, **kw).fit(data, epochs=4, resume=ck)
    for k in p:
        assert p[k].tobytes() == q[k].tobytes(), k


CLI_MODEL = '''
import gradc as gc

m = gc.Model("cli_lbfgs")
x, y = m.input("x", 3), m.target("y")
w, b = m.param("w", (1, 3), init=gc.init.uniform(-1, 1)), m.param("b", 1, init=0.5)
pred = m.output("pred", (w @ x + b)[0])
m.loss((pred - y) ** 2)
'''


def test_cli_train_with_lbfgs_fits_a_tiny_data_set(write_model, run_cli, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    np.savez(tmp_path / "tiny.npz", x=X, y=X @ [1.5, -2.0, 0.5] - 0.3)
    out = tmp_path / "run"
    r = run_cli("train", write_model(CLI_MODEL), "--data", str(tmp_path / "tiny.npz"), "-o", str(out),
                "--epochs", "3", "--optimizer", "lbfgs", "--quiet")
    assert r.returncode == 0, r.stderr
    loss = json.loads((out / "history.json").read_text())["loss"]
    assert loss[0] > 1.0 and loss[-1] < 1e-8            # least squares: solved within the first step
