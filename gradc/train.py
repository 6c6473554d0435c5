"""The training loop: minibatches, validation, early stopping, checkpoints, exact resume.

Example::

    hist = gradc.fit(mod, params, {"x": X, "y": Y}, epochs=20, batch_size=32,
                     optimizer="adam", lr=1e-3, val_split=0.2, metrics=["loss", "accuracy"],
                     checkpoint="run.npz")
    hist.to_csv("history.csv")

One ``numpy.random.Generator`` seeded by ``seed`` drives shuffling, dropout
masks and augmentation, and its state is saved in every checkpoint, so a run
resumed from a checkpoint produces exactly the losses of an uninterrupted one.
"""
import csv
import json
import math
import os
import sys
import time

import numpy as np

from . import metrics as _metrics
from . import optim as _optim
from ._version import __version__
from .runtime import Params, runtime_of
from .weighting import combined_weights


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch's bookkeeping."""


class Callback:
    """Hooks into the loop; override what you need. Raise ``StopTraining`` to stop.

    Example::

        class Print(gradc.train.Callback):
            def on_epoch_end(self, trainer, epoch, logs):
                print(epoch, logs["loss"])
    """

    def on_train_begin(self, trainer): pass
    def on_epoch_begin(self, trainer, epoch): pass
    def on_batch_end(self, trainer, step, logs): pass
    def on_epoch_end(self, trainer, epoch, logs): pass
    def on_train_end(self, trainer): pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; restore the best parameters.

    Example: ``fit(..., early_stopping=EarlyStopping("val_loss", patience=5))``.
    """

    def __init__(self, monitor="val_loss", patience=5, mode="auto", min_delta=0.0, restore_best=True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, int(patience), min_delta, restore_best
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "auc")) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min', 'max' or 'auto', not {mode!r}")
        self.mode = mode
        self.best, self.best_epoch, self.wait, self.best_params = None, None, 0, None

    def _better(self, v):
        if self.best is None:
            return True
        return v < self.best - self.min_delta if self.mode == "min" else v > self.best + self.min_delta

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, but the logs hold {sorted(logs)}")
        v = logs[self.monitor]
        if self._better(v):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            self.best_params = {k: a.copy() for k, a in trainer.params.items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                raise StopTraining(f"{self.monitor} has not improved for {self.patience} epochs")

    def on_train_end(self, trainer):
        if self.restore_best and self.best_params is not None:
            for k, a in trainer.params.items():
                a[...] = self.best_params[k]

    def state(self):
        return dict(best=self.best, best_epoch=self.best_epoch, wait=self.wait), self.best_params

    def set_state(self, st, best_params):
        self.best, self.best_epoch, self.wait = st["best"], st["best_epoch"], st["wait"]
        self.best_params = best_params


class History(dict):
    """Per-epoch logs: ``hist["val_loss"]`` is a list over epochs. Plot it, or write it as CSV/JSON."""

    def append(self, logs):
        n = len(self.get("epoch", []))
        for k in logs:
            self.setdefault(k, [None] * n)     # a key first seen now was absent before
        for k in self:
            self[k].append(logs.get(k))

    def to_csv(self, path):
        keys = ["epoch"] + sorted(k for k in self if k != "epoch")
        cols = [self.get(k, []) for k in keys]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys)
            for row in zip(*cols):
                w.writerow(["" if v is None else v for v in row])

    def to_json(self, path):
        # NaN and Inf are not JSON: a diverged epoch is written as null
        clean = {k: [None if isinstance(v, float) and not math.isfinite(v) else v for v in col]
                 for k, col in self.items()}
        with open(path, "w") as f:
            json.dump(clean, f, indent=1)

    def plot(self, path, keys=None):
        """Write a PNG of the loss curves (needs matplotlib: ``pip install gradc[plot]``)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        keys = keys or [k for k in self if k.endswith("loss")]
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in keys:
            ax.plot(self["epoch"], self[k], label=k)
        ax.set_xlabel("epoch")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


# ---- checkpoints ---------------------------------------------------------------

def _to_json(obj, arrays, prefix):
    """Nested state -> JSON text, with numpy arrays moved into ``arrays``."""
    if isinstance(obj, np.ndarray):
        key = f"{prefix}{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_to_json(k, arrays, prefix), _to_json(v, arrays, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v, arrays, prefix) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v, arrays, prefix) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_json(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]].copy()
        if "__dict__" in obj:
            return {_from_json(k, arrays): _from_json(v, arrays) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_from_json(v, arrays) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_from_json(v, arrays) for v in obj]
    return obj


def _param_key(i, name):
    """The zip member of parameter ``name``: ``param/NAME`` when the name survives a zip member name
    (``zipfile`` cuts a name at its first NUL), else ``param#I``; ``param_names`` maps both back."""
    plain = isinstance(name, str) and name.isprintable() and name == name.strip() and not name.endswith("/")
    return f"param/{name}" if plain else f"param#{i}"


def save_checkpoint(path, params, state, model_hash):
    """Write parameters and training state to ``path`` (.npz) atomically: a crash leaves the old file.

    Members: ``param/NAME`` (or ``param#I`` for a name a zip cannot hold, such as one with a NUL),
    ``param_names`` (JSON: member -> name), ``state_json`` (JSON, with its arrays as ``state/N``),
    ``model_hash`` and ``gradc_version``.
    """
    arrays, names = {}, {}
    for i, (k, v) in enumerate(params.items()):
        key = _param_key(i, k)
        arrays[key], names[key] = np.asarray(v), k
    arrays["param_names"] = np.frombuffer(json.dumps(names).encode(), dtype=np.uint8)
    text = json.dumps(_to_json(state, arrays, "state/"))
    arrays["state_json"] = np.frombuffer(text.encode(), dtype=np.uint8)
    arrays["model_hash"] = np.frombuffer(model_hash.encode(), dtype=np.uint8)
    arrays["gradc_version"] = np.frombuffer(__version__.encode(), dtype=np.uint8)
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:        # a full disk says ENOSPC with no file: name the checkpoint
        raise OSError(e.errno, f"cannot write the checkpoint: {e.strerror or e}", path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def checkpoint_limit(param_shapes):
    """The most bytes a checkpoint of a model with these parameter shapes may decompress to.

    Parameters, the optimizer's buffers (L-BFGS keeps the most: 2 * history_size + 2 flat vectors,
    202 with its default history of 100) and the early-stopping copy, each at 8 bytes a value, plus
    64 MiB for the training state. Example: ``checkpoint_limit({"W": (16, 2)})``.
    """
    n = sum(math.prod(s) for s in param_shapes.values())
    return 8 * (8 + 202) * n + (64 << 20)


def checkpoint_params(files, what):
    """The parameters held by a checkpoint's members, by name: ``param_names`` maps members to names
    (written since names with a NUL could not be zip member names); older files use ``param/NAME``."""
    if "param_names" not in files:
        return {k[6:]: v for k, v in files.items() if k.startswith("param/")}
    try:
        names = json.loads(files["param_names"].tobytes().decode())
        ok = isinstance(names, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in names.items())
    except (ValueError, UnicodeDecodeError, RecursionError):
        ok = False
    if not ok:
        raise ValueError(f"{what}: its parameter names are damaged")
    if len(set(names.values())) != len(names) or not all(k.startswith(("param/", "param#")) for k in names):
        raise ValueError(f"{what}: its parameter names are damaged")
    # a listed member that is absent is reported by the caller as a missing parameter
    out = {names[k]: files[k] for k in names if k in files}
    for k, v in files.items():
        if k.startswith("param/") and k not in names:
            out.setdefault(k[6:], v)            # unlisted: by the older rule (then unknown, or a clash)
        elif k.startswith("param#") and k not in names:
            raise ValueError(f"{what}: member {k!r} is not among its parameter names")
    return out


def load_checkpoint(path, module=None):
    """(params, state) from a checkpoint; with ``module``, checks that it belongs to that model.

    The file is read by ``gradc.npz.read_npz``: sizes are checked before anything is allocated
    (with ``module``, against what that model's checkpoint can hold). Raises ``ValueError``
    naming the file and the problem; nothing is half-loaded.

    Example: ``params, state = load_checkpoint("run/checkpoint.npz", mod)``.
    """
    from .npz import NpzError, machine_bytes, read_npz
    limit = None
    if module is not None:
        limit = checkpoint_limit(module.param_shapes)
        mem = machine_bytes()
        limit = min(limit, mem) if mem else limit
    try:
        files = read_npz(path, "checkpoint", limit)
    except NpzError as e:
        raise ValueError(f"checkpoint {path}: not a readable gradc checkpoint ({e.why})") from None
    if "state_json" not in files or "model_hash" not in files:
        raise ValueError(f"checkpoint {path}: not a gradc checkpoint (no training state)")
    params = checkpoint_params(files, f"checkpoint {path}")
    for k, v in params.items():
        if v.dtype.kind != "f":
            raise ValueError(f"checkpoint {path}: parameter {k!r} holds {v.dtype} values, not floats")
    try:
        state = _from_json(json.loads(files["state_json"].tobytes().decode()), files)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError, AttributeError) as e:
        raise ValueError(f"checkpoint {path}: its training state is damaged ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: its training state is not a record")
    got = bytes(files["model_hash"].tobytes()).decode("utf-8", "replace")
    if module is not None:
        want = runtime_of(module).info.model_hash
        if want is not None and got != want:
            raise ValueError(f"checkpoint {path} was written for another model (hash {got[:12]}, this model {want[:12]})")
        for k, shape in module.param_shapes.items():
            if k not in params:
                raise ValueError(f"checkpoint {path}: parameter {k!r} is missing")
            if params[k].shape != shape:
                raise ValueError(f"checkpoint {path}: parameter {k!r} has shape {params[k].shape}, expected {shape}")
        extra = set(params) - set(module.param_shapes)
        if extra:
            raise ValueError(f"checkpoint {path}: unknown parameter {sorted(extra)[0]!r}")
    return params, state


def _is_real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _checked_history(h, bad):
    """A checkpoint's history record as a ``History``, or ``bad(...)`` raised: columns of equal length."""
    n = None
    for k, col in h.items():
        if not isinstance(k, str) or not isinstance(col, list):
            raise bad("its history record is damaged")
        if n is not None and len(col) != n:
            raise bad(f"its history record is damaged (column {k!r} has {len(col)} entries, others {n})")
        n = len(col)
        if not all(v is None or isinstance(v, (int, float, str)) for v in col):
            raise bad(f"its history record is damaged (column {k!r})")
    return History({k: list(col) for k, col in h.items()})


def _checked_early(est, best, params, bad):
    """(state, best_params) of a checkpoint's early-stopping record, checked, or ``bad(...)`` raised."""
    if not isinstance(est, dict) or set(est) != {"best", "best_epoch", "wait"}:
        raise bad("its early-stopping record is damaged")
    if not (est["best"] is None or _is_real(est["best"])) or \
            not (est["best_epoch"] is None or (isinstance(est["best_epoch"], int) and not isinstance(est["best_epoch"], bool))) or \
            not (isinstance(est["wait"], int) and not isinstance(est["wait"], bool) and est["wait"] >= 0):
        raise bad("its early-stopping record is damaged")
    if best is not None:
        if not isinstance(best, dict) or set(best) != set(params):
            raise bad("its early-stopping copy of the best parameters is damaged")
        for k, a in best.items():
            if not isinstance(a, np.ndarray) or a.shape != params[k].shape or a.dtype.kind != "f":
                raise bad(f"its early-stopping copy of parameter {k!r} is damaged")
    return dict(est), best


def _saved_split(st, n, path):
    """A checkpoint's validation split record ``{fraction, seed, n, rows}``, checked against ``n``
    training samples, or None (no split, or a checkpoint written before splits were recorded)."""
    sp = st.get("split") if isinstance(st, dict) else None
    if sp is None:
        return None
    bad = ValueError(f"checkpoint {path}: its validation split record is damaged")
    if not isinstance(sp, dict) or not {"fraction", "seed", "n", "rows"} <= set(sp):
        raise bad
    rows = sp["rows"]
    if not _is_real(sp["fraction"]) or not 0 < sp["fraction"] < 1 or not isinstance(rows, np.ndarray) \
            or rows.dtype.kind not in "iu" or rows.ndim != 1 or not isinstance(sp["n"], int):
        raise bad
    if sp["n"] != n:
        raise ValueError(f"checkpoint {path}: its run split {sp['n']} samples into training and validation, "
                         f"this data has {n}: resume with the same data")
    if len(rows) == 0 or len(np.unique(rows)) != len(rows) or rows.min() < 0 or rows.max() >= n:
        raise bad
    return dict(sp, rows=rows.astype(np.int64))


# ---- the loop ------------------------------------------------------------------

def _progress(enabled, total):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="epoch", leave=True)


class Trainer:
    """Trains a compiled module's parameters in place.

    Example::

        t = Trainer(mod, params, optimizer="sgd", lr=0.1, batch_size=32, seed=0)
        hist = t.fit({"x": X, "y": Y}, epochs=10, val_data={"x": Xv, "y": Yv})

    ``batch_size`` defaults to 32. An optimizer that re-evaluates the loss (``needs_closure``:
    L-BFGS) trains on full batches: each epoch is one ``step(closure)`` on the whole training set
    (up to ``max_iter`` iterations), ``batch_size`` defaults to all of it, and a smaller one is refused.
    """

    def __init__(self, module, params, optimizer="adam", lr=None, *, optimizer_options=None, options=None,
                 frozen=(), batch_size=None, seed=0, shuffle=True, metrics=("loss",), output=None, target=None,
                 transform=None, scheduler=None, scheduler_interval="epoch", clip_grad_norm=None, nan="raise",
                 callbacks=(), progress=None, drop_last=False, comm=None, dp=None):
        self.module, self.params = module, params
        if set(params) != set(module.param_shapes):
            raise ValueError(f"params must hold exactly the model's parameters {list(module.param_shapes)}")
        if isinstance(optimizer, str):
            key = optimizer.lower()
            if key not in _optim.OPTIMIZERS:
                raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(_optim.available())}")
            kw = dict(optimizer_options or {})
            if lr is not None:
                kw["lr"] = lr
            optimizer = _optim.OPTIMIZERS[key](params, options=options, frozen=list(frozen), **kw)
        elif options or frozen or optimizer_options or lr is not None:
            raise ValueError("lr, options, frozen and optimizer_options go to the optimizer's constructor "
                             "when you pass an optimizer object")
        self.optimizer = optimizer
        self.scheduler = scheduler(optimizer) if callable(scheduler) and not hasattr(scheduler, "step") else scheduler
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
        if nan not in ("raise", "skip"):
            raise ValueError(f"nan must be 'raise' or 'skip', not {nan!r}")
        if batch_size is None:     # an optimizer that re-evaluates the loss (L-BFGS): the whole training set
            batch_size = None if getattr(optimizer, "needs_closure", False) else 32
        elif int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        else:
            batch_size = int(batch_size)
        self.scheduler_interval, self.clip, self.nan = scheduler_interval, clip_grad_norm, nan
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rng = seed, np.random.default_rng(seed)
        self.transform, self.callbacks, self.progress = transform, list(callbacks), progress
        if hasattr(transform, "bind"):      # tell a transform which arrays are the model's inputs
            masks = set(runtime_of(module).info.dropout_inputs)
            transform.bind([k for k, dt in module.input_dtypes.items() if k not in masks and dt.kind == "f"])
        self.metrics = list(metrics)
        for mt in self.metrics:
            if isinstance(mt, str) and mt != "loss" and mt not in _metrics.METRICS:
                raise ValueError(f"unknown metric {mt!r}; choose loss, {', '.join(_metrics.METRICS)} or a callable")
        self.output, self.target = self._pick(output, module.output_shapes, "output"), \
            self._pick(target, module.target_shapes, "target")
        self.epoch, self.step_count, self.history = 0, 0, History()
        #: what the message of a non-finite batch suggests (the command line says ``--nan skip``)
        self.nan_advice = "pass nan='skip' to skip such batches"
        self.early = None
        self.dist = None
        self.weights = None
        self.dp = None
        if dp is not None:
            from .dp import DPSGD
            self.dp = DPSGD(dp)
            why = ("clip_grad_norm (DP-SGD clips each sample's gradient to dp's max_grad_norm)" if clip_grad_norm is not None
                   else "an optimizer that re-evaluates the loss (L-BFGS)" if getattr(optimizer, "needs_closure", False)
                   else "data-parallel training (comm)" if comm is not None and comm.Get_size() > 1 else None)
            if why is not None:
                raise ValueError(f"dp does not combine with {why}")
        if comm is not None and comm.Get_size() > 1:
            self._join(comm)

    def _join(self, comm):
        """Data-parallel set-up: same model everywhere, rank 0's parameters, shards of equal size."""
        from .distributed import Comm
        self.dist = d = Comm(comm)
        if self.batch_size is not None and self.batch_size % d.size:
            raise ValueError(f"the global batch size {self.batch_size} is not divisible by the {d.size} ranks; "
                             f"choose a multiple of {d.size}")
        info = runtime_of(self.module).info
        d.same_everywhere(f"{info.model_hash or ''} {info.dtype}", "the model (or its dtype)")
        opt = self.optimizer
        settings = (self.seed, self.batch_size, self.shuffle, self.drop_last, self.clip, self.nan,
                    type(opt).__name__, sorted((k, repr(opt.hyper(k))) for k in opt.params),
                    sorted(opt.lr.items()), type(self.scheduler).__name__, self.scheduler_interval)
        d.same_everywhere(repr(settings), "the training settings (seed, batch size, optimizer, lr, schedule)")
        for a in self.params.values():          # everyone starts from rank 0's parameters
            buf = np.ascontiguousarray(a)
            d.bcast(buf, "the broadcast of the parameters")
            a[...] = buf
        if d.rank != 0:
            self.progress = False

    @property
    def is_root(self):
        """Whether this process writes checkpoints, history and progress (rank 0, or no MPI)."""
        return self.dist is None or self.dist.rank == 0

    def _pick(self, name, names, what):
        if name is not None:
            if name not in names:
                raise ValueError(f"unknown {what} {name!r}; the model has {', '.join(names) or 'none'}")
            return name
        return next(iter(names)) if len(names) == 1 else None

    # ---- data ----------------------------------------------------------
    def _fields(self):
        m = self.module
        masks = set(runtime_of(m).info.dropout_inputs)
        return [k for k in m.input_shapes if k not in masks] + list(m.target_shapes)

    def check_data(self, data, what="training data", finite=False):
        """Check names, shapes and label ranges of a whole data set (and with ``finite``, that it
        holds no NaN or Inf); returns it as arrays. Training data is checked for NaN batch by batch,
        so that a bad batch can be reported by its index or skipped."""
        if not isinstance(data, dict):
            raise ValueError(f"{what} must be a dict of arrays keyed by input and target names")
        fields, shapes = self._fields(), {**self.module.input_shapes, **self.module.target_shapes}
        missing = [k for k in fields if k not in data]
        if missing:
            raise ValueError(f"{what} lacks {missing[0]!r}; the model needs {', '.join(fields)}")
        unknown = [k for k in data if k not in shapes]
        if unknown:
            raise ValueError(f"{what} has unknown array {unknown[0]!r}; the model takes {', '.join(fields)}")
        out, n = {}, None
        for k in data:
            a = np.asarray(data[k])
            if a.shape[1:] != shapes[k] or a.ndim != 1 + len(shapes[k]):
                raise ValueError(f"{what}: {k!r} has shape {a.shape}, but the model expects (N, "
                                 f"{', '.join(map(str, shapes[k]))})".replace(", )", ")"))
            if n is not None and len(a) != n:
                raise ValueError(f"{what}: {k!r} has {len(a)} samples, others have {n}")
            n = len(a)
            if a.dtype.kind in "iu":
                err = runtime_of(self.module).index_error(k, a)
                if err:
                    raise ValueError(f"{what}: {err}")
            if finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                bad = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))[0])
                raise ValueError(f"{what}: {k!r} holds NaN or Inf at sample {bad}")
            out[k] = a
        if not n:
            raise ValueError(f"{what} is empty")
        return out

    def _batches(self, n):
        idx = self.rng.permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last and n >= self.batch_size else n
        return [idx[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def _nonfinite_params(self):
        """Which parameter holds NaN or Inf, and since when, in words; None when all are finite."""
        for k, a in self.params.items():
            if not np.all(np.isfinite(a)):
                if self.step_count == 0:
                    return (f"parameter {k!r} holds NaN or Inf before any step (its initial values, "
                            "the ones given, or those of --init or the checkpoint)")
                return (f"parameter {k!r} holds NaN or Inf after {self.step_count} steps on finite gradients "
                        "(an update overflowed: lower the learning rate or clip the gradients)")
        return None

    def _nonfinite(self, batch):
        for k, a in batch.items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))
                return f"{k!r} holds NaN or Inf (row {int(bad[0])} of the batch)"
        return None

    # ---- evaluation ----------------------------------------------------
    def predict(self, data, batch_size=1024, *, mc_samples=None, seed=0):
        """The model's outputs for ``data`` (evaluation mode: no dropout); with ``mc_samples=N``,
        their mean and standard deviation over N dropout masks. See ``gradc.train.predict``.

        Example: ``mean, std = t.predict({"x": X}, mc_samples=50, seed=0)``.
        """
        return predict(self.module, self.params, data, batch_size, mc_samples=mc_samples, seed=seed)

    def evaluate(self, data, prefix="", sample_weight=None, metrics=None):
        """The metrics on ``data``: ``{"loss": ..., "accuracy": ...}`` (evaluation mode); ``metrics``
        (default: the trainer's) names which.

        With ``sample_weight`` (one value >= 0 per sample) each metric is weighted: the loss is
        ``sum w l / sum w`` plus regularization, accuracy, AUC and MSE as scikit-learn weighs them.
        """
        data = {k: np.asarray(v) for k, v in data.items()}
        logs, out = {}, None
        n = len(next(iter(data.values())))
        w = combined_weights(n, sample_weight, None, None, "sample_weight")
        for mt in self.metrics if metrics is None else metrics:
            if mt == "loss":
                total = 0.0
                wn = None if w is None else w * (n / float(np.sum(w)))      # mean 1
                for i in range(0, n, 4096):
                    chunk = {k: v[i:i + 4096] for k, v in data.items()}
                    m = len(next(iter(chunk.values())))
                    if wn is None:
                        total += self.module.loss(self.params, **chunk) * m
                    else:
                        total += runtime_of(self.module).loss_and_grad_weighted(self.params, wn[i:i + m], **chunk)[0] * m
                logs[prefix + "loss"] = total / n    # the regularization is included once per chunk
                continue
            if out is None:
                out = self.predict(data)
            if callable(mt):
                logs[prefix + getattr(mt, "__name__", "metric")] = float(mt(out, data))
            else:
                self._check_metrics()
                logs[prefix + mt] = _metrics.METRICS[mt](out[self.output], data[self.target], sample_weight=w)
        return logs

    @property
    def val_split(self):
        """The fraction of the data ``fit`` holds out for validation (given, or restored from the
        checkpoint it resumed), or None."""
        return getattr(self, "_val_split", None)

    def _check_metrics(self):
        """Refuse a named metric (accuracy, ...) the model cannot give: it needs one output and one target."""
        named = [mt for mt in self.metrics if isinstance(mt, str) and mt != "loss"]
        if not named or (self.output is not None and self.target is not None):
            return
        mt, m = named[0], self.module
        for what, names, how in (("output", m.output_shapes, 'm.output("score", expr)'),
                                 ("target", m.target_shapes, 'm.target("y")')):
            if not names:
                raise ValueError(f"metric {mt!r} compares the model's {what} with its target, but the model has "
                                 f"no {what}: name one in the model file with {how}")
        for what, names, picked in (("output", m.output_shapes, self.output), ("target", m.target_shapes, self.target)):
            if picked is None:
                raise ValueError(f"metric {mt!r} needs one {what}, but the model has several ({', '.join(names)}): "
                                 f"pass {what}= to choose one")

    def metrics_on_training_data(self, val_data):
        """Whether ``fit`` computes the metrics on the training data: named metrics (beyond the
        running ``loss``) and no validation data. They are logged as ``train_<metric>``."""
        return val_data is None and any(mt != "loss" for mt in self.metrics)

    # ---- state ---------------------------------------------------------
    def state(self):
        st = dict(epoch=self.epoch, step=self.step_count, seed=self.seed,
                  rng=self.rng.bit_generator.state, history=dict(self.history),
                  optimizer=self.optimizer.state_dict(), settings=self.settings())
        if getattr(self, "_split", None) is not None:
            st["split"] = self._split
        if self.scheduler is not None:
            st["scheduler"] = self.scheduler.state_dict()
        if self.dp is not None:
            st["dp"] = self.dp.state_dict()
        if self.early is not None:
            est, best = self.early.state()
            st["early"] = est
            if best is not None:
                st["early_best"] = best
        return st

    def save(self, path):
        """Write a checkpoint (parameters and all training state) atomically."""
        save_checkpoint(path, self.params, self.state(), runtime_of(self.module).info.model_hash or "")

    def settings(self):
        """What makes two runs the same run: a resumed run must have these as its checkpoint had.

        Example: ``t.settings()["batch_size"]``.
        """
        opt = self.optimizer
        frozen = sorted(getattr(opt, "frozen", []) or [])
        return dict(optimizer=type(opt).__name__, batch_size=self.batch_size, seed=self.seed,
                    shuffle=bool(self.shuffle), drop_last=bool(self.drop_last), clip_grad_norm=self.clip,
                    frozen=frozen, scheduler=type(self.scheduler).__name__ if self.scheduler is not None else None,
                    scheduler_interval=self.scheduler_interval, dtype=str(runtime_of(self.module).dtype),
                    val_split=getattr(self, "_val_split", None), dp=self.dp.settings() if self.dp is not None else None)

    def _changed_setting(self, saved, mine):
        """Why a checkpoint's settings record (None for older files) is not this run's, or None."""
        if saved is None:
            return None
        if not isinstance(saved, dict):
            return "its settings record is damaged"
        for key, now in mine.items():
            if key not in saved or (key == "seed" and mine.get("val_split") is None):
                continue           # the seed matters only for the validation split: the rng is restored
            was = saved[key]
            if isinstance(was, (list, tuple)) and isinstance(now, (list, tuple)):
                was, now = list(was), list(now)
            if was != now:
                return (f"it was written with {key} {was!r}, this run has {now!r}: training on would not "
                        f"continue that run (keep {key} {was!r}, or start a new run from its parameters)")
        return None

    def restore(self, path, *, _loaded=None):
        """Resume from a checkpoint written by ``save``: parameters, optimizer, schedule, RNG, history.

        The optimizer's hyperparameters and learning rates come from the checkpoint. A checkpoint
        written with other settings (``settings()``: optimizer, batch size, seed, shuffling,
        clipping, frozen parameters, schedule, dtype, validation split) is refused, naming the
        setting: training on would not continue that run.

        All or nothing: everything is checked first, then applied; a checkpoint that fails any
        check leaves the trainer as it was.
        """
        params, st = _loaded if _loaded is not None else load_checkpoint(path, self.module)
        bad = lambda why: ValueError(f"checkpoint {path}: {why}")  # noqa: E731
        if not isinstance(st, dict):
            raise bad("its training state is not a record")
        for key, kind in (("epoch", int), ("step", int), ("rng", dict), ("history", dict), ("optimizer", dict)):
            if not isinstance(st.get(key), kind) or isinstance(st.get(key), bool):
                raise bad(f"its training state lacks a valid {key!r}")
        if st["epoch"] < 0 or st["step"] < 0:
            raise bad("its epoch or step count is negative")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = st["rng"]
        except Exception as e:
            raise bad(f"its random generator state is damaged ({e})") from None
        history = _checked_history(st["history"], bad)
        dp_state = None
        if self.dp is not None:
            from .privacy import RDPAccountant
            try:
                probe = RDPAccountant()
                probe.load_state_dict(st["dp"]["accountant"])
                dp_state = st["dp"]
            except Exception as e:
                raise bad(f"it holds no valid DP-SGD accountant record ({type(e).__name__}: {e}); a private "
                          "run resumes only from a checkpoint of a private run") from None
        early = None
        if self.early is not None and "early" in st:
            early = _checked_early(st["early"], st.get("early_best"), self.params, bad)
        for k, a in self.params.items():
            if not getattr(a, "flags", None) or not a.flags.writeable:
                raise bad(f"parameter {k!r} of this trainer is read-only; nothing was restored")
        mine = self.settings()          # before the optimizer's state (and its frozen set) is loaded
        saved_opt = self.optimizer.state_dict()
        saved_sched = self.scheduler.state_dict() if self.scheduler is not None else None
        try:
            self.optimizer.load_state_dict(st["optimizer"])
            if self.scheduler is not None and "scheduler" in st:
                self.scheduler.load_state_dict(st["scheduler"])
        except Exception as e:
            self.optimizer.load_state_dict(saved_opt)
            if saved_sched is not None:
                self.scheduler.load_state_dict(saved_sched)
            raise bad(f"its optimizer or schedule state does not fit ({e})") from None
        changed = self._changed_setting(st.get("settings"), mine)
        if changed is not None:
            self.optimizer.load_state_dict(saved_opt)
            if saved_sched is not None:
                self.scheduler.load_state_dict(saved_sched)
            raise bad(changed)
        # nothing below can fail: every value was checked above
        for k, a in self.params.items():
            a[...] = params[k]
        self.epoch, self.step_count = st["epoch"], st["step"]
        self.rng.bit_generator.state = st["rng"]
        self.history = history
        if dp_state is not None:
            self.dp.load_state_dict(dp_state)
        if early is not None:
            self.early.set_state(*early)

    # ---- training ------------------------------------------------------
    def _loss_and_grad(self, batch, weight=None):
        if self.dist is None:
            if weight is not None:
                return runtime_of(self.module).loss_and_grad_weighted(self.params, weight, dropout_rng=self.rng, **batch)
            return self.module.loss_and_grad(self.params, dropout_rng=self.rng, **batch)
        from .distributed import shard
        rt = runtime_of(self.module)
        # masks for the whole global batch, from the generator every rank shares: as one process would
        batch = rt.fill_masks(batch, self.rng)
        n = len(next(iter(batch.values())))
        part = shard(n, self.dist.size, self.dist.rank)
        mine = {k: v[part] for k, v in batch.items()}
        n_mine = part.stop - part.start
        flat = getattr(self, "_shard_sums", None)
        if flat is None:
            flat = self._shard_sums = np.zeros(rt.n_params + 1, dtype=np.float64)
        flat[...] = 0
        if n_mine:
            if weight is not None:
                loss, grads = rt.loss_and_grad_weighted(self.params, weight[part], **mine)
            else:
                loss, grads = self.module.loss_and_grad(self.params, **mine)
            for p in rt.info.params:
                flat[p.offset:p.offset + p.size] = grads[p.name].ravel()
            flat[:-1] *= n_mine
            flat[-1] = loss * n_mine
        mean = self.dist.reduce_mean(flat, n)
        return float(mean[-1]), Params(mean[:-1].astype(rt.dtype), rt.info.params)

    def train_epoch(self, data):
        n = len(next(iter(data.values())))
        if getattr(self.optimizer, "needs_closure", False):
            return self._closure_epoch(data, n)
        losses, skipped = [], 0
        if self.dp is not None:
            batches, q = self.dp.batches(n, self.batch_size, self.rng)
        else:
            batches = self._batches(n)
        for b, idx in enumerate(batches):
            batch = {k: v[idx] for k, v in data.items()}
            if self.transform is not None and len(idx):
                batch = self.transform(batch, self.rng)
            why = self._nonfinite(batch)
            loss = grads = None
            if why is None and self.dp is not None:
                loss, grads = self.dp.step_grad(self.module, self.params, batch if len(idx) else {}, q, n,
                                                self.rng, self.rng)
                if len(idx) and not math.isfinite(loss):
                    why = f"the loss is {loss}"
            elif why is None:
                loss, grads = self._loss_and_grad(batch, None if self.weights is None else self.weights[idx])
                if not math.isfinite(loss):
                    why = f"the loss is {loss}"
                elif not math.isfinite(float(np.sum(grads.flat if hasattr(grads, "flat") else
                                                    [np.sum(g) for g in grads.values()]))):
                    why = "the gradient holds NaN or Inf (the loss is finite)"
            if why is not None:
                blame = self._nonfinite_params()
                if blame is not None:          # the parameters, not this batch: skipping cannot help
                    raise ValueError(f"epoch {self.epoch}, batch {b}: {why}, because {blame}; "
                                     "this batch's data are not to blame")
                if self.nan == "raise":
                    raise ValueError(f"epoch {self.epoch}, batch {b}: {why}; {self.nan_advice}")
                skipped += 1
                continue
            if self.clip is not None:
                _optim.clip_grad_norm(grads, self.clip)
            self.optimizer.step(grads)
            self.step_count += 1
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
            if math.isfinite(loss):       # a DP step on an empty Poisson sample has no loss
                losses.append(loss)
            for cb in self.callbacks:
                cb.on_batch_end(self, self.step_count, {"loss": loss, "batch": b})
        logs = {"loss": float(np.mean(losses)) if losses else float("nan")}
        if skipped:
            logs["skipped_batches"] = skipped
        if self.dp is not None:
            logs["epsilon"] = self.dp.epsilon()
        return logs

    def _closure_epoch(self, data, n):
        """One ``step(closure)`` on the whole training set, for an optimizer that re-evaluates the loss
        (L-BFGS: ``needs_closure``). The transform and the dropout masks are drawn once per epoch, so
        that every evaluation within the step sees the same function."""
        name = type(self.optimizer).__name__
        if self.batch_size is not None and self.batch_size < n:
            raise ValueError(f"{name} trains on the full batch, but batch_size={self.batch_size} is smaller than "
                             f"the {n} training samples; leave batch_size out (or give at least {n})")
        if self.clip is not None:
            raise ValueError(f"clip_grad_norm does not apply to {name}: its line search needs the true gradient")
        batch = self.transform(dict(data), self.rng) if self.transform is not None else data
        why = self._nonfinite(batch)
        if why is None:
            batch = runtime_of(self.module).fill_masks(batch, self.rng)
            loss = float(self.optimizer.step(lambda: self._loss_and_grad(batch, self.weights)))
            why = None if math.isfinite(loss) else f"the loss is {loss}"
        if why is not None:
            if self.nan == "raise":
                raise ValueError(f"epoch {self.epoch}, batch 0: {why}; {self.nan_advice}")
            return {"loss": float("nan"), "skipped_batches": 1}
        self.step_count += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        for cb in self.callbacks:
            cb.on_batch_end(self, self.step_count, {"loss": loss, "batch": 0})
        return {"loss": loss}

    def fit(self, train_data, epochs=10, val_data=None, val_split=None, early_stopping=None,
            checkpoint=None, resume=None, sample_weight=None, class_weight=None, val_sample_weight=None):
        """Train for ``epochs`` epochs (counting those of a resumed run); returns the ``History``.

        ``epochs=0`` (or a resumed run already that far) trains nothing and returns the history.
        Refused: a negative ``epochs``, and every parameter frozen ("nothing to train").

        ``sample_weight`` (one value >= 0 per training sample) and ``class_weight`` (a dict
        ``{label: weight}`` or ``"balanced"``, scikit-learn's rule) weight each sample's loss: the
        training objective is ``sum_s w_s * loss_s / sum_s w_s`` plus regularization (each batch
        computes ``sum w l / n`` with the weights scaled to mean 1 over the training set). With
        ``val_split`` the held-out part keeps its ``sample_weight``; ``val_sample_weight`` weights
        given ``val_data``. The validation metrics (loss, accuracy, AUC, MSE) are weighted by those
        sample weights; ``class_weight`` applies to training only, as in Keras.

        Metrics beyond ``loss`` (accuracy, AUC, ...) are computed on the validation data
        (``val_accuracy``); without validation data, on the training data after each epoch, in
        evaluation mode (``train_accuracy``). A resumed run (``resume``) holds out the rows its
        checkpoint held out: the split is stored in the checkpoint and need not be given again.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a whole number >= 0, not {epochs!r}")
        frozen = getattr(self.optimizer, "frozen", None)
        if frozen is not None and len(frozen) == len(self.params):
            raise ValueError(f"nothing to train: every parameter is frozen ({', '.join(self.params)})")
        data = self.check_data(train_data)
        n = len(next(iter(data.values())))
        if (sample_weight is not None or class_weight is not None) and self.dp is not None:
            raise ValueError("dp does not combine with sample_weight or class_weight: a weight above 1 "
                             "would let one sample move the model more than max_grad_norm allows")
        if class_weight is not None and self.target is None:
            raise ValueError("class_weight needs the target that holds the labels: pass target=")
        weights = combined_weights(n, sample_weight, None, None, "sample_weight")
        loaded, saved_split = None, None
        if resume is not None and self.dist is None:
            loaded = load_checkpoint(resume, self.module)        # read once; restore() applies it below
            saved_split = _saved_split(loaded[1], n, resume)
            if val_split is None and val_data is None and saved_split is not None:
                val_split = saved_split["fraction"]        # the checkpoint's split, not given again
        self._val_split, self._split = val_split, None
        if val_split is not None:
            if val_data is not None:
                raise ValueError("give val_data or val_split, not both")
            if not 0 < val_split < 1:
                raise ValueError(f"val_split must be between 0 and 1, got {val_split}")
            perm = np.random.default_rng(self.seed + 1).permutation(n)
            n_val = max(1, int(round(n * val_split)))
            if saved_split is not None and saved_split["fraction"] == val_split:
                rows = saved_split["rows"]          # the very rows the checkpoint's run held out
                perm = np.concatenate([rows, np.setdiff1d(perm, rows, assume_unique=True)])
                n_val = len(rows)
            self._split = dict(fraction=float(val_split), seed=int(self.seed) + 1, n=int(n),
                               rows=np.asarray(perm[:n_val], dtype=np.int64))
            val_data = {k: v[perm[:n_val]] for k, v in data.items()}
            data = {k: v[perm[n_val:]] for k, v in data.items()}
            if val_sample_weight is not None:
                raise ValueError("val_sample_weight weights val_data; with val_split the held-out part keeps "
                                 "its sample_weight")
            if weights is not None:
                weights, val_sample_weight = weights[perm[n_val:]], weights[perm[:n_val]]
        train_sample_weight = weights      # the training metrics' weights: class_weight is for training only
        if class_weight is not None:      # counted on the training part, as scikit-learn does
            labels = data[self.target]
            cw = combined_weights(len(labels), None, class_weight, labels, "class_weight")
            weights = cw if weights is None else weights * cw
        if weights is not None:
            total = float(np.sum(weights))
            if not total > 0:
                raise ValueError("every training sample has weight 0 (sample_weight and class_weight): "
                                 "nothing to train on")
            weights = weights * (len(weights) / total)      # mean 1: a full batch's loss is sum w l / sum w
        self.weights = weights
        self._val_weights = None
        if val_data is not None:
            val_data = self.check_data(val_data, "validation data", finite=True)
            n_val = len(next(iter(val_data.values())))
            self._val_weights = combined_weights(n_val, val_sample_weight, None, None, "val_sample_weight")
        if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping("val_loss" if val_data is not None else "loss", patience=early_stopping)
        self.early = early_stopping
        self._check_metrics()
        on_train = self.metrics_on_training_data(val_data)
        if on_train and self.dp is not None:
            raise ValueError("metrics on the training data are not private: DP-SGD's accountant counts the "
                             "noisy steps only, so with dp= give validation data (val_data= or val_split=; "
                             "--val-split in the CLI) for metrics other than loss")
        callbacks = self.callbacks + ([early_stopping] if early_stopping is not None else [])
        if self.dist is not None:     # every rank restores, then the ranks compare their state and data
            from .distributed import begin
            begin(self, data, val_data, resume)
        elif resume is not None:
            self.restore(resume, _loaded=loaded)
        bar = _progress(self.progress, epochs)
        if bar is not None:
            bar.update(self.epoch)
        for cb in callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < epochs:
                for cb in callbacks:
                    cb.on_epoch_begin(self, self.epoch)
                t0 = time.perf_counter()
                logs = self.train_epoch(data)
                if val_data is not None:
                    logs.update(self.evaluate(val_data, prefix="val_", sample_weight=self._val_weights))
                elif on_train:          # no validation data: the metrics asked for, on the training data
                    logs.update(self.evaluate(data, prefix="train_", sample_weight=train_sample_weight,
                                              metrics=[mt for mt in self.metrics if mt != "loss"]))
                logs["lr"] = float(next(iter(self.optimizer.lr.values()), float("nan")))
                logs["seconds"] = time.perf_counter() - t0
                logs["epoch"] = self.epoch
                stop = None
                try:
                    for cb in callbacks:
                        cb.on_epoch_end(self, self.epoch, logs)
                except StopTraining as e:
                    stop = e
                self.history.append(logs)
                self.epoch += 1
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                if checkpoint is not None and self.is_root:
                    self.save(checkpoint)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()
                                     if k.endswith(("loss", "accuracy", "auc", "rmse")) and v is not None})
                    bar.update(1)
                if stop is not None:
                    break
        finally:
            if bar is not None:
                bar.close()
        for cb in callbacks:
            cb.on_train_end(self)
        return self.history


def fit(module, params, train_data, *, epochs=10, val_data=None, val_split=None, early_stopping=None,
        checkpoint=None, resume=None, sample_weight=None, class_weight=None, val_sample_weight=None,
        **trainer_options):
    # trainer_options include comm=MPI.COMM_WORLD for data-parallel training (gradc.distributed)
    """Train ``params`` (in place) on ``train_data``; returns the ``History``. See ``Trainer``.

    Example::

        hist = gradc.fit(mod, p, {"x": X, "y": Y}, epochs=20, optimizer="adam", lr=1e-3,
                         val_split=0.2, metrics=["loss", "accuracy"])
    """
    t = Trainer(module, params, **trainer_options)
    return t.fit(train_data, epochs=epochs, val_data=val_data, val_split=val_split,
                 early_stopping=early_stopping, checkpoint=checkpoint, resume=resume,
                 sample_weight=sample_weight, class_weight=class_weight, val_sample_weight=val_sample_weight)


def predict(module, params, data, batch_size=1024, *, mc_samples=None, seed=0):
    """The outputs of ``module`` for ``data``: ``{"score": array (N, ...)}``, in evaluation mode
    (no dropout). Arrays of ``data`` that are not inputs (targets) are ignored.

    With ``mc_samples=N`` (Monte Carlo dropout, Gal & Ghahramani 2016): two dicts ``(mean, std)``,
    the mean and the standard deviation (``ddof=0``, float64) of each output over N forward passes, each
    with fresh dropout masks drawn from ``numpy.random.default_rng(seed)`` (``seed`` may also be
    a ``Generator``, which is then advanced). The same seed and ``batch_size`` give the same
    bits. A model without dropout has nothing to sample: it warns, and ``std`` is all zeros.

    Example::

        mean, std = gradc.predict(mod, p, {"x": X}, mc_samples=100, seed=0)
        mean["score"].shape, std["score"].shape      # (N,), (N,): std is wider off the data
    """
    ins = {k: np.asarray(v) for k, v in data.items() if k in module.input_shapes}
    n = len(next(iter(ins.values())))
    chunks = [{k: v[i:i + batch_size] for k, v in ins.items()} for i in range(0, n, batch_size)]

    def once(rng):
        parts = [module.forward(params, dropout_rng=rng, **c) for c in chunks]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    if mc_samples is None:
        return once(None)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a whole number >= 1, not {mc_samples!r}")
    if not runtime_of(module).info.dropout_inputs:
        import warnings
        warnings.warn("predict(mc_samples=...): this model has no dropout, so every sample is the same "
                      "and the standard deviation is 0 (add gc.dropout(h, p) to the model)", stacklevel=2)
        mean = once(None)
        return mean, {k: np.zeros_like(v) for k, v in mean.items()}
    rng = np.random.default_rng(seed)
    # Welford's running mean and sum of squared deviations: memory of one sample, not of N
    mean = m2 = None
    for s in range(int(mc_samples)):
        out = {k: v.astype(np.float64) for k, v in once(rng).items()}
        if mean is None:
            mean, m2 = out, {k: np.zeros_like(v) for k, v in out.items()}
            continue
        for k, v in out.items():
            d = v - mean[k]
            mean[k] += d / (s + 1)
            m2[k] += d * (v - mean[k])
    std = {k: np.sqrt(v / mc_samples) for k, v in m2.items()}
    return mean, std


# ---- augmentation --------------------------------------------------------------

class GaussianNoise:
    """Adds N(0, std^2) noise to each training batch: ``transform=GaussianNoise(0.1)``.

    ``keys`` names the arrays; by default, in a ``Trainer``, the model's real inputs (never its
    targets). Used on its own without ``keys``, every real array of the batch.
    """

    def __init__(self, std, keys=None):
        self.std, self.keys, self._inputs = float(std), keys, None

    def bind(self, inputs):
        self._inputs = list(inputs)

    def __call__(self, batch, rng):
        out = dict(batch)
        keys = self.keys or self._inputs or [k for k, a in batch.items() if a.dtype.kind == "f"]
        for k in keys:
            if k not in batch:
                raise ValueError(f"GaussianNoise: no array {k!r} in the batch")
            a = batch[k]
            out[k] = a + rng.normal(0.0, self.std, size=a.shape).astype(a.dtype)
        return out


class Mixup:
    """mixup (Zhang et al., 2018): convex mixes of pairs of samples and of their (real) targets.

    ``transform=Mixup(0.2, keys=["x", "y"])``; the targets must be real (one-hot or probabilities).
    """

    def __init__(self, alpha, keys):
        self.alpha, self.keys = float(alpha), list(keys)

    def __call__(self, batch, rng):
        lam = rng.beta(self.alpha, self.alpha)
        perm = rng.permutation(len(next(iter(batch.values()))))
        out = dict(batch)
        for k in self.keys:
            a = batch[k]
            if a.dtype.kind != "f":
                raise ValueError(f"Mixup: {k!r} holds {a.dtype} values; mix real inputs and one-hot targets only")
            out[k] = (lam * a + (1 - lam) * a[perm]).astype(a.dtype)
        return out

