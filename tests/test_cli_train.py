"""``gradc train MODEL.py --data DATA.npz``: outputs, resume, freeze, init, and one-line errors."""
import csv
import json

import numpy as np
import pytest

import gradc
from gradc.train import load_checkpoint

MODEL = '''
import gradc as gc

m = gc.Model("cli_linreg")
x, y = m.input("x", 3), m.target("y")
w, b = m.param("w", (1, 3), init=gc.init.uniform(-1, 1)), m.param("b", 1, init=0.5)
pred = m.output("pred", (w @ x + b)[0])
m.loss((pred - y) ** 2)
'''

TRUE_W, TRUE_B = np.array([1.5, -2.0, 0.5]), -0.3


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return {"x": X, "y": X @ TRUE_W + TRUE_B + 0.01 * rng.normal(size=n)}


@pytest.fixture
def setup(write_model, tmp_path):
    model = write_model(MODEL)
    data = tmp_path / "data.npz"
    np.savez(data, **_data())
    return model, str(data)


def _train(run_cli, model, data, out, *extra, epochs=4):
    r = run_cli("train", model, "--data", data, "-o", str(out), "--epochs", str(epochs), "--batch-size", "16",
                "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--seed", "3", *extra)
    return r


def _ok(r):
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def _history(out):
    return json.loads((out / "history.json").read_text())


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gradc: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_train_exits_0_and_writes_checkpoint_and_history_csv_and_json(setup, run_cli, tmp_path):
    model, data = setup
    out = tmp_path / "run"
    r = _ok(_train(run_cli, model, data, out, "--metrics", "loss,rmse", "--val-split", "0.25"))
    assert r.stdout.count("epoch ") >= 4 and "trained 4 epochs" in r.stdout
    for f in ("checkpoint.npz", "history.csv", "history.json"):
        assert (out / f).is_file(), f
    hist = _history(out)
    assert hist["epoch"] == [0, 1, 2, 3]
    assert hist["loss"][-1] < hist["loss"][0]
    assert len(hist["val_rmse"]) == 4
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == hist["loss"]
    params, state = load_checkpoint(str(out / "checkpoint.npz"), gradc.load(model))
    assert state["epoch"] == 4 and set(params) == {"w", "b"}


def test_train_quiet_prints_no_epoch_lines(setup, run_cli, tmp_path):
    model, data = setup
    r = _ok(_train(run_cli, model, data, tmp_path / "q", "--quiet", epochs=2))
    assert "epoch " not in r.stdout and "trained 2 epochs" in r.stdout


def test_resume_continues_with_the_history_of_an_uninterrupted_run(setup, run_cli, tmp_path):
    model, data = setup
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    _ok(_train(run_cli, model, data, straight, "--quiet", epochs=6))
    _ok(_train(run_cli, model, data, first, "--quiet", epochs=3))
    _ok(_train(run_cli, model, data, resumed, "--quiet", "--resume", str(first / "checkpoint.npz"), epochs=6))
    h_straight, h_resumed = _history(straight), _history(resumed)
    assert h_resumed["epoch"] == list(range(6))
    for k in ("epoch", "loss", "lr"):
        assert h_resumed[k] == h_straight[k], k                   # exactly
    mod = gradc.load(model)
    p_straight, _ = load_checkpoint(str(straight / "checkpoint.npz"), mod)
    p_resumed, _ = load_checkpoint(str(resumed / "checkpoint.npz"), mod)
    assert all(np.array_equal(p_straight[k], p_resumed[k]) for k in p_straight)


def test_freeze_keeps_a_parameter_fixed(setup, run_cli, tmp_path):
    model, data = setup
    out = tmp_path / "frozen"
    _ok(_train(run_cli, model, data, out, "--quiet", "--freeze", "w"))
    mod = gradc.load(model)
    init = mod.init_params(seed=3)
    params, _ = load_checkpoint(str(out / "checkpoint.npz"), mod)
    assert params["w"].tobytes() == init["w"].tobytes()
    assert params["b"].tobytes() != init["b"].tobytes()


def test_init_starts_from_pretrained_parameters(setup, run_cli, tmp_path):
    model, data = setup
    pre, tuned = tmp_path / "pre", tmp_path / "tuned"
    _ok(_train(run_cli, model, data, pre, "--quiet", epochs=8))
    h_pre = _history(pre)
    # lr 0: the run neither moves nor starts from its own init, so its loss is the pretrained loss
    _ok(run_cli("train", model, "--data", data, "-o", str(tuned), "--epochs", "1", "--optimizer", "sgd",
                "--lr", "0", "--seed", "3", "--quiet", "--init", str(pre / "checkpoint.npz")))
    mod = gradc.load(model)
    p_pre, _ = load_checkpoint(str(pre / "checkpoint.npz"), mod)
    p_tuned, st = load_checkpoint(str(tuned / "checkpoint.npz"), mod)
    assert all(np.array_equal(p_pre[k], p_tuned[k]) for k in p_pre)
    assert st["epoch"] == 1                                       # a new run, not a resumed one
    d = _data()
    assert _history(tuned)["loss"][0] == pytest.approx(mod.loss(p_pre, **d), rel=1e-9)
    assert _history(tuned)["loss"][0] < h_pre["loss"][0] / 10


def test_init_from_another_models_checkpoint_exits_2_with_one_line(setup, write_model, run_cli, tmp_path):
    model, data = setup
    other = write_model(MODEL.replace("cli_linreg", "cli_other").replace("** 2", "** 2 + 0.1 * b[0] ** 2"),
                        name="other.py")
    _ok(_train(run_cli, other, data, tmp_path / "o", "--quiet", epochs=1))
    r = _train(run_cli, model, data, tmp_path / "x", "--init", str(tmp_path / "o" / "checkpoint.npz"), epochs=1)
    _one_line_error(r, "another model")


def test_a_data_file_that_is_not_an_npz_exits_2_with_one_line(setup, run_cli, tmp_path):
    model, _ = setup
    bad = tmp_path / "bad.npz"
    bad.write_text("x,y\n1,2\n")
    _one_line_error(_train(run_cli, model, str(bad), tmp_path / "o", epochs=1), "--data", "bad.npz")


def test_a_missing_data_file_exits_2_with_one_line(setup, run_cli, tmp_path):
    model, _ = setup
    _one_line_error(_train(run_cli, model, str(tmp_path / "nope.npz"), tmp_path / "o", epochs=1), "nope.npz")


@pytest.mark.parametrize("arrays,needles", [
    (lambda d: {"X": d["x"], "y": d["y"]}, ["lacks 'x'"]),
    (lambda d: {**d, "z": d["y"]}, ["unknown array 'z'"]),
    (lambda d: {"x": d["x"][:, :2], "y": d["y"]}, ["'x'", "(64, 2)"]),
])
def test_a_wrong_array_in_the_data_exits_2_with_one_line_naming_it(setup, run_cli, tmp_path, arrays, needles):
    model, _ = setup
    path = tmp_path / "wrong.npz"
    np.savez(path, **arrays(_data()))
    _one_line_error(_train(run_cli, model, str(path), tmp_path / "o", epochs=1), *needles)


@pytest.mark.parametrize("extra,needles", [
    (["--optimizer", "adamx"], ["unknown optimizer 'adamx'"]),
    (["--freeze", "v"], ["unknown parameter 'v'"]),
    (["--metrics", "loss,f1"], ["unknown metric 'f1'"]),
])
def test_bad_training_options_exit_2_with_one_line(setup, run_cli, tmp_path, extra, needles):
    model, data = setup
    r = run_cli("train", model, "--data", data, "-o", str(tmp_path / "o"), "--epochs", "1", *extra)
    _one_line_error(r, *needles)


def _truncated(src, dst):
    raw = open(src, "rb").read()
    dst.write_bytes(raw[:len(raw) // 2])
    return str(dst)


def test_a_truncated_data_file_exits_2_with_one_line(setup, run_cli, tmp_path):
    model, data = setup
    cut = _truncated(data, tmp_path / "cut.npz")
    _one_line_error(_train(run_cli, model, cut, tmp_path / "o", epochs=1), "cut.npz")


def test_a_truncated_resume_checkpoint_exits_2_with_one_line(setup, run_cli, tmp_path):
    model, data = setup
    _ok(_train(run_cli, model, data, tmp_path / "a", "--quiet", epochs=1))
    cut = _truncated(tmp_path / "a" / "checkpoint.npz", tmp_path / "cut.npz")
    _one_line_error(_train(run_cli, model, data, tmp_path / "b", "--resume", cut, epochs=2), "cut.npz")


def test_train_draws_the_loss_curve_png_when_matplotlib_is_installed(setup, run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    model, data = setup
    out = tmp_path / "run"
    _ok(_train(run_cli, model, data, out))
    png = out / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_weight_class_weight_and_dp_options(setup, write_model, run_cli, tmp_path):
    """--sample-weight names an array of --data; --class-weight and --dp reach fit, as in Python."""
    model, _ = setup
    d = _data()
    w = np.linspace(0, 2, 64)
    data = tmp_path / "weighted.npz"
    np.savez(data, w=w, **d)
    out = tmp_path / "w"
    _ok(_train(run_cli, model, str(data), out, "--sample-weight", "w", epochs=2))
    p = gradc.load(model).init_params(seed=3)
    gradc.fit(gradc.load(model), p, d, epochs=2, batch_size=16, optimizer="sgd", lr=0.05,
              optimizer_options=dict(momentum=0.9), seed=3, sample_weight=w, progress=False)
    got, _ = load_checkpoint(str(out / "checkpoint.npz"), gradc.load(model))
    np.testing.assert_array_equal(got["w"], p["w"])
    _one_line_error(_train(run_cli, model, str(data), tmp_path / "x", "--sample-weight", "nope"),
                    "--sample-weight nope", "no such array")
    r = _ok(run_cli("train", model, "--data", setup[1], "-o", str(tmp_path / "dp"), "--epochs", "2",
                    "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.05", "--dp", "1.0,1.0,1e-5"))
    assert len(_history(tmp_path / "dp")["epsilon"]) == 2 and "epsilon" in r.stdout
    _one_line_error(run_cli("train", model, "--data", setup[1], "-o", str(tmp_path / "e"), "--dp", "1,2"),
                    "--dp 1,2", "NOISE,CLIP,DELTA")
    logit = write_model('''
import gradc as gc
m = gc.Model("cli_logit")
x, y = m.input("x", 3), m.target("y")
w = m.param("w", (1, 3), init=0)
z = (w @ x)[0]
m.output("p", gc.sigmoid(z))
m.loss(gc.bce_with_logits(z, y))
''')
    cls = tmp_path / "cls.npz"
    np.savez(cls, x=d["x"], y=(d["y"] > 1).astype(float))
    _ok(run_cli("train", logit, "--data", str(cls), "-o", str(tmp_path / "c"), "--epochs", "1",
                "--class-weight", "balanced"))
    _ok(run_cli("train", logit, "--data", str(cls), "-o", str(tmp_path / "c2"), "--epochs", "1",
                "--class-weight", "0:1,1:4"))
    _one_line_error(run_cli("train", logit, "--data", str(cls), "-o", str(tmp_path / "c3"), "--class-weight", "1=4"),
                    "--class-weight", "LABEL:WEIGHT")
