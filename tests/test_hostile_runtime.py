"""The runtime under hostile use (issue 17, items 5, 7 and 8): sizes, MPI ranks that disagree, threads and fork.

- Sizes: a batch the C kernels cannot count (more than ``MAX_BATCH`` = 2**31 - 64 samples) or a
  float32 batch whose sums lose terms (more than ``FLOAT32_MAX_BATCH`` = 2**24) is refused with a
  ``ValueError`` naming the argument, before anything is allocated (the tests pass zero-copy
  ``np.broadcast_to`` views of tiny arrays); ``set_threads`` takes 1..1024 and a call uses (and
  allocates workspace for) at most one thread per block.
- MPI: ranks that resume from different checkpoints, or hold different data, fail on every rank
  before the first step (a hash of the restored state and of the data is compared).
- Fork: a child forked after the parent ran OpenMP threads gets a ``RuntimeError`` instead of a
  hang when it asks for threads, and runs with ``set_threads(1)``; a fork before any threaded call
  keeps threads. Threads: one ``Params`` stepped from two threads at once raises in the second.
"""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import gradc
from gradc.runtime import c as rtc

MODEL = '''
import gradc as gc
m = gc.Model("{name}")
x, y = m.input("x", 4), m.target("y")
W = m.param("W", (8, 4), init=gc.init.uniform(-1, 1))
v = m.param("v", (1, 8), init=gc.init.uniform(-1, 1))
h = gc.dropout(gc.tanh(W @ x), 0.25)
score = m.output("score", (v @ h)[0])
m.loss((score - y) ** 2)
m.regularize(1e-3 * gc.sum_squares(W))
'''


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("hr") / "model.py"
    p.write_text(MODEL.format(name="hostile_rt"))
    return str(p)


@pytest.fixture(scope="module")
def mod64(model_path):
    return gradc.load(model_path)


@pytest.fixture(scope="module")
def mod32(model_path):
    return gradc.load(model_path, dtype="float32")


def _batch(n, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(-1, 1, (n, 4)).astype(dtype), "y": rng.uniform(-1, 1, n).astype(dtype)}


def _huge(n, dtype):
    """A batch of n samples that takes no memory: broadcast views of one sample."""
    return {"x": np.broadcast_to(np.zeros((1, 4), dtype), (n, 4)), "y": np.broadcast_to(np.zeros(1, dtype), (n,))}


# ==== sizes ====================================================================================

def test_the_runtime_block_size_is_the_code_generators():
    from gradc.codegen.c import LANES
    assert rtc.LANES == LANES


@pytest.mark.parametrize("n", [2**31 - 63, 2**31 - 1, 2**31, 2**40])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("call", ["forward", "loss", "loss_and_grad", "sgd_step", "adam_step"])
def test_a_batch_beyond_the_c_int_is_refused_naming_the_argument(mod64, mod32, n, dtype, call):
    mod = mod64 if dtype == "float64" else mod32
    p = mod.init_params(seed=0)
    data = _huge(n, np.dtype(dtype))
    fn = {"forward": lambda: mod.forward(p, x=data["x"]),
          "loss": lambda: mod.loss(p, **data),
          "loss_and_grad": lambda: mod.loss_and_grad(p, **data),
          "sgd_step": lambda: mod.sgd_step(p, 0.1, **data),
          "adam_step": lambda: mod.adam_step(p, mod.adam_state(), **data)}[call]
    before = p.flat.copy()
    with pytest.raises(ValueError, match=rf"argument 'x' has {n:,} samples"):
        fn()
    assert np.array_equal(p.flat, before)


def test_the_largest_batch_is_not_refused_by_the_size_check(mod64):
    # MAX_BATCH itself passes the size check (and fails later, on the shape, without allocating)
    n = rtc.MAX_BATCH
    with pytest.raises(ValueError, match=r"argument 'x' has shape") as ei:
        mod64.forward(mod64.init_params(), x=np.broadcast_to(np.zeros((1, 3)), (n, 3)),
                      dropout1=np.broadcast_to(np.ones((1, 8)), (n, 8)))
    assert "samples" not in str(ei.value)


@pytest.mark.parametrize("call", ["loss", "loss_and_grad", "sgd_step"])
def test_a_float32_batch_past_2_to_the_24_is_refused(mod32, call):
    p = mod32.init_params(seed=0)
    data = _huge(2**24 + 1, np.float32)
    fn = getattr(mod32, call)
    args = (p, 0.1) if call == "sgd_step" else (p,)
    with pytest.raises(ValueError, match=r"argument 'x' has 16,777,217 samples; a float32 build sums at most "
                                         r"16,777,216"):
        fn(*args, **data)


def test_float64_takes_a_batch_past_2_to_the_24_in_the_size_check(mod64):
    # no float32 bound for float64: the call goes on to the shape check
    data = _huge(2**24 + 1, np.float64)
    data["x"] = np.broadcast_to(np.zeros((1, 3)), (2**24 + 1, 3))
    data["dropout1"] = np.broadcast_to(np.ones((1, 8)), (2**24 + 1, 8))
    with pytest.raises(ValueError, match=r"argument 'x' has shape"):
        mod64.loss(mod64.init_params(), **data)


@pytest.mark.parametrize("threads", [10**6, 2**40, 1025, 0, -1])
def test_set_threads_refuses_absurd_counts(mod64, threads):
    with pytest.raises(ValueError, match=r"set_threads: threads must be an int >= 1 and <= 1024"):
        mod64.set_threads(threads)
    assert mod64._compiled.threads == 1


def test_threads_beyond_the_blocks_allocate_for_the_blocks_only(model_path):
    mod = gradc.load(model_path)
    rt = mod._compiled
    data, p = _batch(128), mod.init_params(seed=3)        # 128 samples: 8 blocks of 16
    mod.set_threads(8)
    L8, g8 = mod.loss_and_grad(p, **data)
    mod.set_threads(1024)
    L, g = mod.loss_and_grad(p, **data)
    assert rt._local.wt[0] == 8, "the workspace was laid out for more threads than blocks"
    assert rt._local.wt[1] == int(rt._ws_threads(128, 8))
    assert L == L8 and np.array_equal(g.flat, g8.flat)
    mod.set_threads(1)


def test_a_threads_workspace_beyond_memory_is_refused_before_allocating(model_path, monkeypatch):
    mod = gradc.load(model_path)
    mod.set_threads(4)
    asked = []

    def check(nbytes, what):
        asked.append((nbytes, what))
        if "workspace" in what:
            raise ValueError(f"{what} would need too much")
    monkeypatch.setattr(rtc, "check_alloc", check)
    mod._compiled._local.wt = None
    with pytest.raises(ValueError, match=r"the workspace of 4 threads would need"):
        mod.loss_and_grad(mod.init_params(), **_batch(64))
    assert asked[-1][0] == int(mod._compiled._ws_threads(64, 4))
    mod.set_threads(1)


# ==== fork and threads =========================================================================

FORK_SCRIPT = '''
import os, sys
import numpy as np
import gradc
mod = gradc.load(sys.argv[1])
rng = np.random.default_rng(0)
data = {"x": rng.uniform(-1, 1, (256, 4)), "y": rng.uniform(-1, 1, 256)}
p = mod.init_params(seed=0)
mode = sys.argv[2]
mod.set_threads(2)
if mode != "fork_first":
    L2, g2 = mod.loss_and_grad(p, **data)        # OpenMP threads ran in this process
'''


def _run_script(src, *args, timeout=90):
    try:
        return subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the script hung for {timeout} s")


def test_a_child_forked_after_openmp_ran_gets_an_error_not_a_hang(model_path):
    src = FORK_SCRIPT + textwrap.dedent('''
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                mod.loss_and_grad(p, **data)
            except RuntimeError as e:
                code = 0 if "forked after" in str(e) and "set_threads(1)" in str(e) else 4
            mod.set_threads(1)                      # the way out the message names
            L1, _ = mod.loss_and_grad(p, **data)
            os._exit(code if np.isfinite(L1) else 5)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    ''')
    r = _run_script(src, model_path, "after")
    assert r.returncode == 0, r.stderr


def test_a_fork_pool_after_openmp_ran_reports_the_error_not_a_hang(model_path):
    src = FORK_SCRIPT + textwrap.dedent('''
        import multiprocessing as mp
        def work(seed):
            return mod.loss_and_grad(p, **data)[0]
        with mp.get_context("fork").Pool(2) as pool:
            try:
                pool.map(work, range(4))
            except RuntimeError as e:
                print("refused:", e)
                sys.exit(0)
        sys.exit(6)
    ''')
    r = _run_script(src, model_path, "after")
    assert r.returncode == 0 and "refused:" in r.stdout, r.stdout + r.stderr


def test_a_fork_before_any_threaded_call_keeps_threads(model_path):
    src = FORK_SCRIPT + textwrap.dedent('''
        pid = os.fork()
        if pid == 0:
            L, g = mod.loss_and_grad(p, **data)     # OpenMP first starts here, in the child: fine
            os._exit(0 if np.isfinite(L) else 5)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    ''')
    r = _run_script(src, model_path, "fork_first")
    assert r.returncode == 0, r.stderr


class _BlockingRng:
    """A dropout generator that stops its step inside the call until told to go on."""

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()
        self.rng = np.random.default_rng(0)

    def random(self, shape):
        self.entered.set()
        assert self.go.wait(30)
        return self.rng.random(shape)


@pytest.mark.parametrize("step", ["sgd", "adam", "optim_adam"])
def test_one_params_stepped_from_two_threads_at_once_raises(mod64, step):
    p, data = mod64.init_params(seed=1), _batch(64)
    st = mod64.adam_state()
    if step == "optim_adam":
        opt = gradc.optim.Adam(p, lr=1e-3)
        call = lambda **kw: opt.train_step(mod64, **kw)     # noqa: E731
    else:
        call = {"sgd": lambda **kw: mod64.sgd_step(p, 0.1, **kw),
                "adam": lambda **kw: mod64.adam_step(p, st, **kw)}[step]
    blocker, errors = _BlockingRng(), []

    def first():
        try:
            call(dropout_rng=blocker, **data)
        except Exception as e:      # noqa: BLE001
            errors.append(e)
    t = threading.Thread(target=first)
    t.start()
    try:
        assert blocker.entered.wait(30)
        with pytest.raises(RuntimeError, match=r"being stepped by another thread"):
            call(**data)
    finally:
        blocker.go.set()
        t.join(30)
    assert not errors, errors
    call(**data)            # free again once the first step is done


def test_threads_stepping_their_own_params_get_the_sequential_result(mod64):
    data = [_batch(64, seed=s) for s in range(4)]

    def run(p):
        for _ in range(25):
            for d in data:
                mod64.sgd_step(p, 0.05, **d)
    expect = mod64.init_params(seed=2)
    run(expect)
    ps = [mod64.init_params(seed=2) for _ in range(4)]
    ts = [threading.Thread(target=run, args=(q,)) for q in ps]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for q in ps:
        assert np.array_equal(q.flat, expect.flat)


# ==== MPI: ranks that resume from different checkpoints, or hold different data ===================

def _mpi():
    """The launcher of tests/test_mpi.py, or a skip when MPI is missing."""
    import test_mpi
    if not test_mpi._have_mpi4py() or test_mpi.MPIEXEC is None:
        pytest.skip("mpi4py or mpiexec is missing")
    return test_mpi


@pytest.fixture(scope="module")
def mpi_env(tmp_path_factory):
    tm = _mpi()
    d = tmp_path_factory.mktemp("hr_mpi")
    (d / "model.py").write_text(tm.MODEL)
    (d / "rankrun.py").write_text(tm.RANKRUN)
    for seed in (0, 1):
        np.savez(d / f"data{seed}.npz", **tm._data(40, seed))
    gradc.compile_model(gradc.load_model_file(str(d / "model.py")))      # the ranks find it in the cache
    return dict(dir=d, model=str(d / "model.py"))


def _train_args(mpi_env, data, *more):
    return ["train", mpi_env["model"], "--data", str(mpi_env["dir"] / data), "--batch-size", "8", "--seed", "3",
            "--optimizer", "adam", "--lr", "0.01", "--quiet", *more]


def _mpmd(tm, mpi_env, cwd, per_rank):
    return tm.Launch(mpi_env, cwd, len(per_rank), [[*tm._gradc(), *a] for a in per_rank],
                     env={"GRADC_MPI_TIMEOUT": "20"})


def test_mpi_ranks_resuming_from_different_checkpoints_fail_on_every_rank(mpi_env, tmp_path, run_cli):
    tm = _mpi()
    cks = []
    for data in ("data0.npz", "data1.npz"):     # the same run's settings, trained on different data
        out = tmp_path / data
        r = run_cli(*_train_args(mpi_env, data, "--epochs", "1", "-o", str(out)))
        assert r.returncode == 0, r.stderr
        cks.append(str(out / "checkpoint.npz"))
    run = _mpmd(tm, mpi_env, tmp_path / "mpi", [_train_args(mpi_env, "data0.npz", "--epochs", "3", "-o", "run",
                                                            "--resume", ck) for ck in cks])
    tm._fails_on_every_rank(run, "ranks disagree on the restored parameters", "rank 1 differs from rank 0",
                            "same checkpoint")
    assert run.seconds < 20, "found by the time limit, not by the check"


def test_mpi_ranks_given_different_data_fail_on_every_rank(mpi_env, tmp_path):
    tm = _mpi()
    run = _mpmd(tm, mpi_env, tmp_path / "mpi", [_train_args(mpi_env, data, "--epochs", "1", "-o", "run")
                                                for data in ("data0.npz", "data1.npz")])
    tm._fails_on_every_rank(run, "ranks disagree on the training data", "rank 1 differs from rank 0")
    assert not os.path.exists(os.path.join(run.rank_dir(0), "run", "checkpoint.npz"))


def test_mpi_a_rank_that_cannot_restore_stops_every_rank_at_once(mpi_env, tmp_path, run_cli):
    tm = _mpi()
    out = tmp_path / "one"
    r = run_cli(*_train_args(mpi_env, "data0.npz", "--epochs", "1", "-o", str(out)))
    assert r.returncode == 0, r.stderr
    ck = str(out / "checkpoint.npz")
    run = _mpmd(tm, mpi_env, tmp_path / "mpi", [_train_args(mpi_env, "data0.npz", "--epochs", "2", "-o", "run",
                                                            "--resume", c) for c in (ck, ck + ".missing")])
    assert run.returncode != 0 and run.seconds < 20, run.everything()
    assert "rank 1 could not resume from its checkpoint" in run.err(0), run.everything()
    assert "missing" in run.err(1) and "Traceback" not in run.everything(), run.everything()


def test_mpi_digest_sees_every_part_of_the_state():
    from gradc.distributed import digest
    a = {"W": np.zeros(3), "step": 4, "rng": {"state": {"state": 1, "inc": 2}}}
    assert digest(a) == digest({"rng": {"state": {"inc": 2, "state": 1}}, "step": 4, "W": np.zeros(3)})
    for b in ({**a, "W": np.zeros(3, np.float32)}, {**a, "W": np.zeros((1, 3))}, {**a, "step": 5},
              {**a, "W": np.array([0.0, 0.0, 1e-300])}, {**a, "rng": {"state": {"state": 1, "inc": 3}}}):
        assert digest(b) != digest(a)
