"""Data-parallel training over MPI (gradc.distributed): the promises, checked under real ``mpiexec``.

Under ``mpiexec -n 2`` and ``-n 3`` training gives the parameters of one process on the same global
batches (dropout, shuffling and noise on, uneven and empty shards in the last batch), whatever each
rank started from; a resumed run restores every rank, and a checkpoint of a 2-rank run resumes under
2 ranks or one process; ``gradc train`` under mpiexec writes (on rank 0 only) the history of a
single-process run; a batch that does not split, ranks that disagree on the model, and a rank that
dies or hangs all end the job with a message and a nonzero status, never a hang.

Every rank runs through ``rankrun.py``, which gives it its own folder (``rankN/``, its working
directory) and writes its stdout and stderr there, so each rank's output and files can be checked
whatever the launcher. Skipped when mpi4py or mpiexec is missing.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradc as gc
from gradc.train import GaussianNoise, Trainer, load_checkpoint


def _find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")     # the one of this Python's mpich wheel
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("mpiexec")


def _have_mpi4py():
    try:
        import mpi4py  # noqa: F401  (the package only: MPI itself is not started in the test process)
        return True
    except ImportError:
        return False


MPIEXEC = _find_mpiexec()


def _is_hydra():
    """Whether mpiexec is MPICH's Hydra (which has ``-disable-auto-cleanup``)."""
    try:
        r = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in r.stdout.upper()


pytestmark = [pytest.mark.skipif(not _have_mpi4py(), reason="mpi4py is not installed (pip install 'gradc[mpi]')"),
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not on PATH nor next to sys.executable")]

LAUNCH_TIMEOUT = 120          # seconds per mpiexec run; a hang fails the test instead of the session

# Tiny, with dropout, tanh and a regularization term (added once per batch: each shard must count it
# by its size). The hidden width grows with the rank when MPI_TEST_WIDEN_BY_RANK=1: ranks disagree.
MODEL = '''
import os
import gradc as gc

H = 6 + int(os.environ.get("MPI_TEST_WIDEN_BY_RANK", "0")) * int(os.environ.get("PMI_RANK", "0"))
m = gc.Model("mpi_clf")
x, label = m.input("x", 4), m.target("label", dtype="int32")
W1, b1 = m.param("W1", (H, 4), init=gc.init.linear()), m.param("b1", H, init=gc.init.linear(4))
W2, b2 = m.param("W2", (3, H), init=gc.init.linear()), m.param("b2", 3, init=gc.init.linear(H))
h = gc.dropout(gc.tanh(W1 @ x + b1), 0.25)
logits = m.output("logits", W2 @ h + b2)
m.loss(gc.softmax_cross_entropy(logits, label))
m.regularize(1e-3 * gc.sum_squares(W1, W2))
'''

# Each rank: its own folder as working directory, its stdout and stderr in files there; then exec.
RANKRUN = r'''
import os, sys
r = next((os.environ[k] for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if k in os.environ), "0")
d = os.path.join(os.getcwd(), "rank" + r)
os.makedirs(d, exist_ok=True)
for fd, name in ((1, "stdout"), (2, "stderr")):
    os.dup2(os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
os.chdir(d)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
'''

# Trains the jobs of a JSON plan on MPI.COMM_WORLD; each rank starts from its own parameters.
WORKER = r'''
import json, os, sys, time
import numpy as np
from mpi4py import MPI
import gradc as gc
from gradc.train import Callback, GaussianNoise, Trainer

plan = json.load(open(sys.argv[1]))
rank = MPI.COMM_WORLD.Get_rank()
mod = gc.compile_model(gc.load_model_file(plan["model"]))
with np.load(plan["data"]) as z:
    data = {k: z[k] for k in z.files}


class Fault(Callback):
    def __init__(self, kind):
        self.kind = kind

    def on_batch_end(self, trainer, step, logs):
        if rank == 1 and step == 5:
            print(f"rank 1: {self.kind} at step 5", flush=True)
            if self.kind == "die":
                os._exit(1)
            time.sleep(600)


for job in plan["jobs"]:
    params = mod.init_params(seed=1000 + rank)           # rank 0's must win
    cbs = [Fault(job["fault"])] if job.get("fault") else []
    t = Trainer(mod, params, comm=MPI.COMM_WORLD, transform=GaussianNoise(0.05), callbacks=cbs, progress=False,
                **job["trainer"])
    hist = t.fit(data, epochs=job["epochs"], checkpoint=job.get("checkpoint"), resume=job.get("resume"))
    np.savez(os.path.join(plan["out"], f"{job['name']}.rank{rank}.npz"), loss=np.array(hist["loss"]),
             steps=t.step_count, rng=json.dumps(t.rng.bit_generator.state),
             **{"param/" + k: v for k, v in params.items()})
print(f"rank {rank}: done", flush=True)
'''

BATCH, N, EPOCHS = 12, 50, 4           # 4 batches of 12 and one of 2 per epoch: 20 steps; under 3 ranks
#                                        the last batch leaves rank 2 an empty shard
TRAINER = {
    "sgd": dict(optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9}, batch_size=BATCH, seed=5),
    "adam": dict(optimizer="adam", lr=0.02, batch_size=BATCH, seed=5),
}


def _labels(X):
    return ((X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)).astype(np.int32)


def _data(n, seed):
    X = np.random.default_rng(seed).normal(size=(n, 4))
    return {"x": X, "label": _labels(X)}


def _kill_tree(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass


class Launch:
    """One ``mpiexec`` run: status, wall time, mpiexec's own output, and each rank's folder and output."""

    def __init__(self, setup, cwd, n, args, env=None, options=(), timeout=LAUNCH_TIMEOUT):
        """``args``: one command for every rank, or a list of ``n`` commands, one per rank (MPMD)."""
        os.makedirs(cwd, exist_ok=True)
        self.cwd, self.n = str(cwd), n
        e = dict(os.environ)
        e.update(env or {})
        rankrun = [sys.executable, str(setup["dir"] / "rankrun.py")]
        if args and isinstance(args[0], (list, tuple)):
            assert len(args) == n
            cmd = [MPIEXEC, *options]
            for r, a in enumerate(args):
                cmd += [":"] * bool(r) + ["-n", "1", *rankrun, *a]
        else:
            cmd = [MPIEXEC, *options, "-n", str(n), *rankrun, *args]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=self.cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        try:
            self.output, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(p)
            p.communicate()
            pytest.fail(f"{' '.join(cmd)} hung: still running after {timeout} s")
        finally:
            _kill_tree(p)                 # nothing may outlive the test
        self.returncode, self.seconds = p.returncode, time.perf_counter() - t0

    def rank_dir(self, r):
        return os.path.join(self.cwd, f"rank{r}")

    def out(self, r):
        with open(os.path.join(self.rank_dir(r), "stdout")) as f:
            return f.read()

    def err(self, r):
        with open(os.path.join(self.rank_dir(r), "stderr")) as f:
            return f.read()

    def everything(self):
        parts = [self.output]
        for r in range(self.n):
            for what in ("stdout", "stderr"):
                path = os.path.join(self.rank_dir(r), what)
                if os.path.exists(path):
                    with open(path) as f:
                        parts.append(f"--- rank {r} {what} ---\n" + f.read())
        return "\n".join(parts)

    def ok(self):
        assert self.returncode == 0, self.everything()
        for r in range(self.n):
            assert "Traceback" not in self.err(r), self.everything()
        return self


# ---- set-up shared by the module: files, compiled model, and the launches (each run once) ------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpi")
    for name, text in (("model.py", MODEL), ("rankrun.py", RANKRUN), ("worker.py", WORKER)):
        (d / name).write_text(text)
    np.savez(d / "data.npz", **_data(N, 0))
    model = str(d / "model.py")
    mod = gc.compile_model(gc.load_model_file(model))        # the ranks find it in the (session) cache
    gc.compile_model(gc.load_model_file(model), "float32")
    saved = {k: os.environ.get(k) for k in ("MPI_TEST_WIDEN_BY_RANK", "PMI_RANK")}
    try:                                                     # and rank 1's wider variant too
        os.environ.update(MPI_TEST_WIDEN_BY_RANK="1", PMI_RANK="1")
        gc.compile_model(gc.load_model_file(model))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return dict(dir=d, model=model, data=str(d / "data.npz"), mod=mod, launches={})


def _worker(env, tag, n, jobs, extra_env=None, options=()):
    """Launch the worker on ``n`` ranks with ``jobs`` once per module; ``tag`` names the run."""
    if tag in env["launches"]:
        return env["launches"][tag]
    out = env["dir"] / tag
    out.mkdir()
    plan = dict(model=env["model"], data=env["data"], out=str(out), jobs=jobs)
    (out / "plan.json").write_text(json.dumps(plan))
    run = Launch(env, out, n, [str(env["dir"] / "worker.py"), str(out / "plan.json")], env=extra_env,
                 options=options)
    env["launches"][tag] = run
    return run


def _ck(env):
    return str(env["dir"] / "half.npz")


def _train_launch(env, n):
    jobs = [dict(name=k, trainer=kw, epochs=EPOCHS) for k, kw in TRAINER.items()]
    if n == 2:       # and the first half of a run, for the resume tests
        jobs.append(dict(name="half", trainer=TRAINER["adam"], epochs=EPOCHS // 2, checkpoint=_ck(env)))
    return _worker(env, f"train{n}", n, jobs).ok()


def _results(run, name):
    """Per rank: (params, losses, steps, rng state) of job ``name``."""
    res = []
    for r in range(run.n):
        with np.load(os.path.join(run.cwd, f"{name}.rank{r}.npz")) as z:
            res.append(({k[6:]: z[k] for k in z.files if k.startswith("param/")}, z["loss"].tolist(),
                        int(z["steps"]), json.loads(str(z["rng"]))))
    return res


def _single(env, kind, epochs=EPOCHS, resume=None):
    """The same training in this process, without MPI, from rank 0's initial parameters."""
    mod = env["mod"]
    t = Trainer(mod, mod.init_params(seed=1000), transform=GaussianNoise(0.05), progress=False, **TRAINER[kind])
    with np.load(env["data"]) as z:
        data = {k: z[k] for k in z.files}
    hist = t.fit(data, epochs=epochs, resume=resume)
    return t, hist


def _close(got, want, what):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-12, err_msg=f"{what}: {k}")


# ---- (a) the parameters of one process, whatever the number of ranks -------------------------------

@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_data_parallel_training_gives_the_parameters_of_one_process(env, kind, n):
    run = _train_launch(env, n)
    ref, hist = _single(env, kind)
    init = env["mod"].init_params(seed=1000)
    assert ref.step_count == 20
    assert max(np.abs(ref.params[k] - init[k]).max() for k in init) > 0.05     # training did move them
    res = _results(run, kind)
    for r, (params, losses, steps, rng) in enumerate(res):
        _close(params, ref.params, f"{kind}, {n} ranks, rank {r}")
        assert steps == 20
        assert losses == pytest.approx(hist["loss"], rel=1e-12, abs=1e-12)
        assert rng == ref.rng.bit_generator.state, f"rank {r}'s generator drifted from one process's"
    for r in range(1, n):              # every rank holds the very same bytes
        assert all(res[r][0][k].tobytes() == res[0][0][k].tobytes() for k in init), f"rank {r} differs from rank 0"
    other = env["mod"].init_params(seed=1001)
    assert any(not np.array_equal(other[k], init[k]) for k in init)            # the ranks did start apart


# ---- (b) resume restores every rank -----------------------------------------------------------------

def test_a_2_rank_checkpoint_resumes_under_2_ranks_as_the_uninterrupted_run(env):
    _train_launch(env, 2)
    _, st = load_checkpoint(_ck(env), env["mod"])
    assert st["epoch"] == EPOCHS // 2 and st["step"] == 10
    resumed = _worker(env, "resume2", 2, [dict(name="resumed", trainer=TRAINER["adam"], epochs=EPOCHS,
                                                resume=_ck(env))]).ok()
    straight = _results(env["launches"]["train2"], "adam")
    for r, (params, losses, steps, rng) in enumerate(_results(resumed, "resumed")):
        s_params, s_losses, s_steps, s_rng = straight[r]
        assert all(params[k].tobytes() == s_params[k].tobytes() for k in params), f"rank {r}"   # exactly
        assert (losses, steps, rng) == (s_losses, s_steps, s_rng), f"rank {r}"


def test_a_2_rank_checkpoint_resumes_in_one_process_as_the_uninterrupted_run(env):
    _train_launch(env, 2)
    t, hist = _single(env, "adam", resume=_ck(env))
    ref, ref_hist = _single(env, "adam")
    assert t.step_count == 20 and hist["epoch"] == list(range(EPOCHS))
    _close(t.params, ref.params, "resumed in one process")
    assert t.rng.bit_generator.state == ref.rng.bit_generator.state
    assert hist["loss"] == pytest.approx(ref_hist["loss"], rel=1e-12, abs=1e-12)
    straight, *_ = _results(env["launches"]["train2"], "adam")[0]
    _close(t.params, straight, "resumed in one process vs the 2-rank run")


# ---- (c) gradc train under mpiexec --------------------------------------------------------------------

CLI_ARGS = ["--epochs", "3", "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9",
            "--seed", "4", "--val-split", "0.2", "--metrics", "loss,accuracy"]


def _gradc():
    exe = os.path.join(os.path.dirname(sys.executable), "gradc")
    return [exe] if os.path.isfile(exe) else [sys.executable, "-m", "gradc.cli"]


def test_gradc_train_under_mpiexec_matches_one_process_and_only_rank_0_writes(env, run_cli, tmp_path):
    args = ["train", env["model"], "--data", env["data"], "-o", "run", *CLI_ARGS]
    run = Launch(env, tmp_path / "mpi", 2, [*_gradc(), *args]).ok()
    single = run_cli(*args, cwd=str(tmp_path))
    assert single.returncode == 0, single.stderr

    out0 = run.out(0)
    assert out0.count("epoch ") == 3 and "trained 3 epochs on 2 ranks" in out0, run.everything()
    assert run.out(1) == "" and run.err(1) == "", run.everything()                # rank 1 prints nothing
    assert not os.path.exists(os.path.join(run.rank_dir(1), "run")), os.listdir(run.rank_dir(1))
    files = set(os.listdir(os.path.join(run.rank_dir(0), "run")))
    assert {"checkpoint.npz", "history.csv", "history.json"} <= files
    assert not any(f.endswith(".tmp") for f in files)

    with open(os.path.join(run.rank_dir(0), "run", "history.json")) as f:
        h_mpi = json.load(f)
    with open(tmp_path / "run" / "history.json") as f:
        h_one = json.load(f)
    assert set(h_mpi) == set(h_one) and {"loss", "val_loss", "val_accuracy", "lr"} <= set(h_one)
    for k in h_one:
        if k == "seconds":
            continue
        assert h_mpi[k] == pytest.approx(h_one[k], rel=1e-12, abs=1e-12), k
    p_mpi, st = load_checkpoint(os.path.join(run.rank_dir(0), "run", "checkpoint.npz"), env["mod"])
    p_one, _ = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"), env["mod"])
    assert st["epoch"] == 3
    _close(p_mpi, p_one, "gradc train checkpoint")


# ---- (d) failures: a message on every rank, a nonzero status, never a hang ---------------------------

def _fails_on_every_rank(run, *needles):
    assert run.returncode != 0, run.everything()
    for r in range(run.n):
        err = run.err(r)
        assert "Traceback" not in err, run.everything()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("gradc: error: "), run.everything()
        for n in needles:
            assert n in lines[0], (n, run.everything())


def test_a_global_batch_that_does_not_split_over_the_ranks_fails_on_every_rank(env, tmp_path):
    args = ["train", env["model"], "--data", env["data"], "-o", "run", "--epochs", "1", "--batch-size", "9"]
    run = Launch(env, tmp_path / "mpi", 2, [*_gradc(), *args])
    _fails_on_every_rank(run, "batch size 9", "2 ranks")
    assert not os.path.exists(os.path.join(run.rank_dir(0), "run", "checkpoint.npz"))


def test_ranks_that_disagree_on_the_model_fail_on_every_rank(env, tmp_path):
    args = ["train", env["model"], "--data", env["data"], "-o", "run", "--epochs", "1", "--batch-size", "8"]
    run = Launch(env, tmp_path / "mpi", 2, [*_gradc(), *args], env={"MPI_TEST_WIDEN_BY_RANK": "1"})
    _fails_on_every_rank(run, "ranks disagree on the model")


def _ends_with_a_message(run, limit):
    text = run.everything()
    assert run.returncode != 0, text
    assert run.seconds < limit, f"took {run.seconds:.1f} s\n{text}"
    assert "rank 1: die at step 5" in run.out(1) or "rank 1: hang at step 5" in run.out(1), text
    assert not os.path.exists(os.path.join(run.cwd, "sgd.rank0.npz")), text      # nobody finished
    return text


def test_a_rank_that_dies_mid_training_ends_the_job(env):
    # Hydra ends the job at once when a rank exits with an error (the others get SIGKILL: only the dead
    # rank's own words are left, mpiexec prints nothing), with the dead rank's status
    run = _worker(env, "die", 2, [dict(name="sgd", trainer=TRAINER["sgd"], epochs=EPOCHS, fault="die")],
                  extra_env={"GRADC_MPI_TIMEOUT": "5"})
    _ends_with_a_message(run, 30)


def test_a_rank_that_dies_mid_training_stops_the_others_by_the_time_limit(env):
    # without the launcher's clean-up, the survivors' time limit must end the job, with gradc's message
    if not _is_hydra():
        pytest.skip("needs Hydra's -disable-auto-cleanup to keep the launcher from ending the job first")
    run = _worker(env, "die_nocleanup", 2, [dict(name="sgd", trainer=TRAINER["sgd"], epochs=EPOCHS, fault="die")],
                  extra_env={"GRADC_MPI_TIMEOUT": "3"}, options=["-disable-auto-cleanup"])
    _ends_with_a_message(run, 30)
    assert run.seconds >= 3
    assert "gradc: error: rank 0: a gradient exchange did not complete within 3 s; another rank has died" \
        in run.err(0), run.everything()


def test_a_rank_that_hangs_mid_training_is_stopped_by_the_time_limit(env):
    run = _worker(env, "hang", 2, [dict(name="sgd", trainer=TRAINER["sgd"], epochs=EPOCHS, fault="hang")],
                  extra_env={"GRADC_MPI_TIMEOUT": "3"})
    _ends_with_a_message(run, 30)
    assert run.seconds >= 3
    assert "gradc: error: rank 0: a gradient exchange did not complete within 3 s; another rank has died or hangs" \
        in run.err(0), run.everything()


# Known gaps: the ranks compare only the model's hash (which leaves out the dtype) and the seed.

def test_ranks_that_disagree_on_the_dtype_fail_on_every_rank(env, tmp_path):
    args = ["train", env["model"], "--data", env["data"], "-o", "run", "--epochs", "1", "--batch-size", "8"]
    run = Launch(env, tmp_path / "mpi", 2, [[*_gradc(), *args], [*_gradc(), *args, "--dtype", "float32"]],
                 env={"GRADC_MPI_TIMEOUT": "4"})
    _fails_on_every_rank(run, "ranks disagree on the model")      # found at the start, not by the time limit


@pytest.mark.parametrize("option", [["--lr", "0.5"], ["--batch-size", "10"]], ids=["lr", "batch-size"])
def test_ranks_that_disagree_on_the_training_settings_fail_on_every_rank(env, tmp_path, option):
    args = ["train", env["model"], "--data", env["data"], "-o", "run", "--epochs", "1", "--batch-size", "8",
            "--optimizer", "sgd", "--lr", "0.1", "--quiet"]
    run = Launch(env, tmp_path / "mpi", 2, [[*_gradc(), *args], [*_gradc(), *args, *option]],
                 env={"GRADC_MPI_TIMEOUT": "4"})
    _fails_on_every_rank(run, "ranks disagree on")
