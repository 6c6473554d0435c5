"""scikit-learn estimators over gradc models: ``GradcClassifier`` and ``GradcRegressor``.

Either a default MLP, built here with ``gradc.Model`` for the data's shape when ``fit`` first
sees it (``hidden_layer_sizes``, ``activation``, ``alpha`` as in scikit-learn's MLPs), or any
gradc model file (``model="path/model.py"``, ``model_name=`` to pick one of several)::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from gradc.sklearn import GradcClassifier, GradcRegressor

    clf = make_pipeline(StandardScaler(), GradcClassifier(hidden_layer_sizes=(32,), random_state=0))
    clf.fit(X, y).score(Xt, yt)
    risk = GradcClassifier(model="examples/risk/model.py", model_name="risk_logreg").fit(X, y)
    risk.predict_proba(X)[:, 1]

Training is ``gradc.fit``: full-batch L-BFGS with a strong-Wolfe line search by default
(``optimizer="lbfgs"``; one ``Trainer`` epoch per L-BFGS iteration, so ``loss_curve_`` has a
value per iteration), or minibatch ``"adam"`` / ``"sgd"`` (Nesterov momentum 0.9, as
scikit-learn's). The objective, with per-sample losses ``l_s`` and weights ``c_s`` (``sample_weight``
times the class weight of the sample's label), is scikit-learn MLP's::

    sum_s c_s l_s / sum_s c_s  +  alpha / (2 sum_s c_s) * sum of the squared weights (not biases)

so a weight of 0 is a removed sample and an integer weight k the sample repeated k times, and
the initial parameters depend on the shapes and ``random_state`` only (never on the number of
samples). Classifier losses: a single logit with binary cross-entropy for 2 classes, softmax
cross-entropy over C >= 3; regressor: half the squared error averaged over the outputs.

Two things L-BFGS meets that minibatch training does not: a relu network's loss has kinks, and
its minimum often lies on one (a hidden unit's input exactly 0 for some sample), where the
gradient does not vanish; training then ends when no step lowers the loss, even after a restart
of the L-BFGS history, before the gradient is below ``tol``. And a model file with dropout draws
new masks for every L-BFGS iteration (a trainer epoch): prefer adam or sgd for those.

Compiled modules are not picklable, so an estimator keeps what rebuilds its module (the default
MLP's shape, or the model file's path and source) and its parameters, ``params_``; the module
itself comes from gradc's build cache (``gradc.api.compile_model``) and, within a process, from a
table of loaded modules here, so a refit or an unpickled estimator finds it at once.
"""
import hashlib
import math
import os
import shutil
import tempfile
import threading
import warnings

import numpy as np

try:        # validate_data and __sklearn_tags__ are scikit-learn 1.6's
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as e:          # pragma: no cover (the test environment has a recent scikit-learn)
    raise ImportError(f"gradc.sklearn needs scikit-learn >= 1.6 (pip install 'scikit-learn>=1.6'): {e}") from e

from . import train as _train
from .optim import OPTIMIZERS

__all__ = ["GradcClassifier", "GradcRegressor"]

_ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
_OPTIMIZERS = ("lbfgs", "adam", "sgd")
_STOCHASTIC = ("adam", "sgd")
#: the default MLP's input, targets and sample-weight target; its frozen L2 coefficient
_X, _W, _ALPHA = "x", "w", "alpha"

# ---- compiled modules, by what rebuilds them ----------------------------------------

_LOCK = threading.RLock()
_LOADED = {}          # spec -> _Compiled


class _Compiled:
    """A loaded module and what the estimators need to know of its model: the shapes of its
    inputs, targets and outputs (and their dtypes), and for each output whether the model
    defines it as a probability (a sigmoid, or an ``exp`` of a softmax) or as a raw value."""

    def __init__(self, module, kinds):
        self.module = module
        self.kinds = kinds


def _mlp_model(task, n_features, n_outputs, hidden, activation):
    """The default MLP for one sample as a ``gradc.Model``.

    ``task`` is "binary" (a logit ``logit``, target ``y`` in {0, 1}, binary cross-entropy),
    "multiclass" (logits ``logits`` of length ``n_outputs``, int32 target ``label``, softmax
    cross-entropy) or "regression" (``pred`` of length ``n_outputs``, target ``y``, half the mean
    squared error over the outputs). Every per-sample loss is multiplied by the target ``w`` (the
    sample weight) and the L2 term is ``alpha * sum of squared weights``, ``alpha`` a parameter
    the estimator freezes at alpha / (2 sum of the sample weights). Weights and biases are drawn
    as scikit-learn's MLP draws them: U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (factor 2 for
    the logistic activation).
    """
    import gradc as gc
    sizes = "x".join(str(h) for h in hidden) or "linear"
    m = gc.Model(f"sklearn_{task}_{n_features}_{sizes}_{n_outputs}_{activation}")
    x = m.input(_X, n_features)
    if task == "multiclass":
        t = m.target("label", dtype="int32")
    elif task == "binary":
        t = m.target("y")
    else:
        t = m.target("y", n_outputs)
    w = m.target(_W)
    alpha = m.param(_ALPHA)
    factor = 2.0 if activation == "logistic" else 6.0
    act = {"relu": gc.relu, "tanh": gc.tanh, "logistic": gc.sigmoid, "identity": lambda h: h}[activation]
    h, fan_in, weights = x, n_features, []
    layers = list(hidden) + [1 if task == "binary" else n_outputs]
    for i, fan_out in enumerate(layers):
        a = math.sqrt(factor / (fan_in + fan_out))
        W = m.param(f"W{i}", (fan_out, fan_in), init=gc.init.uniform(-a, a))
        b = m.param(f"b{i}", fan_out, init=gc.init.uniform(-a, a))
        weights.append(W)
        h = W @ h + b
        if i < len(layers) - 1:
            h = act(h)
        fan_in = fan_out
    if task == "binary":
        z = m.output("logit", h[0])
        m.loss(w * gc.bce_with_logits(z, t))
    elif task == "multiclass":
        z = m.output("logits", h)
        m.loss(w * gc.softmax_cross_entropy(z, t))
    else:
        z = m.output("pred", h)
        m.loss(w * gc.mse(z, t) / 2)
    m.regularize(alpha * gc.sum_squares(*weights))
    return m


# The generated code cites the line of the model source that wrote each stage, and gradc's cache key
# holds those citations; gradc takes them from the innermost frame outside the gradc package, which
# for a model built here would be the caller of ``fit`` (a different line for every caller, so a
# cache miss for each). Built under this name instead, the default MLP cites its own lines, and one
# shape is one cache entry wherever ``fit`` is called from.
_mlp_model.__code__ = _mlp_model.__code__.replace(co_filename="<gradc.sklearn default MLP>")

def _output_kinds(model):
    """{output name: "proba" or "raw"}: "proba" for an output the model defines as a sigmoid (or,
    for a vector, as an ``exp`` of each element: a softmax), "raw" for anything else."""
    import sympy as sp

    from .functions import Sigmoid
    kinds = {name: "raw" for name in model.outputs}
    for d in model.defs:
        if d.name not in kinds:
            continue
        els = [d.body] if d.body is not None else list(d.elements or [])
        if els and all(isinstance(e, Sigmoid) or (d.shape and isinstance(e, sp.exp)) for e in els):
            kinds[d.name] = "proba"
    return kinds


def _sha256(text):
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _read_source(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def _compiled(spec, source=None):
    """The ``_Compiled`` for ``spec``, compiled (or taken from gradc's cache) on first use.

    ``spec`` is ``("mlp", task, n_features, n_outputs, dtype, hidden, activation)`` or ``("file",
    path, sha256 of its text, model name, dtype)``. A model file that has changed since (or is
    gone) is rebuilt from ``source``, the text it had, run from a private copy.
    """
    with _LOCK:
        hit = _LOADED.get(spec)
        if hit is not None:
            return hit
        from .api import compile_model
        if spec[0] == "mlp":
            _, task, n_features, n_outputs, dtype, hidden, activation = spec
            model = _mlp_model(task, n_features, n_outputs, hidden, activation)
        else:
            _, path, digest, name, dtype = spec
            try:
                same = _sha256(_read_source(path)) == digest
            except OSError:
                same = False
            if same:
                model = _model_from_file(path, name)
            elif source is None or _sha256(source) != digest:
                raise ValueError(f"the model file {path} has changed (or is gone) since this estimator was "
                                 "fitted, and the estimator does not hold the text it had")
            else:
                d = tempfile.mkdtemp(prefix="gradc-sklearn-")
                try:
                    copy = os.path.join(d, os.path.basename(path))
                    with open(copy, "wb") as f:
                        f.write(source.encode("utf-8", "surrogateescape"))
                    try:
                        model = _model_from_file(copy, name)
                    except ValueError as e:
                        raise ValueError(f"the model file {path} has changed (or is gone) since this estimator "
                                         f"was fitted, and its text as it was then does not load on its own: {e}") \
                            from e
                    hit = _Compiled(compile_model(model, dtype), _output_kinds(model))
                finally:
                    shutil.rmtree(d, ignore_errors=True)
                _LOADED[spec] = hit
                return hit
        hit = _LOADED[spec] = _Compiled(compile_model(model, dtype), _output_kinds(model))
        return hit


def _model_from_file(path, name):
    """The ``gradc.Model`` of a model file; its ``ModelError`` (a syntax error, no model, several
    models and no ``model_name``) as a ``ValueError``, as scikit-learn expects of a bad parameter."""
    from .api import load_model_file
    from .errors import ModelError
    try:
        return load_model_file(path, name)
    except ModelError as e:
        hint = " (an estimator picks one with model_name=)" if "several models" in str(e) else ""
        raise ValueError(f"{e}{hint}") from e


# ---- the estimators --------------------------------------------------------------------

def _stochastic(est):
    """``partial_fit`` exists for the minibatch optimizers only, as in scikit-learn's MLPs."""
    if est.optimizer not in _STOCHASTIC:
        raise AttributeError(f"partial_fit is only available for the stochastic optimizers {_STOCHASTIC}; "
                             f"optimizer={est.optimizer!r} is not one")
    return True


class _Monitor(_train.Callback):
    """Counts iterations, decides convergence and prints progress; restores and keeps the
    trainer's random generator so that ``partial_fit`` calls continue one stream.

    With L-BFGS each trainer epoch is one iteration (``max_iter=1`` per ``step``, the history
    carried from step to step, so the iterates are those of one long step). A step that leaves
    the parameters as they were ends training: the gradient is below ``tol`` (L-BFGS returns at
    once), or no step along the direction lowers the loss. The latter happens on a kink of a relu
    before the minimum; the history is then dropped and L-BFGS restarts from the gradient, and
    only a restart that cannot move either ends training. ``limit`` caps the iterations.
    """

    def __init__(self, est, full_batch, rng_state, check_convergence, limit):
        self.est, self.full_batch, self.rng_state = est, full_batch, rng_state
        self.check, self.limit = check_convergence, limit
        self.n_iter, self.converged, self.losses = 0, False, []
        self.best, self.bad_epochs, self.before, self.restarted = math.inf, 0, None, False

    def on_train_begin(self, trainer):
        if self.rng_state is not None:
            trainer.rng.bit_generator.state = self.rng_state

    def on_epoch_begin(self, trainer, epoch):
        if self.full_batch:
            self.before = trainer.params.flat.copy()

    def on_epoch_end(self, trainer, epoch, logs):
        loss = logs["loss"]
        if self.full_batch and np.array_equal(trainer.params.flat, self.before):
            if self.restarted or not self.losses:
                self.converged = True
                self.losses.append(loss)
                raise _train.StopTraining("converged")
            opt = trainer.optimizer
            opt.load_state_dict(dict(opt.state_dict(), lbfgs={}))
            self.restarted = True
            return
        self.restarted = False
        self.losses.append(loss)
        self.n_iter += 1
        if self.est.verbose:
            print(f"Iteration {getattr(self.est, 'n_iter_', 0) + self.n_iter}, loss = {loss:.8f}")
        if self.check and not self.full_batch:
            if loss > self.best - self.est.tol:
                self.bad_epochs += 1
            else:
                self.bad_epochs = 0
            self.best = min(self.best, loss)
            if self.bad_epochs > self.est.n_iter_no_change:
                self.converged = True
                raise _train.StopTraining("converged")
        if self.n_iter >= self.limit:
            raise _train.StopTraining("max_iter")

    def on_train_end(self, trainer):
        self.rng_state = trainer.rng.bit_generator.state


class _GradcEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the model, the training loop."""

    # ---- parameters ------------------------------------------------------------
    def _check_params(self):
        """The hyperparameters, checked (scikit-learn checks in ``fit``, never in ``__init__``)."""
        name = type(self).__name__
        if self.model is not None and not isinstance(self.model, (str, os.PathLike)):
            raise ValueError(f"{name}: model must be None or the path of a gradc model file, not {self.model!r}")
        raw = self.hidden_layer_sizes
        if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
            raw = (raw,)
        try:
            ok = all(not isinstance(h, (bool, str)) and float(h) == int(h) >= 1 for h in raw)
            hidden = tuple(int(h) for h in raw)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{name}: hidden_layer_sizes must be a tuple of whole numbers >= 1 (or () for a "
                             f"linear model), not {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {_ACTIVATIONS}, not {self.activation!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"{name}: optimizer must be one of {_OPTIMIZERS}, not {self.optimizer!r}")
        for key, lo in (("alpha", 0.0), ("tol", 0.0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(v) or v < lo:
                raise ValueError(f"{name}: {key} must be a finite number >= {lo}, not {v!r}")
        real = (int, float, np.integer, np.floating)
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, real)
                                    or not 0 < self.lr < math.inf):
            raise ValueError(f"{name}: lr must be None or a finite number > 0, not {self.lr!r}")
        for key in ("max_iter", "n_iter_no_change"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: {key} must be a whole number >= 1, not {v!r}")
        bs = self.batch_size
        if not (isinstance(bs, str) and bs == "auto") and \
                (isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1):
            raise ValueError(f"{name}: batch_size must be 'auto' or a whole number >= 1, not {bs!r}")
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError:
            dtype = None
        if dtype not in ("float32", "float64"):
            raise ValueError(f"{name}: dtype must be 'float64' or 'float32', not {self.dtype!r}")
        opts = self.optimizer_options
        if opts is not None and not isinstance(opts, dict):
            raise ValueError(f"{name}: optimizer_options must be None or a dict, not {opts!r}")
        return hidden, dtype

    # ---- the model ---------------------------------------------------------------
    def _file_spec(self, dtype):
        """(spec, source text) of the model file."""
        path = os.path.abspath(os.fspath(self.model))
        try:
            source = _read_source(path)
        except OSError as e:
            raise ValueError(f"{type(self).__name__}: cannot read the model file {self.model}: "
                             f"{e.strerror or e}") from None
        return ("file", path, _sha256(source), self.model_name, dtype), source

    def _file_io(self, compiled, n_features):
        """The input, target and output names of a model file's module, checked against the data:
        {"input", "target", "output", "kind"}, ``kind`` being the output's "proba" or "raw"."""
        mod, what = compiled.module, f"{type(self).__name__}: model {self.model}"
        if self.model_name is not None:
            what += f" ({self.model_name})"
        from .runtime import runtime_of
        masks = set(runtime_of(mod).info.dropout_inputs)
        inputs = [k for k in mod.input_shapes if k not in masks]

        def pick(given, names, kind):
            if given is not None:
                if given not in names:
                    raise ValueError(f"{what} has no {kind} {given!r}; it has {', '.join(map(repr, names)) or 'none'}")
                return given
            if len(names) != 1:
                raise ValueError(f"{what} has {len(names)} {kind}s ({', '.join(map(repr, names))}); "
                                 f"name the one to use with {kind}_name=")
            return names[0]

        # every input and target must be fed: X goes to the one input, y to the one target
        for kind, names in (("input", inputs), ("target", list(mod.target_shapes))):
            if len(names) > 1:
                raise ValueError(f"{what} has several {kind}s ({', '.join(map(repr, names))}); an estimator "
                                 f"feeds {'X' if kind == 'input' else 'y'} to a model with exactly one")
        inp = pick(self.input_name, inputs, "input")
        tgt = pick(self.target_name, list(mod.target_shapes), "target")
        out = pick(self.output_name, list(mod.output_shapes), "output")
        shape, dt = mod.input_shapes[inp], mod.input_dtypes[inp]
        if dt.kind != "f" or len(shape) != 1:
            raise ValueError(f"{what}: input {inp!r} has shape {shape} and dtype {dt}; an estimator needs a real "
                             "vector input (m.input(name, n_features))")
        if shape[0] != n_features:
            raise ValueError(f"{what}: input {inp!r} takes {shape[0]} features, but X has {n_features} "
                             f"features")
        return {"input": inp, "target": tgt, "output": out, "kind": compiled.kinds[out]}

    def _loaded(self):
        """The ``_Compiled`` of the fitted model (from this process's table, or rebuilt)."""
        return _compiled(self._spec, self._model_source)

    def _full_params(self, module):
        """``params_`` plus the parameters the estimator keeps to itself (the frozen alpha)."""
        from .runtime import Params, runtime_of
        info = runtime_of(module).info
        p = Params(np.zeros(info.n_params, dtype=np.dtype(info.dtype)), info.params)
        p.update(self.params_)
        if self._spec[0] == "mlp":
            p[_ALPHA] = 0.0
        return p

    def _outputs(self, X):
        """The fitted model's chosen output for X, as float64 (N, ...)."""
        check_is_fitted(self)
        c = self._loaded()
        X = validate_data(self, X, reset=False, dtype=c.module.input_dtypes[self._io["input"]], order="C")
        out = _train.predict(c.module, self._full_params(c.module), {self._io["input"]: X})[self._io["output"]]
        return np.asarray(out, dtype=np.float64)

    # ---- training ------------------------------------------------------------------
    def _seed(self):
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _optimizer(self, params, frozen, n, state):
        """The gradc optimizer object, and the batch size for ``gradc.fit``."""
        opts = dict(self.optimizer_options or {})
        if self.optimizer == "lbfgs":
            # one iteration per trainer epoch: the loss per iteration, and stopping by our rule;
            # the line search's budget of evaluations is torch's (25) after the first
            kw = dict(lr=1.0, max_eval=26, tolerance_grad=float(self.tol), tolerance_change=1e-15, history_size=10,
                      line_search_fn="strong_wolfe")
            kw.update(opts)
            kw["max_iter"] = 1
            opt = OPTIMIZERS["lbfgs"](params, frozen=frozen, **kw)
            return opt, None
        kw = dict(lr=1e-3)
        if self.optimizer == "sgd":
            kw.update(momentum=0.9, nesterov=True)
        if self.lr is not None:
            kw["lr"] = float(self.lr)
        kw.update(opts)
        opt = OPTIMIZERS[self.optimizer](params, frozen=frozen, **kw)
        if state is not None:
            opt.load_state_dict(state)
        bs = min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)
        return opt, bs

    def _train(self, module, params, data, frozen, epochs, incremental, weights=None):
        """Run ``gradc.fit``; update ``params_``, ``n_iter_``, ``loss_curve_``, ``loss_`` and the kept state."""
        n = len(next(iter(data.values())))
        # partial_fit continues the optimizer's state and the shuffling of the previous call (when
        # that call used the same optimizer); fit, also a warm start, begins them afresh
        kept = getattr(self, "_opt_state", None) if incremental else None
        keep = kept is not None and kept[0] == self.optimizer
        opt, bs = self._optimizer(params, frozen, n, kept[1] if keep else None)
        mon = _Monitor(self, self.optimizer == "lbfgs", self._rng_state if keep else None,
                       check_convergence=not incremental, limit=epochs)
        if self.optimizer == "lbfgs":       # room for restarts: the monitor stops at max_iter iterations
            epochs = 2 * epochs + 2
        kw = {}
        if weights is not None:
            kw["sample_weight"] = weights
        _train.fit(module, params, data, epochs=epochs, optimizer=opt, batch_size=bs, seed=self._seed_,
                   callbacks=[mon], progress=False, metrics=("loss",), **kw)
        self.params_ = {k: np.array(v) for k, v in params.items() if k not in frozen}
        self.n_iter_ = getattr(self, "n_iter_", 0) + mon.n_iter
        self.loss_curve_ = list(getattr(self, "loss_curve_", [])) + mon.losses
        self.loss_ = mon.losses[-1] if mon.losses else math.nan
        if self.optimizer in _STOCHASTIC:
            self._opt_state = (self.optimizer, opt.state_dict())
            self._rng_state = mon.rng_state
        if not incremental and not mon.converged:
            what = "L-BFGS" if self.optimizer == "lbfgs" else f"the stochastic optimizer {self.optimizer!r}"
            warnings.warn(f"{type(self).__name__}: {what} reached max_iter={self.max_iter} iterations without "
                          "converging; raise max_iter or tol", ConvergenceWarning)
        return self

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        hidden, dtype = self._check_params()
        fitted = hasattr(self, "params_")
        if incremental:
            _stochastic(self)
        fresh = not fitted or not (incremental or self.warm_start)
        np_dtype = np.dtype(dtype)
        if not fresh:          # continuing: the model of the earlier fit, its dtype
            np_dtype = self._loaded().module.input_dtypes[self._io["input"]]
        X, y = validate_data(self, X, y, reset=fresh, dtype=np_dtype, order="C", **self._y_checks())
        n, n_features = X.shape
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        target, weights = self._encode_targets(y, sw, fresh, incremental, classes)
        total = float(weights.sum())
        if not total > 0:
            raise ValueError("sample weights must not all be zero (after the class weights): "
                             "at least one sample needs a non-zero weight")
        if fresh:
            if self.model is None:
                spec, source = ("mlp", self._task, n_features, self._n_model_outputs, dtype, hidden,
                                self.activation), None
            else:
                spec, source = self._file_spec(dtype)
            compiled = _compiled(spec, source)
            if spec[0] == "mlp":
                io = {"input": _X, "target": "label" if self._task == "multiclass" else "y",
                      "output": {"binary": "logit", "multiclass": "logits"}.get(self._task, "pred"), "kind": "raw"}
            else:
                io = self._file_io(compiled, n_features)
            self._check_target_shape(compiled.module, io)
            self._spec, self._model_source, self._io = spec, source, io
            self._seed_ = self._seed()
            for k in ("n_iter_", "loss_curve_", "_opt_state", "_rng_state"):
                self.__dict__.pop(k, None)
            params = compiled.module.init_params(seed=self._seed_)
        else:
            compiled = self._loaded()
            params = self._full_params(compiled.module)
        mod = compiled.module
        data = {self._io["input"]: X, self._io["target"]: self._model_target(target, mod)}
        frozen, fit_weights = [], None
        if self._spec[0] == "mlp":
            data[_W] = (weights * (n / total)).astype(mod.target_dtypes[_W])
            params[_ALPHA] = float(self.alpha) / (2.0 * total)
            frozen = [_ALPHA]
        elif not np.all(weights == weights[0]):
            fit_weights = weights * (n / total)
        self._train(mod, params, data, frozen, 1 if incremental else int(self.max_iter), incremental, fit_weights)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags


class GradcClassifier(ClassifierMixin, _GradcEstimator):
    """A classifier over a gradc model: the default MLP, or a model file.

    The default MLP has ``hidden_layer_sizes`` hidden layers with ``activation``, and a single logit
    trained with binary cross-entropy for 2 classes (``decision_function`` is that logit,
    ``predict_proba`` its sigmoid) or C logits with softmax cross-entropy for C >= 3. Labels of any
    type are mapped through ``classes_`` (sorted, as ``numpy.unique`` sorts them).

    A model file (``model="path/model.py"``, ``model_name=`` when it defines several) needs one real
    vector input of the data's width (``input_name=``), one target (``target_name=``) and an output
    (``output_name=``), each inferred when the model has exactly one. The target decides the
    encoding of the labels: an int32 scalar gets the class index (the output has one value per
    class), a real scalar gets 0 / 1 (2 classes; the output is one value for class 1), a real vector
    of length C gets a one-hot row. An output defined as a sigmoid (or a softmax) is a probability,
    any other output a logit. ``hidden_layer_sizes``, ``activation`` and ``alpha`` apply to the
    default MLP only; a model file has its own regularization.

    Parameters
    ----------
    model, model_name, input_name, target_name, output_name : the model file and its names.
    hidden_layer_sizes : tuple of int, default (32,). ``()`` is logistic regression.
    activation : "relu" (default), "tanh", "logistic" or "identity".
    alpha : float, default 1e-4. L2 penalty, as scikit-learn's MLP: alpha / (2 sum of the sample
        weights) times the sum of the squared weights (not the biases), added to the mean loss.
    optimizer : "lbfgs" (default, full batch), "adam" or "sgd".
    lr : learning rate of adam and sgd (default 1e-3); L-BFGS picks its steps by line search.
    max_iter : int, default 200. L-BFGS iterations, or epochs of adam / sgd.
    batch_size : "auto" (min(200, n_samples)) or int; adam and sgd only.
    tol : float, default 1e-4. L-BFGS stops when the largest gradient component is at most ``tol``
        (or when no step lowers the loss); adam and sgd when the epoch's loss has not improved by
        ``tol`` for ``n_iter_no_change`` epochs in a row.
    n_iter_no_change : int, default 10.
    random_state : None, int or RandomState. Seeds the initial parameters and the shuffling.
    dtype : "float64" (default) or "float32": the compiled model's reals.
    warm_start : bool, default False. Continue from the fitted parameters.
    class_weight : None, dict {label: weight} or "balanced"; multiplies the sample weights.
    optimizer_options : dict or None: more options of the gradc optimizer (``history_size`` of
        L-BFGS, ``momentum`` of sgd, ``betas`` of adam, ...).
    verbose : bool, default False. Prints the loss of each iteration.

    Attributes
    ----------
    classes_, n_features_in_, feature_names_in_ (when X has string column names), params_ (dict
    name -> numpy array, the trained parameters), n_iter_, loss_curve_ (the loss at the start of
    each L-BFGS iteration, or the mean loss of each epoch), loss_ (the last of them).

    Example::

        clf = GradcClassifier(hidden_layer_sizes=(16,), random_state=0).fit(X, y)
        clf.predict_proba(X[:3]), clf.score(X, y)
    """

    def __init__(self, model=None, *, model_name=None, input_name=None, target_name=None, output_name=None,
                 hidden_layer_sizes=(32,), activation="relu", alpha=1e-4, optimizer="lbfgs", lr=None,
                 max_iter=200, batch_size="auto", tol=1e-4, n_iter_no_change=10, random_state=None,
                 dtype="float64", warm_start=False, class_weight=None, optimizer_options=None, verbose=False):
        self.model = model
        self.model_name = model_name
        self.input_name = input_name
        self.target_name = target_name
        self.output_name = output_name
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.optimizer = optimizer
        self.lr = lr
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.dtype = dtype
        self.warm_start = warm_start
        self.class_weight = class_weight
        self.optimizer_options = optimizer_options
        self.verbose = verbose

    def fit(self, X, y, sample_weight=None):
        """Train on X (n_samples, n_features) and labels y; returns self.

        ``sample_weight`` (n_samples non-negative floats): a weight of 0 is the sample removed, an
        integer weight k the sample repeated k times.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(_stochastic)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch of adam or sgd on (X, y), continuing the optimizer's state; returns self.

        The first call needs ``classes``, every label there will ever be (as scikit-learn's).
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    # ---- labels --------------------------------------------------------------------
    def _y_checks(self):
        return {}

    def _encode_targets(self, y, sw, fresh, incremental, classes):
        check_classification_targets(y)
        if fresh:
            if incremental:
                if classes is None:
                    raise ValueError("partial_fit needs classes= on its first call: every label there will be")
                self.classes_ = np.unique(np.asarray(classes))
            else:
                self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; the data has "
                                 f"{len(self.classes_)} class ({', '.join(map(repr, self.classes_))})")
        elif incremental and classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"partial_fit got classes={list(np.unique(np.asarray(classes)))}, but the first call "
                             f"had {list(self.classes_)}")
        elif not incremental:           # warm start: the same classes as before
            if not np.array_equal(np.unique(y), self.classes_):
                raise ValueError(f"warm_start needs y with the same classes as the earlier fit {list(self.classes_)}, "
                                 f"got {list(np.unique(y))}")
        idx = np.searchsorted(self.classes_, y)
        bad = (idx >= len(self.classes_)) | (self.classes_[np.minimum(idx, len(self.classes_) - 1)] != y)
        if np.any(bad):
            raise ValueError(f"y holds the label {y[np.argmax(bad)]!r}, which is not among classes_ "
                             f"{list(self.classes_)}")
        cw = self.class_weight
        if cw is not None:
            if incremental and isinstance(cw, str):
                raise ValueError("class_weight='balanced' is not supported by partial_fit: the class frequencies of "
                                 "one batch are not those of the data; give a dict, or use fit")
            w = compute_class_weight(cw, classes=self.classes_, y=y, sample_weight=sw) \
                if isinstance(cw, str) else compute_class_weight(cw, classes=self.classes_, y=y)
            sw = sw * w[idx]
        return idx, sw

    @property
    def _task(self):
        return "binary" if len(self.classes_) == 2 else "multiclass"

    @property
    def _n_model_outputs(self):
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _check_target_shape(self, module, io):
        C = len(self.classes_)
        tshape, tdtype = module.target_shapes[io["target"]], module.target_dtypes[io["target"]]
        oshape = module.output_shapes[io["output"]]
        what = f"{type(self).__name__}: model {self.model}"
        if tdtype.kind in "iu":
            if tshape != ():
                raise ValueError(f"{what}: an int32 target must be a scalar (a class index), not shape {tshape}")
            ok, want = oshape == (C,), f"({C},), one value per class"
            mode = "index"
        elif tshape == ():
            if C != 2:
                raise ValueError(f"{what}: a real scalar target {io['target']!r} takes 0 / 1 labels: 2 classes, "
                                 f"but y has {C}; use an int32 target for more")
            ok, want, mode = oshape == (), "(), one value for the second class", "binary"
        else:
            ok, want, mode = tshape == (C,) and oshape == (C,), f"({C},), one value per class", "onehot"
        if not ok:
            raise ValueError(f"{what}: with {C} classes the target {io['target']!r} (shape {tshape}) and output "
                             f"{io['output']!r} (shape {oshape}) do not fit; the output needs shape {want}")
        io["mode"] = mode

    def _model_target(self, idx, module):
        mode = self._io.get("mode", "index")
        dt = module.target_dtypes[self._io["target"]]
        if mode == "index" and dt.kind in "iu":
            return idx.astype(np.int32)
        if mode == "onehot":
            return np.eye(len(self.classes_), dtype=dt)[idx]
        return idx.astype(dt)

    # ---- predictions ---------------------------------------------------------------
    def decision_function(self, X):
        """Logits: shape (n_samples,) for 2 classes (positive: ``classes_[1]``), else (n_samples, n_classes).

        For a model file whose output is a probability: its log-odds (2 classes) or log-probabilities.
        """
        z = self._outputs(X)
        if self._io["kind"] == "proba":
            with np.errstate(divide="ignore"):
                z = np.log(z) - np.log1p(-z) if z.ndim == 1 else np.log(z)
        return z

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``."""
        from scipy.special import expit, softmax
        z = self._outputs(X)
        if z.ndim == 1:
            p1 = z if self._io["kind"] == "proba" else expit(z)
            return np.column_stack([1.0 - p1, p1]) if self._io["kind"] == "proba" else \
                np.column_stack([expit(-z), p1])
        if self._io["kind"] == "proba":
            return z / z.sum(axis=1, keepdims=True)
        return softmax(z, axis=1)

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable label of each row, from ``classes_``."""
        z = self._outputs(X)
        if z.ndim == 1:
            k = (z > (0.5 if self._io["kind"] == "proba" else 0.0)).astype(int)
        else:
            k = np.argmax(z, axis=1)
        return self.classes_[k]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        return tags


class GradcRegressor(RegressorMixin, _GradcEstimator):
    """A regressor over a gradc model: the default MLP (linear outputs, half the squared error), or a
    model file whose target (a real scalar, or a real vector of the outputs) and output have y's shape.

    ``y`` may be 1-d (predictions are 1-d) or 2-d (n_samples, n_outputs). The parameters are the
    classifier's (``GradcClassifier``), without ``class_weight``; ``hidden_layer_sizes=()`` is
    linear (ridge) regression.

    Example::

        reg = GradcRegressor(hidden_layer_sizes=(16,), random_state=0).fit(X, y)
        reg.predict(X[:3]), reg.score(X, y)
    """

    def __init__(self, model=None, *, model_name=None, input_name=None, target_name=None, output_name=None,
                 hidden_layer_sizes=(32,), activation="relu", alpha=1e-4, optimizer="lbfgs", lr=None,
                 max_iter=200, batch_size="auto", tol=1e-4, n_iter_no_change=10, random_state=None,
                 dtype="float64", warm_start=False, optimizer_options=None, verbose=False):
        self.model = model
        self.model_name = model_name
        self.input_name = input_name
        self.target_name = target_name
        self.output_name = output_name
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.optimizer = optimizer
        self.lr = lr
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.dtype = dtype
        self.warm_start = warm_start
        self.optimizer_options = optimizer_options
        self.verbose = verbose

    def fit(self, X, y, sample_weight=None):
        """Train on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_outputs); returns self.

        ``sample_weight`` (n_samples non-negative floats): a weight of 0 is the sample removed, an
        integer weight k the sample repeated k times.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch of adam or sgd on (X, y), continuing the optimizer's state; returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _y_checks(self):
        return {"multi_output": True, "y_numeric": True}

    def _encode_targets(self, y, sw, fresh, incremental, classes):
        y2 = y.reshape(len(y), -1)
        if fresh:
            self._y_ndim = y.ndim
            self.n_outputs_ = y2.shape[1]
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2.shape[1]} outputs, but {type(self).__name__} was fitted with "
                             f"{self.n_outputs_}")
        return y2, sw

    _task = "regression"

    @property
    def _n_model_outputs(self):
        return self.n_outputs_

    def _check_target_shape(self, module, io):
        k = self.n_outputs_
        tshape, tdtype = module.target_shapes[io["target"]], module.target_dtypes[io["target"]]
        oshape = module.output_shapes[io["output"]]
        what = f"{type(self).__name__}: model {self.model}"
        if tdtype.kind != "f":
            raise ValueError(f"{what}: target {io['target']!r} is {tdtype}; a regressor needs a real target")
        if not ((tshape == (k,) or (tshape == () and k == 1)) and oshape == tshape):
            raise ValueError(f"{what}: y has {k} output(s), but the target {io['target']!r} has shape {tshape} "
                             f"and the output {io['output']!r} shape {oshape}; both need shape "
                             f"{'() or (1,)' if k == 1 else (k,)}")

    def _model_target(self, y2, module):
        shape = module.target_shapes[self._io["target"]]
        return y2.reshape((len(y2),) + shape).astype(module.target_dtypes[self._io["target"]])

    def predict(self, X):
        """Predictions: (n_samples,) when fitted on a 1-d y, else (n_samples, n_outputs)."""
        z = self._outputs(X)
        z = z.reshape(len(z), -1)
        return z.ravel() if self._y_ndim == 1 else z

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
