"""gradc.train: the training loop's promises.

Frozen parameters stay bit-identical; a resumed run repeats an uninterrupted
one exactly; dropout reproduces with its seed and is off in evaluation; early
stopping restores the best parameters; checkpoints are atomic and checked on
load; bad training input fails with a message naming the problem; metrics,
History files and augmentations do what their docs say.
"""
import csv
import json
import os

import numpy as np
import pytest

import gradc as gc
from gradc.optim.lr_scheduler import LambdaLR, StepLR
from gradc.train import Callback, EarlyStopping, GaussianNoise, History, Mixup, Trainer, load_checkpoint

P_DROP = 0.3


def _classifier(name, act):
    """A 4-8-3 classifier with dropout on the hidden layer (one compile per module)."""
    m = gc.Model(name)
    x, label = m.input("x", 4), m.target("label", dtype="int32")
    W1, b1 = m.param("W1", (8, 4), init=gc.init.linear()), m.param("b1", 8, init=gc.init.linear(4))
    W2, b2 = m.param("W2", (3, 8), init=gc.init.linear()), m.param("b2", 3, init=gc.init.linear(8))
    h = gc.dropout(act(W1 @ x + b1), P_DROP)
    logits = m.output("logits", W2 @ h + b2)
    m.loss(gc.softmax_cross_entropy(logits, label))
    return gc.compile_model(m)


@pytest.fixture(scope="module")
def mod():
    return _classifier("train_clf", gc.relu)


@pytest.fixture(scope="module")
def other_mod():
    """Same parameter names and shapes as ``mod``, another model (tanh): its checkpoints must not load."""
    return _classifier("train_clf_tanh", gc.tanh)


def _labels(X):
    return ((X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)).astype(np.int32)


def _data(n, seed):
    X = np.random.default_rng(seed).normal(size=(n, 4))
    return {"x": X, "label": _labels(X)}


TRAIN, VAL = _data(60, 0), _data(20, 1)


def _copy(p):
    return {k: v.copy() for k, v in p.items()}


def _bytes(p):
    return {k: v.tobytes() for k, v in p.items()}


def _same(p, q):
    return set(p) == set(q) and all(np.array_equal(p[k], q[k]) and p[k].dtype == q[k].dtype for k in p)


class Snapshots(Callback):
    """Records a copy of the parameters and the logs at each epoch's end."""

    def __init__(self):
        self.params, self.logs = {}, {}

    def on_epoch_end(self, trainer, epoch, logs):
        self.params[epoch] = _copy(trainer.params)
        self.logs[epoch] = dict(logs)


# ---- frozen parameters ------------------------------------------------------------

@pytest.mark.parametrize("optimizer,kw", [
    ("sgd", dict(lr=0.1, optimizer_options={"momentum": 0.9, "weight_decay": 0.1})),
    ("adam", dict(lr=0.05, optimizer_options={"weight_decay": 0.1})),
    ("adamw", dict(lr=0.05)),                               # decoupled decay 1e-2 by default
    ("rmsprop", dict(lr=0.01, optimizer_options={"momentum": 0.5, "weight_decay": 0.1})),
    ("adagrad", dict(lr=0.1, optimizer_options={"weight_decay": 0.1})),
])
def test_frozen_parameters_stay_bit_identical_while_the_others_change(mod, optimizer, kw):
    p = mod.init_params(seed=0)
    before = _bytes(p)
    t = Trainer(mod, p, optimizer=optimizer, frozen=["W1"], options={"b2": {"frozen": True}},
                batch_size=8, seed=0, transform=GaussianNoise(0.1, keys=["x"]), **kw)
    t.fit(TRAIN, epochs=3, val_data=VAL)
    assert sorted(t.optimizer.frozen) == ["W1", "b2"]
    for k in ("W1", "b2"):
        assert p[k].tobytes() == before[k], f"frozen {k} changed"
    for k in ("b1", "W2"):
        assert p[k].tobytes() != before[k], f"trainable {k} did not change"


def test_frozen_parameters_stay_bit_identical_across_a_resumed_run(mod, tmp_path):
    ck = str(tmp_path / "frozen.npz")
    p = mod.init_params(seed=0)
    w1 = p["W1"].tobytes()
    Trainer(mod, p, optimizer="adamw", lr=0.05, frozen=["W1"], seed=0).fit(TRAIN, epochs=2, checkpoint=ck)
    q = mod.init_params(seed=0)
    Trainer(mod, q, optimizer="adamw", lr=0.05, frozen=["W1"], seed=0).fit(TRAIN, epochs=4, resume=ck)
    assert p["W1"].tobytes() == q["W1"].tobytes() == w1
    assert q["W2"].tobytes() != p["W2"].tobytes()


# ---- exact resume -----------------------------------------------------------------

def _resumable_trainer(mod, optimizer, init_seed=0, callbacks=()):
    """Shuffling, dropout (in the model), Gaussian noise and a LR schedule, all live."""
    if optimizer == "sgd":
        kw = dict(optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9})
    else:
        kw = dict(optimizer="adam", lr=1e-2)
    return Trainer(mod, mod.init_params(seed=init_seed), batch_size=8, seed=7, shuffle=True,
                   transform=GaussianNoise(0.1, keys=["x"]), metrics=["loss", "accuracy"],
                   scheduler=lambda opt: StepLR(opt, step_size=2, gamma=0.5), callbacks=callbacks, **kw)


COMPARED = ("epoch", "loss", "val_loss", "val_accuracy", "lr")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resumed_run_repeats_the_uninterrupted_run_exactly(mod, tmp_path, optimizer):
    ck = str(tmp_path / "run.npz")
    straight = _resumable_trainer(mod, optimizer)
    h_straight = straight.fit(TRAIN, epochs=6, val_data=VAL)

    first = _resumable_trainer(mod, optimizer)
    h_first = first.fit(TRAIN, epochs=3, val_data=VAL, checkpoint=ck)
    assert h_first["loss"] == h_straight["loss"][:3]

    # a fresh Trainer, from other initial parameters: everything must come from the checkpoint
    resumed = _resumable_trainer(mod, optimizer, init_seed=123)
    h_resumed = resumed.fit(TRAIN, epochs=6, val_data=VAL, resume=ck)

    assert h_resumed["epoch"] == [0, 1, 2, 3, 4, 5]
    for k in COMPARED:
        assert h_resumed[k] == h_straight[k], k          # ==, not approx
    assert h_straight["lr"][0] != h_straight["lr"][-1]    # the schedule did move
    assert _same(resumed.params, straight.params)
    assert resumed.step_count == straight.step_count
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state


def test_resumed_run_with_a_per_step_schedule_and_val_split_repeats_exactly(mod, tmp_path):
    ck = str(tmp_path / "step.npz")

    def make(seed=0):
        return Trainer(mod, mod.init_params(seed), optimizer="adam", lr=0.02, batch_size=8, seed=3,
                       scheduler=lambda opt: LambdaLR(opt, lambda k: 1 / (1 + 0.1 * k)), scheduler_interval="step",
                       transform=GaussianNoise(0.05))
    a = make()
    h_a = a.fit(TRAIN, epochs=4, val_split=0.25)
    make().fit(TRAIN, epochs=2, val_split=0.25, checkpoint=ck)
    b = make(seed=9)
    h_b = b.fit(TRAIN, epochs=4, val_split=0.25, resume=ck)
    for k in ("loss", "val_loss", "lr"):
        assert h_b[k] == h_a[k], k
    assert _same(a.params, b.params)


def test_resumed_run_with_early_stopping_state_repeats_exactly(mod, tmp_path):
    ck = str(tmp_path / "es.npz")

    def make(seed=0):
        return Trainer(mod, mod.init_params(seed), optimizer="adam", lr=0.05, batch_size=8, seed=3)
    es_a = EarlyStopping("val_loss", patience=100)
    a = make()
    h_a = a.fit(TRAIN, epochs=6, val_data=VAL, early_stopping=es_a)
    make().fit(TRAIN, epochs=3, val_data=VAL, early_stopping=EarlyStopping("val_loss", patience=100), checkpoint=ck)
    es_b = EarlyStopping("val_loss", patience=100)
    b = make(seed=5)
    h_b = b.fit(TRAIN, epochs=6, val_data=VAL, early_stopping=es_b, resume=ck)
    assert h_b["val_loss"] == h_a["val_loss"]
    assert (es_b.best, es_b.best_epoch) == (es_a.best, es_a.best_epoch)
    assert _same(a.params, b.params)       # both restored the same best parameters


def test_gradc_fit_resumes_exactly_too(mod, tmp_path):
    ck = str(tmp_path / "fit.npz")
    kw = dict(optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9}, batch_size=8, seed=1,
              transform=GaussianNoise(0.1))
    p = mod.init_params(0)
    h = gc.fit(mod, p, TRAIN, epochs=4, **kw)
    q = mod.init_params(0)
    gc.fit(mod, q, TRAIN, epochs=2, checkpoint=ck, **kw)
    r = mod.init_params(1)
    h_r = gc.fit(mod, r, TRAIN, epochs=4, resume=ck, **kw)
    assert h_r["loss"] == h["loss"]
    assert _same(p, r)


# ---- dropout ----------------------------------------------------------------------

def _fit_losses(mod, seed):
    t = Trainer(mod, mod.init_params(0), optimizer="sgd", lr=0.1, batch_size=10, seed=seed, shuffle=False)
    return t.fit(TRAIN, epochs=3)["loss"], t.params


def test_dropout_with_the_same_seed_gives_the_same_losses_twice(mod):
    l1, p1 = _fit_losses(mod, seed=5)
    l2, p2 = _fit_losses(mod, seed=5)
    assert l1 == l2
    assert _same(p1, p2)


def test_dropout_with_a_different_seed_gives_different_losses(mod):
    # shuffle=False: the seed only reaches the dropout masks
    l1, _ = _fit_losses(mod, seed=5)
    l2, _ = _fit_losses(mod, seed=6)
    assert all(a != b for a, b in zip(l1, l2))


def _manual_logits(p, X):
    """The classifier with every dropout mask equal to 1."""
    return np.maximum(X @ p["W1"].T + p["b1"], 0.0) @ p["W2"].T + p["b2"]


def test_dropout_is_off_in_evaluation_forward_is_deterministic_and_equals_mask_one(mod):
    p = mod.init_params(seed=2)
    X = VAL["x"]
    out1, out2 = mod.forward(p, x=X)["logits"], mod.forward(p, x=X)["logits"]
    assert np.array_equal(out1, out2)
    np.testing.assert_allclose(out1, _manual_logits(p, X), rtol=1e-12, atol=1e-12)
    ones = mod.forward(p, x=X, dropout1=np.ones((len(X), 8)))["logits"]
    assert np.array_equal(out1, ones)
    # the loss and the Trainer's evaluation are deterministic too
    l1, l2 = mod.loss(p, **VAL), mod.loss(p, **VAL)
    assert l1 == l2
    t = Trainer(mod, p, metrics=["loss", "accuracy"])
    e1, e2 = t.evaluate(VAL), t.evaluate(VAL)
    assert e1 == e2
    assert e1["loss"] == pytest.approx(l1, rel=1e-12)
    assert np.array_equal(t.predict(VAL)["logits"], out1)


def test_dropout_in_training_drops_with_probability_p_and_scales_the_rest(mod):
    """The mask drawn from the rng: 0 with probability p, 1/(1-p) otherwise (inverted dropout)."""
    p = mod.init_params(seed=2)
    X = VAL["x"]
    drawn = mod.forward(p, dropout_rng=np.random.default_rng(11), x=X)["logits"]
    keep = 1.0 - P_DROP
    mask = (np.random.default_rng(11).random((len(X), 8)) < keep).astype(np.float64) / keep
    assert 0 < (mask == 0).sum() < mask.size
    assert np.array_equal(drawn, mod.forward(p, x=X, dropout1=mask)["logits"])
    assert not np.array_equal(drawn, mod.forward(p, x=X)["logits"])
    # loss_and_grad turns it on only with an rng
    L_train, _ = mod.loss_and_grad(p, dropout_rng=np.random.default_rng(0), **VAL)
    L_eval, _ = mod.loss_and_grad(p, **VAL)
    assert L_eval == pytest.approx(mod.loss(p, **VAL), rel=1e-12)    # two kernels: rounding may differ
    assert L_eval == mod.loss_and_grad(p, **VAL)[0]
    assert L_train != pytest.approx(L_eval, rel=1e-6)


# ---- early stopping ---------------------------------------------------------------

def test_early_stopping_stops_and_restores_the_best_parameters(mod):
    # random labels on 24 samples: the model memorizes them and the validation loss turns up
    rng = np.random.default_rng(3)
    noisy = {"x": rng.normal(size=(24, 4)), "label": rng.integers(0, 3, 24).astype(np.int32)}
    val = {"x": rng.normal(size=(24, 4)), "label": rng.integers(0, 3, 24).astype(np.int32)}
    snaps = Snapshots()
    p = mod.init_params(seed=0)
    es = EarlyStopping("val_loss", patience=3)
    t = Trainer(mod, p, optimizer="adam", lr=0.1, batch_size=8, seed=0, callbacks=[snaps])
    hist = t.fit(noisy, epochs=200, val_data=val, early_stopping=es)

    n = len(hist["epoch"])
    assert n < 200, "early stopping never stopped"
    best = int(np.argmin(hist["val_loss"]))
    assert es.best_epoch == best and es.best == hist["val_loss"][best]
    assert n == best + 1 + 3                                   # patience epochs without improvement
    assert best < n - 1                                        # the last epoch is not the best one
    assert _same(p, snaps.params[best])                        # the best epoch's parameters, bit for bit
    assert not _same(p, snaps.params[n - 1])
    assert t.evaluate(val)["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-12)


def test_early_stopping_in_max_mode_monitors_accuracy(mod):
    es = EarlyStopping("val_accuracy", patience=2)
    assert es.mode == "max"
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.05, metrics=["loss", "accuracy"])
    hist = t.fit(TRAIN, epochs=40, val_data=VAL, early_stopping=es)
    assert es.best == max(hist["val_accuracy"])
    assert hist["val_accuracy"].index(es.best) == es.best_epoch


def test_early_stopping_names_a_missing_monitor(mod):
    with pytest.raises(ValueError, match=r"'val_auc'.*loss"):
        Trainer(mod, mod.init_params(0)).fit(TRAIN, epochs=2, val_data=VAL,
                                             early_stopping=EarlyStopping("val_auc"))


# ---- checkpoints ------------------------------------------------------------------

class InterruptAt(Callback):
    """Ctrl-C in the middle of an epoch: KeyboardInterrupt from on_batch_end."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, trainer, step, logs):
        if trainer.epoch == self.epoch and logs["batch"] == self.batch:
            raise KeyboardInterrupt


def test_ctrl_c_in_epoch_3_leaves_epoch_2s_checkpoint_which_resumes_exactly(mod, tmp_path):
    ck = str(tmp_path / "ck.npz")
    snaps = Snapshots()
    t = _resumable_trainer(mod, "sgd", callbacks=[snaps, InterruptAt(epoch=2, batch=3)])
    with pytest.raises(KeyboardInterrupt):
        t.fit(TRAIN, epochs=6, val_data=VAL, checkpoint=ck)
    assert sorted(snaps.params) == [0, 1]
    assert not _same(t.params, snaps.params[1])                # epoch 3 had taken steps in memory
    assert os.listdir(tmp_path) == ["ck.npz"]                  # no temporary file left behind

    params, state = load_checkpoint(ck, mod)
    assert state["epoch"] == 2
    assert state["history"]["epoch"] == [0, 1]
    assert state["history"]["loss"] == [snaps.logs[0]["loss"], snaps.logs[1]["loss"]]
    assert _same(params, snaps.params[1])

    straight = _resumable_trainer(mod, "sgd")
    h_straight = straight.fit(TRAIN, epochs=6, val_data=VAL)
    resumed = _resumable_trainer(mod, "sgd", init_seed=4)
    h_resumed = resumed.fit(TRAIN, epochs=6, val_data=VAL, resume=ck)
    for k in COMPARED:
        assert h_resumed[k] == h_straight[k], k
    assert _same(resumed.params, straight.params)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_file(mod, tmp_path, monkeypatch):
    ck = str(tmp_path / "ck.npz")
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.01, seed=0)
    t.fit(TRAIN, epochs=2, checkpoint=ck)
    good = open(ck, "rb").read()
    saved = _copy(t.params)
    t.fit(TRAIN, epochs=3)                                     # move on, then crash mid-write

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(KeyboardInterrupt):
        t.save(ck)
    monkeypatch.undo()
    assert open(ck, "rb").read() == good
    assert os.listdir(tmp_path) == ["ck.npz"]
    params, state = load_checkpoint(ck, mod)
    assert state["epoch"] == 2 and _same(params, saved)


def _assert_restore_fails_and_leaves_everything(mod, path, match):
    t = Trainer(mod, mod.init_params(7), optimizer="adam", lr=0.01, seed=0)
    t.fit(TRAIN, epochs=1)
    before, opt_before = _bytes(t.params), t.optimizer.state_dict()
    epoch, rng_state = t.epoch, t.rng.bit_generator.state
    with pytest.raises(ValueError, match=match):
        t.restore(path)
    assert _bytes(t.params) == before
    assert t.epoch == epoch and t.rng.bit_generator.state == rng_state
    sd = t.optimizer.state_dict()
    assert sd["hyper"] == opt_before["hyper"]
    assert all(np.array_equal(sd["state"][k]["exp_avg"], opt_before["state"][k]["exp_avg"]) for k in sd["state"])
    with pytest.raises(ValueError, match=match):                   # fit(resume=) says the same
        Trainer(mod, mod.init_params(0)).fit(TRAIN, epochs=2, resume=path)


def test_a_garbage_checkpoint_gives_a_clear_value_error_and_leaves_params(mod, tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not a checkpoint\n" * 10)
    _assert_restore_fails_and_leaves_everything(mod, str(bad), r"garbage\.npz.*not a readable gradc checkpoint")


def test_a_missing_checkpoint_gives_a_clear_value_error(mod, tmp_path):
    _assert_restore_fails_and_leaves_everything(mod, str(tmp_path / "nope.npz"), r"nope\.npz")


def test_a_truncated_checkpoint_gives_a_clear_value_error_and_leaves_params(mod, tmp_path):
    ck = str(tmp_path / "full.npz")
    Trainer(mod, mod.init_params(0), optimizer="adam", seed=0).fit(TRAIN, epochs=1, checkpoint=ck)
    raw = open(ck, "rb").read()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[:len(raw) // 2])                       # e.g. a disk that filled up
    _assert_restore_fails_and_leaves_everything(mod, str(cut), r"cut\.npz.*not a readable gradc checkpoint")


def test_an_npz_that_is_not_a_checkpoint_gives_a_clear_value_error(mod, tmp_path):
    path = str(tmp_path / "data.npz")
    np.savez(path, **TRAIN)
    _assert_restore_fails_and_leaves_everything(mod, path, r"data\.npz.*not a gradc checkpoint")


def test_a_checkpoint_of_another_model_gives_a_clear_value_error_and_leaves_params(mod, other_mod, tmp_path):
    assert other_mod.param_shapes == mod.param_shapes             # only the model hash tells them apart
    ck = str(tmp_path / "other.npz")
    Trainer(other_mod, other_mod.init_params(0), optimizer="adam", lr=0.01, seed=0).fit(
        TRAIN, epochs=1, checkpoint=ck)
    _assert_restore_fails_and_leaves_everything(mod, ck, r"other\.npz.*another model")
    with pytest.raises(ValueError, match="another model"):
        load_checkpoint(ck, mod)
    params, state = load_checkpoint(ck, other_mod)               # its own model reads it
    assert state["epoch"] == 1


def test_a_checkpoint_of_another_optimizer_gives_a_clear_value_error_and_leaves_params(mod, tmp_path):
    ck = str(tmp_path / "sgd.npz")
    Trainer(mod, mod.init_params(0), optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9}).fit(
        TRAIN, epochs=1, checkpoint=ck)
    _assert_restore_fails_and_leaves_everything(mod, ck, r"Adam.*'momentum'")


def test_a_checkpoint_holds_parameters_state_and_version(mod, tmp_path):
    ck = str(tmp_path / "ck.npz")
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.01, seed=0)
    t.fit(TRAIN, epochs=2, checkpoint=ck)
    params, state = load_checkpoint(ck, mod)
    assert _same(params, t.params)
    assert state["epoch"] == 2 and state["step"] == t.step_count and state["seed"] == 0
    with np.load(ck, allow_pickle=False) as z:                  # readable without pickle
        assert z["gradc_version"].tobytes().decode() == gc.__version__


# ---- bad training input -----------------------------------------------------------

def _trainer(mod, **kw):
    return Trainer(mod, mod.init_params(0), **kw)


@pytest.mark.parametrize("data,match", [
    ({"x": TRAIN["x"][:, :3], "label": TRAIN["label"]},
     r"training data: 'x' has shape \(60, 3\), but the model expects \(N, 4\)"),
    ({"x": TRAIN["x"][:, :, None], "label": TRAIN["label"]}, r"'x' has shape \(60, 4, 1\)"),
    ({"x": TRAIN["x"], "label": TRAIN["label"][:, None]}, r"'label' has shape \(60, 1\), but the model expects \(N\)"),
    ({"x": TRAIN["x"][:50], "label": TRAIN["label"]}, r"'label' has 60 samples, others have 50"),
    ({"x": TRAIN["x"]}, r"training data lacks 'label'; the model needs x, label"),
    ({"label": TRAIN["label"]}, r"training data lacks 'x'"),
    ({**TRAIN, "z": TRAIN["x"]}, r"training data has unknown array 'z'"),
    ({"X": TRAIN["x"], "label": TRAIN["label"]}, r"lacks 'x'"),
    ({"x": TRAIN["x"][:0], "label": TRAIN["label"][:0]}, r"training data is empty"),
    ([TRAIN["x"], TRAIN["label"]], r"training data must be a dict"),
])
def test_bad_training_data_fails_before_training_naming_the_array(mod, data, match):
    t = _trainer(mod, optimizer="sgd", lr=0.1)
    before = _bytes(t.params)
    with pytest.raises(ValueError, match=match):
        t.fit(data, epochs=2)
    assert _bytes(t.params) == before and t.epoch == 0


def test_labels_out_of_range_are_reported_with_the_array_and_the_sample(mod):
    bad = dict(TRAIN, label=TRAIN["label"].copy())
    bad["label"][17] = 3
    t = _trainer(mod, optimizer="sgd", lr=0.1)
    before = _bytes(t.params)
    with pytest.raises(ValueError, match=r"training data: 'label': sample 17 holds 3, outside 0\.\.2"):
        t.fit(bad, epochs=1)
    bad["label"][17], bad["label"][4] = 1, -1
    with pytest.raises(ValueError, match=r"'label': sample 4 holds -1"):
        t.fit(bad, epochs=1)
    with pytest.raises(ValueError, match=r"validation data: 'label': sample 4 holds -1"):
        t.fit(TRAIN, epochs=1, val_data=bad)
    assert _bytes(t.params) == before


def test_nan_in_validation_data_is_reported_naming_the_array(mod):
    bad = {"x": VAL["x"].copy(), "label": VAL["label"]}
    bad["x"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"validation data.*'x'.*(NaN|sample 3)"):
        _trainer(mod).fit(TRAIN, epochs=1, val_data=bad)


def test_validation_data_is_checked_like_training_data(mod):
    with pytest.raises(ValueError, match=r"validation data: 'x' has shape \(20, 5\)"):
        _trainer(mod).fit(TRAIN, epochs=1, val_data={"x": np.zeros((20, 5)), "label": VAL["label"]})
    with pytest.raises(ValueError, match=r"validation data lacks 'label'"):
        _trainer(mod).fit(TRAIN, epochs=1, val_data={"x": VAL["x"]})


def _with_nan(row, col=2, value=np.nan):
    X = TRAIN["x"].copy()
    X[row, col] = value
    return {"x": X, "label": TRAIN["label"]}


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_in_a_batch_is_reported_with_the_batch_index(mod, value):
    t = _trainer(mod, optimizer="sgd", lr=0.1, batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=r"epoch 0, batch 3: 'x' holds NaN or Inf \(row 1 of the batch\).*nan='skip'"):
        t.fit(_with_nan(13, value=value), epochs=2)


def test_nan_skip_skips_and_counts_the_batch_and_equals_training_without_it(mod):
    t = _trainer(mod, optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9}, batch_size=4, shuffle=False,
                 nan="skip", seed=0)
    hist = t.fit(_with_nan(13), epochs=3)
    assert hist["skipped_batches"] == [1, 1, 1]
    assert all(np.isfinite(v).all() for v in t.params.values())
    # skipping batch 3 (rows 12..15) is training without those rows: same steps, same dropout draws
    keep = np.r_[0:12, 16:60]
    ref = _trainer(mod, optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9}, batch_size=4, shuffle=False,
                   seed=0)
    h_ref = ref.fit({k: v[keep] for k, v in TRAIN.items()}, epochs=3)
    assert hist["loss"] == h_ref["loss"]
    assert _same(t.params, ref.params)
    assert "skipped_batches" not in h_ref


def test_a_non_finite_loss_is_reported_with_the_batch_index(mod):
    # finite inputs, non-finite loss: with W1 = 1 a row of 1e308 overflows the hidden layer (lr=0 keeps W1)
    p = mod.init_params(0)
    p["W1"][...] = 1.0
    t = Trainer(mod, p, optimizer="sgd", lr=0.0, batch_size=4, shuffle=False)
    X = TRAIN["x"].copy()
    X[9] = 1e308
    with pytest.raises(ValueError, match=r"epoch 0, batch 2: the loss is (nan|inf).*nan='skip'"):
        t.fit({"x": X, "label": TRAIN["label"]}, epochs=1)
    t = Trainer(mod, p, optimizer="sgd", lr=0.0, batch_size=4, shuffle=False, nan="skip")
    hist = t.fit({"x": X, "label": TRAIN["label"]}, epochs=1)
    assert hist["skipped_batches"] == [1] and np.isfinite(hist["loss"][0])


def test_unknown_optimizer_name_is_named_with_the_choices(mod):
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'; choose one of "
                                         r"sgd, adam, adamw, rmsprop, adagrad"):
        _trainer(mod, optimizer="adamx")


@pytest.mark.parametrize("kw,match", [
    (dict(optimizer="adam", optimizer_options={"momentum": 0.9}), r"Adam: unknown option 'momentum'"),
    (dict(optimizer="sgd", optimizer_options={"betas": (0.9, 0.99)}), r"SGD: unknown option 'betas'"),
    (dict(optimizer="adam", options={"W1": {"bogus": 1}}), r"options\['W1'\]: unknown option 'bogus'"),
    (dict(optimizer="adam", options={"W9": {"lr": 0.1}}), r"options names unknown parameter 'W9'"),
    (dict(optimizer="adam", frozen=["W9"]), r"frozen names unknown parameter 'W9'"),
    (dict(optimizer="sgd", lr=-1.0), r"'lr' must be >= 0"),
])
def test_unknown_or_bad_optimizer_options_are_named(mod, kw, match):
    with pytest.raises(ValueError, match=match):
        _trainer(mod, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(metrics=["loss", "f1"]), r"unknown metric 'f1'"),
    (dict(nan="ignore"), r"nan must be 'raise' or 'skip'"),
    (dict(batch_size=0), r"batch_size must be at least 1"),
    (dict(scheduler_interval="batch"), r"scheduler_interval must be 'epoch' or 'step'"),
    (dict(output="probs"), r"unknown output 'probs'; the model has logits"),
    (dict(target="y"), r"unknown target 'y'; the model has label"),
])
def test_bad_trainer_settings_are_named(mod, kw, match):
    with pytest.raises(ValueError, match=match):
        _trainer(mod, **kw)


def test_params_of_another_model_are_refused(mod):
    p = mod.init_params(0)
    del p["b2"]
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        Trainer(mod, p)


# ---- metrics ----------------------------------------------------------------------

def test_accuracy_against_numpy_for_each_label_style():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 5)), rng.integers(0, 5, 200)
    assert gc.metrics.accuracy(logits, labels) == np.mean(np.argmax(logits, 1) == labels)
    onehot = np.eye(5)[labels]
    assert gc.metrics.accuracy(logits, onehot) == np.mean(np.argmax(logits, 1) == labels)
    score, pm = rng.normal(size=200), rng.choice([-1.0, 1.0], 200)
    assert gc.metrics.accuracy(score, pm) == np.mean(np.sign(score) == pm)
    prob, y01 = rng.random(200), rng.integers(0, 2, 200).astype(float)
    assert gc.metrics.accuracy(prob, y01) == np.mean((prob > 0.5) == (y01 == 1))
    with pytest.raises(ValueError, match="class labels"):
        gc.metrics.accuracy(score, rng.normal(size=200))


def test_accuracy_of_a_single_column_prediction_thresholds_it():
    rng = np.random.default_rng(0)
    prob, y01 = rng.random(200), rng.integers(0, 2, 200).astype(float)
    want = np.mean((prob > 0.5) == (y01 == 1))
    assert gc.metrics.accuracy(prob[:, None], y01) == want           # (N, 1) output, (N,) labels
    assert gc.metrics.accuracy(prob[:, None], y01[:, None]) == want  # (N, 1) output, (N, 1) labels


def test_rmse_and_mse_against_numpy():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert gc.metrics.mse(pred, target) == pytest.approx(np.mean((pred - target) ** 2), rel=1e-14)
    assert gc.metrics.rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), rel=1e-14)
    col, flat = rng.normal(size=(50, 1)), rng.normal(size=50)
    assert gc.metrics.rmse(col, flat) == pytest.approx(np.sqrt(np.mean((col[:, 0] - flat) ** 2)), rel=1e-14)
    assert gc.metrics.rmse(flat, flat) == 0.0


def _auc_by_pairs(score, y):
    pos, neg = score[y > 0], score[y <= 0]
    d = pos[:, None] - neg[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def test_roc_auc_against_all_pairs_with_ties():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.normal(size=300) + y, 1)              # rounding makes many ties
    assert len(np.unique(score)) < 300
    assert gc.metrics.roc_auc(score, y) == pytest.approx(_auc_by_pairs(score, y), abs=1e-12)
    assert gc.metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert gc.metrics.roc_auc(y.astype(float), y) == 1.0
    assert gc.metrics.roc_auc(-y.astype(float), y) == 0.0
    assert gc.metrics.roc_auc(np.zeros(300), y) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        gc.metrics.roc_auc(score, np.ones(300))


def test_roc_auc_agrees_with_scikit_learn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    score = np.round(rng.normal(size=500) + 0.7 * y, 2)
    assert gc.metrics.roc_auc(score, y) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)


def test_trainer_metrics_equal_numpy_on_the_model_outputs(mod):
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.02, metrics=["loss", "accuracy"])
    hist = t.fit(TRAIN, epochs=3, val_data=VAL)
    logits = _manual_logits(t.params, VAL["x"])
    assert hist["val_accuracy"][-1] == np.mean(np.argmax(logits, 1) == VAL["label"])
    shifted = logits - logits.max(1, keepdims=True)
    ce = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(logits)), VAL["label"]]
    assert hist["val_loss"][-1] == pytest.approx(ce.mean(), rel=1e-12)


def test_a_callable_metric_gets_outputs_and_data(mod):
    def top_logit(out, data):
        return float(np.mean(out["logits"].max(1)))
    t = Trainer(mod, mod.init_params(0), metrics=["loss", top_logit])
    logs = t.evaluate(VAL, prefix="val_")
    assert logs["val_top_logit"] == pytest.approx(np.mean(_manual_logits(t.params, VAL["x"]).max(1)), rel=1e-12)


# ---- History files ----------------------------------------------------------------

def _history():
    h = History()
    h.append({"epoch": 0, "loss": 1 / 3, "lr": 0.1, "seconds": 0.25})
    h.append({"epoch": 1, "loss": 0.1 + 0.2, "lr": 0.05, "seconds": 0.5, "skipped_batches": 2})
    h.append({"epoch": 2, "loss": 2.0 ** -40, "lr": 1e-300, "seconds": 0.125, "val_loss": 7.0})
    return h


def test_history_fills_keys_first_seen_later_with_none():
    h = _history()
    assert h["epoch"] == [0, 1, 2]
    assert h["skipped_batches"] == [None, 2, None]
    assert h["val_loss"] == [None, None, 7.0]


def test_history_json_round_trips_exactly(tmp_path):
    h = _history()
    h.to_json(tmp_path / "h.json")
    assert json.loads((tmp_path / "h.json").read_text()) == dict(h)


def test_history_csv_round_trips_exactly(tmp_path):
    h = _history()
    h.to_csv(tmp_path / "h.csv")
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "lr", "seconds", "skipped_batches", "val_loss"]
    back = {k: [None if r[j] == "" else float(r[j]) for r in rows[1:]] for j, k in enumerate(rows[0])}
    assert back == {k: [None if v is None else float(v) for v in h[k]] for k in h}


def test_a_training_history_round_trips_through_csv_and_json(mod, tmp_path):
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.01, metrics=["loss", "accuracy"], nan="skip",
                batch_size=4, shuffle=False)
    hist = t.fit(_with_nan(13), epochs=3, val_data=VAL)
    hist.to_json(tmp_path / "h.json")
    hist.to_csv(tmp_path / "h.csv")
    assert json.loads((tmp_path / "h.json").read_text()) == dict(hist)
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for k in hist:
        assert [float(r[k]) for r in rows] == [float(v) for v in hist[k]], k


# ---- augmentation -----------------------------------------------------------------

def _batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 4)), "y": np.eye(3)[rng.integers(0, 3, n)],
            "label": rng.integers(0, 3, n).astype(np.int32)}


def test_gaussian_noise_adds_normal_noise_to_real_inputs_as_documented():
    b = _batch()
    b = {"x": b["x"], "x2": b["y"], "label": b["label"]}       # two real inputs, int labels
    orig = {k: v.copy() for k, v in b.items()}
    out = GaussianNoise(0.1)(b, np.random.default_rng(5))
    rng = np.random.default_rng(5)                              # the documented draw, in batch order
    assert np.array_equal(out["x"], orig["x"] + rng.normal(0.0, 0.1, size=(64, 4)))
    assert np.array_equal(out["x2"], orig["x2"] + rng.normal(0.0, 0.1, size=(64, 3)))
    assert np.array_equal(out["label"], orig["label"])          # int arrays are left alone
    assert all(np.array_equal(b[k], orig[k]) for k in b)        # the input batch is not modified


@pytest.fixture(scope="module")
def reg():
    """A linear regression with a real target."""
    m = gc.Model("train_linreg")
    x, y = m.input("x", 2), m.target("y")
    w = m.param("w", (1, 2), init=0.5)
    pred = m.output("pred", (w @ x)[0])
    m.loss((pred - y) ** 2)
    return gc.compile_model(m)


def test_gaussian_noise_without_keys_leaves_real_targets_alone_in_training(reg):
    seen = []
    noise = GaussianNoise(0.5)

    def spy(batch, rng):
        out = noise(batch, rng)
        seen.append((batch["x"], out["x"], batch["y"], out["y"]))
        return out
    spy.bind = noise.bind          # the Trainer tells the transform which arrays are inputs
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 2))
    Trainer(reg, reg.init_params(0), optimizer="sgd", lr=0.01, batch_size=8, transform=spy).fit(
        {"x": X, "y": X @ np.array([1.0, -1.0])}, epochs=1)
    assert len(seen) == 4
    assert all(not np.array_equal(x, xn) for x, xn, _, _ in seen)     # the input is noised
    assert all(np.array_equal(y, yn) for _, _, y, yn in seen)         # the target is not


def test_gaussian_noise_has_the_given_std_and_respects_keys():
    b = {"x": np.zeros((20000, 4)), "y": np.zeros((20000, 3))}
    out = GaussianNoise(0.3, keys=["x"])(b, np.random.default_rng(0))
    assert np.std(out["x"]) == pytest.approx(0.3, rel=0.02)
    assert abs(np.mean(out["x"])) < 0.01
    assert np.array_equal(out["y"], b["y"])
    x32 = GaussianNoise(0.1)({"x": np.zeros((5, 4), np.float32)}, np.random.default_rng(0))["x"]
    assert x32.dtype == np.float32
    with pytest.raises(ValueError, match="GaussianNoise: no array 'z'"):
        GaussianNoise(0.1, keys=["z"])(b, np.random.default_rng(0))


def test_gaussian_noise_is_reproducible_with_the_same_seed():
    b = _batch()
    a1 = GaussianNoise(0.2)(b, np.random.default_rng(9))
    a2 = GaussianNoise(0.2)(b, np.random.default_rng(9))
    a3 = GaussianNoise(0.2)(b, np.random.default_rng(10))
    assert all(np.array_equal(a1[k], a2[k]) for k in b)
    assert not np.array_equal(a1["x"], a3["x"])


def test_mixup_mixes_pairs_with_a_beta_weight_as_documented():
    b = _batch()
    out = Mixup(0.4, keys=["x", "y"])(b, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    lam = rng.beta(0.4, 0.4)
    perm = rng.permutation(64)
    assert 0 < lam < 1
    for k in ("x", "y"):
        assert np.array_equal(out[k], lam * b[k] + (1 - lam) * b[k][perm])
    assert np.array_equal(out["label"], b["label"])             # keys not listed are left alone
    np.testing.assert_allclose(out["y"].sum(1), 1.0, rtol=1e-12)  # mixed one-hot rows stay distributions
    assert not np.array_equal(out["x"], b["x"])


def test_mixup_is_reproducible_with_the_same_seed_and_refuses_int_arrays():
    b = _batch()
    m1 = Mixup(0.2, keys=["x", "y"])(b, np.random.default_rng(1))
    m2 = Mixup(0.2, keys=["x", "y"])(b, np.random.default_rng(1))
    m3 = Mixup(0.2, keys=["x", "y"])(b, np.random.default_rng(2))
    assert all(np.array_equal(m1[k], m2[k]) for k in b)
    assert not np.array_equal(m1["x"], m3["x"])
    with pytest.raises(ValueError, match=r"Mixup: 'label' holds int32"):
        Mixup(0.2, keys=["x", "label"])(b, np.random.default_rng(0))


def test_augmented_training_is_reproducible_and_differs_from_plain_training(mod):
    def run(transform, seed=0):
        t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.02, batch_size=8, seed=seed, transform=transform)
        return t.fit(TRAIN, epochs=2)["loss"]
    noisy = run(GaussianNoise(0.2, keys=["x"]))
    assert noisy == run(GaussianNoise(0.2, keys=["x"]))
    assert noisy != run(None)


def test_progress_bar_reports_epochs_on_stderr_when_asked(reg, capsys):
    pytest.importorskip("tqdm")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 2))
    Trainer(reg, reg.init_params(0), optimizer="sgd", lr=0.01, batch_size=8, progress=True).fit(
        {"x": X, "y": X @ np.array([1.0, -1.0])}, epochs=3)
    err = capsys.readouterr().err
    assert "3/3" in err and "epoch" in err


def test_progress_bar_is_quiet_when_stderr_is_not_a_terminal(reg, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 2))
    Trainer(reg, reg.init_params(0), optimizer="sgd", lr=0.01, batch_size=8).fit(
        {"x": X, "y": X @ np.array([1.0, -1.0])}, epochs=2)
    assert capsys.readouterr().err == ""
