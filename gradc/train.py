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
import zipfile

import numpy as np

from . import metrics as _metrics
from . import optim as _optim
from ._version import __version__
from .runtime import Params, runtime_of


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
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys)
            for row in zip(*[self[k] for k in keys]):
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


def save_checkpoint(path, params, state, model_hash):
    """Write parameters and training state to ``path`` (.npz) atomically: a crash leaves the old file."""
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    text = json.dumps(_to_json(state, arrays, "state/"))
    arrays["state_json"] = np.frombuffer(text.encode(), dtype=np.uint8)
    arrays["model_hash"] = np.frombuffer(model_hash.encode(), dtype=np.uint8)
    arrays["gradc_version"] = np.frombuffer(__version__.encode(), dtype=np.uint8)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, module=None):
    """(params, state) from a checkpoint; with ``module``, checks that it belongs to that model.

    Raises ``ValueError`` naming the problem; nothing is half-loaded.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = "it holds Python objects" if "pickle" in str(e) else str(e) or type(e).__name__
        raise ValueError(f"checkpoint {path}: not a readable gradc checkpoint ({why})") from None
    if "state_json" not in files or "model_hash" not in files:
        raise ValueError(f"checkpoint {path}: not a gradc checkpoint (no training state)")
    params = {k[6:]: v for k, v in files.items() if k.startswith("param/")}
    for k, v in params.items():
        if v.dtype.kind != "f":
            raise ValueError(f"checkpoint {path}: parameter {k!r} holds {v.dtype} values, not floats")
    try:
        state = _from_json(json.loads(files["state_json"].tobytes().decode()), files)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
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
    """

    def __init__(self, module, params, optimizer="adam", lr=None, *, optimizer_options=None, options=None,
                 frozen=(), batch_size=32, seed=0, shuffle=True, metrics=("loss",), output=None, target=None,
                 transform=None, scheduler=None, scheduler_interval="epoch", clip_grad_norm=None, nan="raise",
                 callbacks=(), progress=None, drop_last=False, comm=None):
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
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.scheduler_interval, self.clip, self.nan = scheduler_interval, clip_grad_norm, nan
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
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
        self.early = None
        self.dist = None
        if comm is not None and comm.Get_size() > 1:
            self._join(comm)

    def _join(self, comm):
        """Data-parallel set-up: same model everywhere, rank 0's parameters, shards of equal size."""
        from .distributed import Comm
        self.dist = d = Comm(comm)
        if self.batch_size % d.size:
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

    def _nonfinite(self, batch):
        for k, a in batch.items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))
                return f"{k!r} holds NaN or Inf (row {int(bad[0])} of the batch)"
        return None

    # ---- evaluation ----------------------------------------------------
    def predict(self, data, batch_size=1024):
        """The model's outputs for ``data`` (evaluation mode: no dropout)."""
        ins = {k: np.asarray(v) for k, v in data.items() if k in self.module.input_shapes}
        n = len(next(iter(ins.values())))
        parts = [self.module.forward(self.params, **{k: v[i:i + batch_size] for k, v in ins.items()})
                 for i in range(0, n, batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def evaluate(self, data, prefix=""):
        """The metrics on ``data``: ``{"loss": ..., "accuracy": ...}`` (evaluation mode)."""
        data = {k: np.asarray(v) for k, v in data.items()}
        logs, out = {}, None
        n = len(next(iter(data.values())))
        for mt in self.metrics:
            if mt == "loss":
                total = 0.0
                for i in range(0, n, 4096):
                    chunk = {k: v[i:i + 4096] for k, v in data.items()}
                    total += self.module.loss(self.params, **chunk) * len(next(iter(chunk.values())))
                logs[prefix + "loss"] = total / n    # the regularization is included once per chunk
                continue
            if out is None:
                out = self.predict(data)
            if callable(mt):
                logs[prefix + getattr(mt, "__name__", "metric")] = float(mt(out, data))
            else:
                if self.output is None or self.target is None:
                    raise ValueError(f"metric {mt!r} needs output= and target= (the model has several)")
                logs[prefix + mt] = _metrics.METRICS[mt](out[self.output], data[self.target])
        return logs

    # ---- state ---------------------------------------------------------
    def state(self):
        st = dict(epoch=self.epoch, step=self.step_count, seed=self.seed,
                  rng=self.rng.bit_generator.state, history=dict(self.history),
                  optimizer=self.optimizer.state_dict())
        if self.scheduler is not None:
            st["scheduler"] = self.scheduler.state_dict()
        if self.early is not None:
            est, best = self.early.state()
            st["early"] = est
            if best is not None:
                st["early_best"] = best
        return st

    def save(self, path):
        """Write a checkpoint (parameters and all training state) atomically."""
        save_checkpoint(path, self.params, self.state(), runtime_of(self.module).info.model_hash or "")

    def restore(self, path):
        """Resume from a checkpoint written by ``save``: parameters, optimizer, schedule, RNG, history.

        All or nothing: a checkpoint that fails any check leaves the trainer as it was.
        """
        params, st = load_checkpoint(path, self.module)
        bad = lambda why: ValueError(f"checkpoint {path}: {why}")  # noqa: E731
        if not isinstance(st, dict):
            raise bad("its training state is not a record")
        for key, kind in (("epoch", int), ("step", int), ("rng", dict), ("history", dict), ("optimizer", dict)):
            if not isinstance(st.get(key), kind) or isinstance(st.get(key), bool):
                raise bad(f"its training state lacks a valid {key!r}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = st["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise bad(f"its random generator state is damaged ({e})") from None
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
        for k, a in self.params.items():
            a[...] = params[k]
        self.epoch, self.step_count = st["epoch"], st["step"]
        self.rng.bit_generator.state = st["rng"]
        self.history = History(st["history"])
        if self.early is not None and "early" in st:
            self.early.set_state(st["early"], st.get("early_best"))

    # ---- training ------------------------------------------------------
    def _loss_and_grad(self, batch):
        if self.dist is None:
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
            loss, grads = self.module.loss_and_grad(self.params, **mine)
            for p in rt.info.params:
                flat[p.offset:p.offset + p.size] = grads[p.name].ravel()
            flat[:-1] *= n_mine
            flat[-1] = loss * n_mine
        mean = self.dist.reduce_mean(flat, n)
        return float(mean[-1]), Params(mean[:-1].astype(rt.dtype), rt.info.params)

    def train_epoch(self, data):
        n = len(next(iter(data.values())))
        losses, skipped = [], 0
        for b, idx in enumerate(self._batches(n)):
            batch = {k: v[idx] for k, v in data.items()}
            if self.transform is not None:
                batch = self.transform(batch, self.rng)
            why = self._nonfinite(batch)
            loss = grads = None
            if why is None:
                loss, grads = self._loss_and_grad(batch)
                if not math.isfinite(loss):
                    why = f"the loss is {loss}"
                elif not math.isfinite(float(np.sum(grads.flat if hasattr(grads, "flat") else
                                                    [np.sum(g) for g in grads.values()]))):
                    why = "the gradient holds NaN or Inf (the loss is finite)"
            if why is not None:
                if self.nan == "raise":
                    raise ValueError(f"epoch {self.epoch}, batch {b}: {why}; pass nan='skip' to skip such batches")
                skipped += 1
                continue
            if self.clip is not None:
                _optim.clip_grad_norm(grads, self.clip)
            self.optimizer.step(grads)
            self.step_count += 1
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
            losses.append(loss)
            for cb in self.callbacks:
                cb.on_batch_end(self, self.step_count, {"loss": loss, "batch": b})
        logs = {"loss": float(np.mean(losses)) if losses else float("nan")}
        if skipped:
            logs["skipped_batches"] = skipped
        return logs

    def fit(self, train_data, epochs=10, val_data=None, val_split=None, early_stopping=None,
            checkpoint=None, resume=None):
        """Train for ``epochs`` epochs (counting those of a resumed run); returns the ``History``."""
        data = self.check_data(train_data)
        if val_split is not None:
            if val_data is not None:
                raise ValueError("give val_data or val_split, not both")
            if not 0 < val_split < 1:
                raise ValueError(f"val_split must be between 0 and 1, got {val_split}")
            n = len(next(iter(data.values())))
            perm = np.random.default_rng(self.seed + 1).permutation(n)
            n_val = max(1, int(round(n * val_split)))
            val_data = {k: v[perm[:n_val]] for k, v in data.items()}
            data = {k: v[perm[n_val:]] for k, v in data.items()}
        if val_data is not None:
            val_data = self.check_data(val_data, "validation data", finite=True)
        if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping("val_loss" if val_data is not None else "loss", patience=early_stopping)
        self.early = early_stopping
        callbacks = self.callbacks + ([early_stopping] if early_stopping is not None else [])
        if resume is not None:
            self.restore(resume)
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
                    logs.update(self.evaluate(val_data, prefix="val_"))
                logs["lr"] = float(next(iter(self.optimizer.lr.values())))
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
        checkpoint=None, resume=None, **trainer_options):
    # trainer_options include comm=MPI.COMM_WORLD for data-parallel training (gradc.distributed)
    """Train ``params`` (in place) on ``train_data``; returns the ``History``. See ``Trainer``.

    Example::

        hist = gradc.fit(mod, p, {"x": X, "y": Y}, epochs=20, optimizer="adam", lr=1e-3,
                         val_split=0.2, metrics=["loss", "accuracy"])
    """
    t = Trainer(module, params, **trainer_options)
    return t.fit(train_data, epochs=epochs, val_data=val_data, val_split=val_split,
                 early_stopping=early_stopping, checkpoint=checkpoint, resume=resume)


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

