"""Hostile files and settings given to training (issue 17): .npz files that lie about their sizes,
zip bombs, flipped bytes, parameter names a zip cannot hold, damaged records, settings that change
under --resume, and NaN that is the parameters' fault rather than a batch's.

Every reader of .npz (``--data``, ``--resume``, ``--init``, ``--weights``, ``load_checkpoint``,
``read_weights``) goes through ``gradc.npz.read_npz``; a failure is one ``ValueError`` naming
the file (the command line: one line, exit 2).
"""
import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest

import gradc
from conftest import peak_during
import gradc.runtime.memory
from gradc.api import load_model_file, lower_model, read_weights
from gradc.npz import read_npz
from gradc.train import EarlyStopping, Trainer, load_checkpoint, save_checkpoint

MODEL = '''
import gradc as gc

m = gc.Model("hostile_data")
x, y = m.input("x", 3), m.target("y")
w, b = m.param("w", (1, 3), init=gc.init.uniform(-1, 1)), m.param("b", 1, init=0.5)
pred = m.output("pred", (w @ x + b)[0])
m.loss((pred - y) ** 2)
'''


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return {"x": X, "y": X @ np.array([1.5, -2.0, 0.5]) - 0.3}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("hd") / "model.py"
    p.write_text(MODEL)
    return str(p)


@pytest.fixture(scope="module")
def mod(model_file):
    return gradc.load(model_file)


@pytest.fixture(scope="module")
def prog(model_file):
    return lower_model(load_model_file(model_file))


@pytest.fixture(scope="module")
def ckpt(mod, tmp_path_factory):
    """A small, good checkpoint (adam, early stopping, 2 epochs) and its bytes."""
    path = str(tmp_path_factory.mktemp("ck") / "good.npz")
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.01, batch_size=8, seed=0)
    t.fit(_data(), epochs=2, checkpoint=path, early_stopping=5)
    return path, open(path, "rb").read()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("data") / "data.npz")
    np.savez(p, **_data())
    return p




def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gradc: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ==== files that lie about their sizes ======================================================

def _npy_header(shape, descr="<f8"):
    head = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    head += b" " * (63 - (10 + len(head)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head


def _lying_npz(path, names=("x", "y")):
    """An .npz of ~450 bytes whose members declare 2.18 TiB each."""
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            z.writestr(f"{n}.npy", _npy_header((300_000_000_000,)) + b"\0" * 64)
    return str(path)


def _bomb(path, mib=256):
    """A zip bomb: ``mib`` MiB of zeros in a member of a few hundred KiB."""
    np.savez_compressed(path, x=np.zeros(mib << 17), y=np.zeros(4))
    return str(path)


def test_a_header_declaring_terabytes_is_refused_before_allocating(tmp_path):
    path = _lying_npz(tmp_path / "lie.npz")
    assert os.path.getsize(path) < 1000
    out, peak = peak_during(lambda: read_npz(path, "--data"))
    assert isinstance(out, ValueError) and "lie.npz" in str(out), out
    assert "TiB" in str(out) or "GiB" in str(out)
    assert peak < 1 << 20


def test_a_zip_bomb_is_refused_before_it_is_decompressed(tmp_path, monkeypatch):
    path = _bomb(tmp_path / "bomb.npz")
    assert os.path.getsize(path) < 2 << 20
    monkeypatch.setattr(gradc.runtime.memory, "physical_memory", lambda: 64 << 20)
    monkeypatch.setattr(gradc.npz, "_cgroup_limit", lambda: None)
    out, peak = peak_during(lambda: read_npz(path, "--data"))
    assert isinstance(out, ValueError) and "bomb.npz" in str(out) and "memory" in str(out), out
    assert peak < 4 << 20, f"{peak:,} bytes allocated before refusing"


def test_a_zip_bomb_is_refused_as_a_checkpoint_and_as_weights_by_what_the_model_can_hold(tmp_path, mod, prog):
    path = _bomb(tmp_path / "bomb.npz")
    for read in (lambda: load_checkpoint(path, mod), lambda: read_weights(path, prog)):
        out, peak = peak_during(read)
        assert isinstance(out, ValueError) and "bomb.npz" in str(out), out
        assert peak < 4 << 20, f"{peak:,} bytes allocated before refusing"


@pytest.mark.parametrize("make", [_lying_npz, _bomb])
def test_every_api_reader_refuses_a_lying_file_naming_it(tmp_path, mod, prog, make):
    path = make(tmp_path / "hostile.npz")
    t = Trainer(mod, mod.init_params(0), optimizer="sgd", lr=0.1)
    before = {k: v.copy() for k, v in t.params.items()}
    for read in (lambda: load_checkpoint(path, mod), lambda: load_checkpoint(path),
                 lambda: t.restore(path), lambda: read_weights(path, prog)):
        with pytest.raises(ValueError, match="hostile.npz"):
            read()
    assert all(np.array_equal(before[k], t.params[k]) for k in before)


@pytest.mark.parametrize("flag", ["--data", "--resume", "--init"])
def test_cli_train_refuses_a_lying_npz_with_one_line(run_cli, model_file, data_file, tmp_path, flag):
    lie = _lying_npz(tmp_path / "lie.npz")
    args = {"--data": lie} if flag == "--data" else {"--data": data_file, flag: lie}
    r = run_cli("train", model_file, *[a for kv in args.items() for a in kv], "-o", str(tmp_path / "run"),
                "--epochs", "1")
    _one_line_error(r, "lie.npz")


def test_cli_export_refuses_a_lying_npz_with_one_line(run_cli, model_file, tmp_path):
    lie = _lying_npz(tmp_path / "lie.npz", names=("w", "b"))
    r = run_cli("export", model_file, "--weights", lie, "-o", str(tmp_path / "out"))
    _one_line_error(r, "lie.npz")


def test_a_member_whose_data_disagree_with_its_header_is_refused(tmp_path):
    path = str(tmp_path / "short.npz")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npy_header((10,)) + b"\0" * 40)          # 10 doubles declared, 5 given
    with pytest.raises(ValueError, match=r"short\.npz.*'x'"):
        read_npz(path, "--data")


def test_object_arrays_strings_and_other_compressions_are_refused(tmp_path):
    obj = str(tmp_path / "obj.npz")
    np.savez(obj, x=np.array([1, "a", None], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz.*Python objects"):
        read_npz(obj, "--data")
    s = str(tmp_path / "str.npz")
    np.savez(s, x=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"str\.npz.*numbers only"):
        read_npz(s, "--data")
    bz = str(tmp_path / "bz.npz")
    with zipfile.ZipFile(bz, "w", compression=zipfile.ZIP_BZIP2) as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros(4))
        z.writestr("x.npy", buf.getvalue())
    with pytest.raises(ValueError, match=r"bz\.npz.*compression"):
        read_npz(bz, "--data")


def test_a_deflated_member_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
    path = str(tmp_path / "claim.npz")
    np.savez_compressed(path, x=np.arange(100.0))
    raw = bytearray(open(path, "rb").read())
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = struct.pack("<I", 3_000_000_000)             # its uncompressed size
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match=r"claim\.npz.*more than deflate"):
        read_npz(path, "--data")


def test_the_safe_reader_reads_what_numpy_writes(tmp_path):
    path = str(tmp_path / "ok.npz")
    arrays = dict(f=np.asfortranarray(np.arange(12.0).reshape(3, 4)), big=np.arange(5, dtype=">i4"),
                  empty=np.zeros((0, 3)), scalar=np.float32(2.5), b=np.array([True, False]),
                  c=np.array([1 + 2j]))
    for save in (np.savez, np.savez_compressed):
        save(path, **arrays)
        got = read_npz(path, "--data")
        assert set(got) == set(arrays)
        for k, a in arrays.items():
            assert np.array_equal(got[k], a) and got[k].dtype == np.asarray(a).dtype and got[k].shape == np.shape(a)


def test_a_missing_or_garbage_data_file_is_one_message(run_cli, model_file, tmp_path):
    r = run_cli("train", model_file, "--data", str(tmp_path / "nope.npz"), "-o", str(tmp_path / "r"))
    _one_line_error(r, "nope.npz", "No such file")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04" + b"\xff" * 200)
    r = run_cli("train", model_file, "--data", str(junk), "-o", str(tmp_path / "r"))
    _one_line_error(r, "junk.npz")


# ==== flipped bytes =========================================================================

def _flips(raw, stride):
    for i in range(0, len(raw), stride):
        b = bytearray(raw)
        b[i] ^= 0xFF
        yield i, bytes(b)


def test_every_single_byte_flip_of_a_checkpoint_gives_a_value_error_naming_it(ckpt, mod, prog, tmp_path):
    _, raw = ckpt
    path = str(tmp_path / "flipped.npz")
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.01, batch_size=8, seed=0)
    t.early = EarlyStopping("loss", patience=5)
    refused = 0
    for i, b in _flips(raw, 3):
        with open(path, "wb") as f:
            f.write(b)
        for what, read in (("load_checkpoint", lambda: load_checkpoint(path, mod)),
                           ("restore", lambda: t.restore(path)),
                           ("read_weights", lambda: read_weights(path, prog))):
            try:
                read()
            except ValueError as e:
                assert "flipped.npz" in str(e), (i, what, e)
                refused += 1
            except Exception as e:        # noqa: BLE001
                pytest.fail(f"byte {i} flipped: {what} raised {type(e).__name__}: {e}")
    assert refused > len(raw) // 3      # most flips are caught (CRCs, names, sizes)


@pytest.mark.parametrize("field", ["compression method", "model_hash name"])
def test_cli_export_of_a_flipped_checkpoint_is_one_message(run_cli, model_file, ckpt, tmp_path, field):
    _, raw = ckpt
    b = bytearray(raw)
    if field == "compression method":                    # was a NotImplementedError traceback
        cd = raw.index(b"PK\x01\x02")
        b[cd + 10] ^= 0xFF
    else:                                                 # both copies of the member name
        for i in [j for j in range(len(b)) if raw.startswith(b"model_hash", j)]:
            b[i] ^= 0x01
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(b))
    r = run_cli("export", model_file, "--weights", str(path), "-o", str(tmp_path / "out"))
    _one_line_error(r, "flipped.npz")


# ==== parameter names a zip cannot hold =====================================================

@pytest.mark.parametrize("name", ["\x00nul", "a\x00b", "tab\tname", "trailing/", " space", "\udc80"])
def test_any_parameter_name_reads_back_from_a_checkpoint(tmp_path, name):
    path = str(tmp_path / "names.npz")
    params = {name: np.arange(3.0), "w": np.ones((2, 2))}
    save_checkpoint(path, params, {"epoch": 1}, "hash")
    got, state = load_checkpoint(path)
    assert set(got) == set(params) and state == {"epoch": 1}
    for k in params:
        assert np.array_equal(got[k], params[k])


def test_checkpoints_without_a_name_map_still_load(tmp_path):
    path = str(tmp_path / "old.npz")
    np.savez(path, **{"param/w": np.ones(3), "state_json": np.frombuffer(b'{"epoch": 2}', np.uint8),
                      "model_hash": np.frombuffer(b"h", np.uint8)})
    got, state = load_checkpoint(path)
    assert list(got) == ["w"] and state == {"epoch": 2}


# ==== all or nothing ========================================================================

def _rewrite_state(src, dst, change):
    with np.load(src, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    st = json.loads(files["state_json"].tobytes().decode())
    change(dict(st["__dict__"]), st)
    files["state_json"] = np.frombuffer(json.dumps(st).encode(), np.uint8)
    np.savez(dst, **files)
    return dst


def _set_key(key, value):
    def change(d, st):
        st["__dict__"] = [[k, value if k == key else v] for k, v in st["__dict__"]]
    return change


DAMAGED = {
    "early record lacking 'wait'": _set_key("early", {"__dict__": [["best", 0.5], ["best_epoch", 1]]}),
    "early record with a text best": _set_key("early", {"__dict__": [["best", "x"], ["best_epoch", 1], ["wait", 0]]}),
    "early copy of the wrong shape": _set_key("early_best", {"__dict__": [["w", {"__array__": "state/0"}],
                                                                         ["b", {"__array__": "state/0"}]]}),
    "history column that is not a list": _set_key("history", {"__dict__": [["epoch", 5], ["loss", [1.0]]]}),
    "history columns of unequal length": _set_key("history", {"__dict__": [["epoch", [0, 1]], ["loss", [1.0]]]}),
}


@pytest.mark.parametrize("change", list(DAMAGED.values()), ids=list(DAMAGED))
def test_a_damaged_record_changes_nothing_in_the_trainer(ckpt, mod, tmp_path, change):
    src, _ = ckpt
    bad = _rewrite_state(src, str(tmp_path / "bad.npz"), change)
    t = Trainer(mod, mod.init_params(3), optimizer="adam", lr=0.01, batch_size=8, seed=0)
    t.fit(_data(seed=1), epochs=1, early_stopping=EarlyStopping("loss", patience=5))
    before = ({k: v.copy() for k, v in t.params.items()}, t.epoch, t.step_count,
              json.dumps(gradc.train._to_json(t.optimizer.state_dict(), {}, "a"), default=str),
              t.rng.bit_generator.state, dict(t.history), t.early.state()[0])
    with pytest.raises(ValueError, match=r"bad\.npz"):
        t.restore(bad)
    after = ({k: v.copy() for k, v in t.params.items()}, t.epoch, t.step_count,
             json.dumps(gradc.train._to_json(t.optimizer.state_dict(), {}, "a"), default=str),
             t.rng.bit_generator.state, dict(t.history), t.early.state()[0])
    assert all(np.array_equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


# ==== nothing to train ======================================================================

def test_cli_epochs_0_is_one_message(run_cli, model_file, data_file, tmp_path):
    r = run_cli("train", model_file, "--data", data_file, "-o", str(tmp_path / "r"), "--epochs", "0")
    _one_line_error(r, "--epochs")


def test_cli_freezing_every_parameter_is_one_message(run_cli, model_file, data_file, tmp_path):
    r = run_cli("train", model_file, "--data", data_file, "-o", str(tmp_path / "r"), "--freeze", "w,b")
    _one_line_error(r, "nothing to train")


def test_api_freezing_every_parameter_is_refused_and_epochs_0_trains_nothing(mod):
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(mod, mod.init_params(0), optimizer="sgd", lr=0.1, frozen=["w", "b"]).fit(_data(), epochs=1)
    t = Trainer(mod, mod.init_params(0), optimizer="sgd", lr=0.1)
    assert dict(t.fit(_data(), epochs=0)) == {} and t.step_count == 0
    with pytest.raises(ValueError, match="epochs"):
        t.fit(_data(), epochs=-1)


# ==== --resume is the same run ==============================================================

def _train(run_cli, model_file, data_file, out, *extra, epochs=2):
    return run_cli("train", model_file, "--data", data_file, "-o", str(out), "--epochs", str(epochs),
                   "--batch-size", "8", "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--quiet", *extra)


@pytest.mark.parametrize("change,setting", [(("--batch-size", "16"), "batch_size"), (("--freeze", "b"), "frozen"),
                                            (("--val-split", "0.25"), "val_split"),
                                            (("--momentum", "0.5"), "momentum"),
                                            (("--optimizer", "adam"), "Adam")])
def test_cli_resume_with_a_changed_setting_is_refused_naming_it(run_cli, model_file, data_file, tmp_path,
                                                                change, setting):
    out = tmp_path / "run"
    r = _train(run_cli, model_file, data_file, out)
    assert r.returncode == 0, r.stderr
    args = ["--resume", str(out / "checkpoint.npz"), "--epochs", "3", *change]
    r = run_cli("train", model_file, "--data", data_file, "-o", str(out), "--batch-size", "8",
                "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--quiet", *args)
    _one_line_error(r, setting)


def test_cli_resume_applies_a_given_lr_and_says_so(run_cli, model_file, data_file, tmp_path):
    out = tmp_path / "run"
    assert _train(run_cli, model_file, data_file, out).returncode == 0
    r = _train(run_cli, model_file, data_file, out, "--resume", str(out / "checkpoint.npz"), "--lr", "0.01",
               epochs=4)
    assert r.returncode == 0, r.stderr
    assert "--lr 0.01" in r.stdout and "0.05" in r.stdout
    hist = json.loads((out / "history.json").read_text())
    assert hist["lr"] == [0.05, 0.05, 0.01, 0.01]
    # the same --lr as the checkpoint's: no line, the run continues exactly
    r = _train(run_cli, model_file, data_file, out, "--resume", str(out / "checkpoint.npz"), "--lr", "0.01",
               epochs=5)
    assert r.returncode == 0 and "resuming" not in r.stdout


def test_api_restore_refuses_a_changed_batch_size(ckpt, mod):
    path, _ = ckpt
    t = Trainer(mod, mod.init_params(0), optimizer="adam", lr=0.01, batch_size=16, seed=0)
    with pytest.raises(ValueError, match=r"good\.npz.*batch_size 8.*16"):
        t.restore(path)


# ==== NaN: the parameters' fault, or a batch's ==============================================

def test_nan_parameters_are_blamed_not_the_batch_even_with_nan_skip(mod):
    for nan in ("raise", "skip"):
        p = mod.init_params(0)
        p["b"][0] = np.nan
        t = Trainer(mod, p, optimizer="sgd", lr=0.1, batch_size=8, nan=nan)
        with pytest.raises(ValueError, match=r"parameter 'b' holds NaN or Inf before any step") as ei:
            t.fit(_data(), epochs=1)
        assert "nan='skip'" not in str(ei.value)


def test_cli_nan_from_init_is_blamed_on_the_parameters(run_cli, model_file, data_file, ckpt, tmp_path):
    src, _ = ckpt
    params, state = load_checkpoint(src)
    params["w"][0, 1] = np.nan
    with np.load(src) as z:
        h = z["model_hash"].tobytes().decode()
    init = str(tmp_path / "nan_init.npz")
    save_checkpoint(init, params, state, h)
    r = run_cli("train", model_file, "--data", data_file, "-o", str(tmp_path / "r"), "--init", init)
    line = _one_line_error(r, "parameter 'w'", "before any step")
    assert "nan='skip'" not in line


def test_cli_nan_in_a_batch_suggests_the_cli_option_and_nan_skip_trains_on(run_cli, model_file, tmp_path):
    d = _data()
    d["y"][5] = np.nan
    path = str(tmp_path / "nan.npz")
    np.savez(path, **d)
    r = run_cli("train", model_file, "--data", path, "-o", str(tmp_path / "r"), "--batch-size", "8",
                "--epochs", "1")
    line = _one_line_error(r, "--nan skip")
    assert "nan='skip'" not in line
    r = run_cli("train", model_file, "--data", path, "-o", str(tmp_path / "r"), "--batch-size", "8",
                "--epochs", "2", "--nan", "skip", "--quiet")
    assert r.returncode == 0, r.stderr
    hist = json.loads((tmp_path / "r" / "history.json").read_text())
    assert hist["skipped_batches"] == [1, 1]


def test_a_checkpoint_that_cannot_be_written_names_its_path(tmp_path, monkeypatch):
    """A full disk raises ENOSPC from the write with no file name: the error names the checkpoint."""
    import errno

    import numpy as np

    from gradc import train

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    path = tmp_path / "run.npz"
    with pytest.raises(OSError) as e:
        train.save_checkpoint(str(path), {"a": np.zeros(2)}, {}, "hash")
    assert str(path) in str(e.value) and "No space left" in str(e.value)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
