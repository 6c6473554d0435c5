"""The command line: ``gradc compile | show``.

    gradc compile MODEL.py [-o OUTDIR] [--name NAME] [--dtype float32|float64] [--target c|cuda]
    gradc show MODEL.py [--latex]

A mistake in a model file prints one message naming the file and line and
exits with status 2; ``--debug`` shows the Python traceback instead.
"""
import argparse
import json
import keyword
import os
import sys
import time

from .errors import BuildError, GradcError, ModelError, OutputError
from .optim import available as available_optimizers
from .targets import get_target
from .targets import names as target_names


def _either(names):
    """``"a, b or c"``."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _parser():
    p = argparse.ArgumentParser(prog="gradc", description="A symbolic-to-source gradient compiler.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="write NAME.c, NAME.h and an importable module NAME")
    c.add_argument("model_file")
    c.add_argument("-o", "--outdir", default="build")
    c.add_argument("--name", help="module and C prefix (default: the model's name)")
    c.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    c.add_argument("--target", choices=target_names(), default="c",
                   help="; ".join(f"{t}: {get_target(t).description}" for t in target_names()))
    c.add_argument("--model", help="which model, when the file defines several")
    c.add_argument("--force", action="store_true", help="replace files in OUTDIR that gradc did not write")
    c.add_argument("--debug", action="store_true", help="show Python tracebacks")
    e = sub.add_parser("export", help="write NAME.h, NAME.c (and NAME_weights.c) for another program")
    e.add_argument("model_file")
    e.add_argument("-o", "--outdir", default="export")
    e.add_argument("--weights", help="trained parameters: a checkpoint, or an .npz of arrays by parameter name")
    e.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="float64 (default) or float32; an int8 export's inputs and outputs are float32")
    e.add_argument("--inference-only", action="store_true", help="forward only: smallest code and workspace")
    e.add_argument("--trainable", metavar="NAMES",
                   help="comma-separated parameters the device trains (fine-tuning: W3,b3); the others become "
                        "constants of NAME.c from --weights, and params, grad and Adam's state hold these only")
    e.add_argument("--lanes", type=int, default=16, metavar="N",
                   help="samples per block, fixed in NAME.c (default 16, vectorized; 1: the least memory, for a "
                        "device that classifies one input at a time)")
    e.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 inference: integer dense and convolution stages, weights as int8 constants of "
                        "NAME.c; needs --weights and --calibrate, and prints which stages stay in float")
    e.add_argument("--calibrate", metavar="DATA.npz",
                   help="with --quantize: typical inputs, one array per input name, that set the int8 ranges")
    e.add_argument("--test-vectors", type=int, default=0, metavar="N",
                   help="also write NAME_selftest.c: N inputs and the outputs expected with --weights")
    e.add_argument("--name", help="C prefix (default: the model's name)")
    e.add_argument("--model", help="which model, when the file defines several")
    e.add_argument("--force", action="store_true", help="replace files in OUTDIR that gradc did not write")
    e.add_argument("--debug", action="store_true", help="show Python tracebacks")
    t = sub.add_parser("train", help="train a model on data from an .npz file")
    t.add_argument("model_file")
    t.add_argument("--data", required=True, help=".npz with one array per input and target, by name")
    t.add_argument("-o", "--outdir", default="run", help="where the checkpoint and history go (default: run)")
    t.add_argument("--epochs", type=int, default=10,
                   help="epochs in all, counting those of a resumed run (at least 1; default 10)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="samples per step (default: 32; with --optimizer lbfgs, the whole training set)")
    t.add_argument("--optimizer", default="adam", help=_either(available_optimizers()))
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the optimizer's); with --resume, the checkpoint's unless "
                        "given: a given --lr other than the checkpoint's replaces it, and gradc says so")
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--momentum", type=float, default=None, help="for sgd and rmsprop")
    t.add_argument("--val-split", type=float, default=None,
                   help="fraction of the data held out for validation (with --resume: the checkpoint's, "
                        "which need not be given again)")
    t.add_argument("--metrics", default="loss",
                   help="comma-separated: loss, accuracy, mse, rmse, auc; on the validation data (val_...) "
                        "with --val-split, else on the training data (train_...)")
    t.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE")
    t.add_argument("--sample-weight", default=None, metavar="ARRAY",
                   help="weight each sample's loss by this array of --data (one value >= 0 per sample)")
    t.add_argument("--class-weight", default=None, metavar="balanced|LABEL:W,...",
                   help="weight each class's loss: 'balanced' (n / (classes * count)) or e.g. 0:1,1:5")
    t.add_argument("--dp", default=None, metavar="NOISE,CLIP,DELTA",
                   help="DP-SGD: noise multiplier, per-sample gradient bound, delta (e.g. 1.0,1.0,1e-5)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None, help="checkpoint path (default: OUTDIR/checkpoint.npz)")
    t.add_argument("--resume", default=None,
                   help="resume from this checkpoint; it must be the same run: a changed --optimizer, "
                        "--batch-size, --freeze, --val-split, --seed (with --val-split), --dtype, --momentum "
                        "or --weight-decay is refused, naming the setting (only --lr and --epochs may change); "
                        "the validation split is the checkpoint's, the same rows held out")
    t.add_argument("--init", default=None, help="start from the parameters of this checkpoint (fine-tuning)")
    t.add_argument("--freeze", default="", help="comma-separated parameters to keep fixed (not all of them)")
    t.add_argument("--nan", choices=("stop", "skip"), default="stop",
                   help="a batch whose loss or gradient is NaN or Inf: stop with a message (default), or skip it")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    t.add_argument("--model", help="which model, when the file defines several")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument("--debug", action="store_true", help="show Python tracebacks")
    s = sub.add_parser("show", help="print the forward definitions and their symbolic gradients")
    s.add_argument("model_file")
    s.add_argument("--latex", action="store_true", help="print LaTeX instead of text")
    s.add_argument("--model", help="which model, when the file defines several")
    s.add_argument("--debug", action="store_true", help="show Python tracebacks")
    return p


def shadowing(cwd=None):
    """What in ``cwd`` would shadow this gradc for Python run there (``import gradc`` would import
    it instead), as a path, or None: a ``gradc.py``, or a ``gradc/`` package that is not this one."""
    cwd = cwd or os.getcwd()
    ours = os.path.dirname(os.path.abspath(__file__))
    mod, pkg = os.path.join(cwd, "gradc.py"), os.path.join(cwd, "gradc")
    if os.path.isfile(mod):
        return mod
    if os.path.isfile(os.path.join(pkg, "__init__.py")) and os.path.realpath(pkg) != os.path.realpath(ours):
        return pkg + os.sep
    return None


def main(argv=None):
    args = _parser().parse_args(argv)
    shadow = shadowing()
    if shadow is not None:      # this process has gradc; a script run here with python would not
        print(f"gradc: warning: {shadow} shadows the gradc package for Python run in this folder (there "
              "`import gradc` imports it, not gradc: rename it)", file=sys.stderr)
    try:
        return {"compile": cmd_compile, "show": cmd_show, "train": cmd_train, "export": cmd_export}[args.cmd](args)
    except (ModelError, OutputError) as e:
        if args.debug:
            raise
        print(f"gradc: error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        if args.debug:
            raise
        print(f"gradc: build failed: {e}", file=sys.stderr)
        return 1
    except GradcError as e:
        if args.debug:
            raise
        print(f"gradc: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        if args.debug or args.cmd not in ("train", "export"):
            raise
        print(f"gradc: error: {e}", file=sys.stderr)
        return 2


def _load(args):
    import faulthandler

    from .api import default_timeout, load_model_file
    # a model file stuck inside C code never returns to the interpreter, where the time limit
    # of load_model_file acts: a watchdog thread then ends the process (exit 1) with a traceback
    limit = default_timeout()
    watchdog = False
    if limit > 0:
        try:
            faulthandler.dump_traceback_later(limit + 5, exit=True)
            watchdog = True
        except (ValueError, OSError, AttributeError):   # stderr without a file descriptor
            pass
    try:
        return load_model_file(args.model_file, args.model)
    finally:
        if watchdog:
            faulthandler.cancel_dump_traceback_later()


def cmd_compile(args):
    from .api import build_model, prepare_outputs
    from .codegen.names import ident
    t0 = time.perf_counter()
    model = _load(args)
    if args.name:
        model.name = args.name
    modname = module_name(ident(model.name, "model"))
    for attempt in range(3):
        entry, meta = build_model(model, args.dtype, args.target)
        M = meta["prefix"]
        src_name = M + get_target(args.target).suffix
        try:        # read into memory first: another process's eviction may remove the entry any time
            blobs = {}
            for fn in (src_name, f"{M}.h", meta["so"]):
                with open(os.path.join(entry, fn), "rb") as f:
                    blobs[fn] = f.read()
            break
        except FileNotFoundError:
            if attempt == 2:
                raise BuildError(f"the cache entry {entry} was removed while it was copied, three times "
                                 "(other processes evicting? raise GRADC_CACHE_MAX_BYTES)") from None
    meta_file = f"{modname}.gradc.json"
    # all checked before any is written: a compile never replaces the user's own files
    prepare_outputs(args.outdir, [src_name, f"{M}.h", meta["so"], meta_file, f"{modname}.py"],
                    args.force, "compile", protect=[args.model_file])
    from .api import write_output
    for fn, data in blobs.items():
        write_output(os.path.join(args.outdir, fn), data)
    _write(os.path.join(args.outdir, meta_file), json.dumps(meta, indent=1, sort_keys=True))
    from importlib import resources

    import jinja2
    from . import __version__
    tpl = jinja2.Template(resources.files("gradc.templates").joinpath("python/module.py.j2").read_text(),
                          keep_trailing_newline=True)
    _write(os.path.join(args.outdir, f"{modname}.py"),
           tpl.render(module=modname, meta_file=meta_file, version=__version__))
    dt = time.perf_counter() - t0
    print(f"gradc: wrote {os.path.join(args.outdir, src_name)}, {M}.h and module {modname} "
          f"({meta['n_params']} parameters, {args.dtype}, target {args.target}) in {dt:.2f} s")
    return 0


# modules the generated wrapper imports, which a module of the same name would shadow
_SHADOWED = {"gradc", "numpy", "cffi", "_cffi_backend", "sympy", "jinja2"}


def module_name(c_name):
    """The Python module name for a model: its C name, unless that is a keyword or shadows a
    module the wrapper needs (``json``, ``numpy``, ...); then with ``_model`` appended."""
    stdlib = getattr(sys, "stdlib_module_names", set())
    if keyword.iskeyword(c_name) or c_name in stdlib or c_name in _SHADOWED:
        return c_name + "_model"
    return c_name


def _write(path, text):
    from .api import write_output
    write_output(path, text.encode())


def cmd_export(args):
    from .api import export
    model = _load(args)
    if args.name:
        model.name = args.name
    if args.calibrate and not args.quantize:
        raise ModelError("--calibrate is for --quantize int8", where=None)
    if args.quantize and args.dtype == "float64":
        raise ModelError("an int8 export takes and returns float32: drop --dtype float64", where=None)
    dtype = args.dtype or ("float32" if args.quantize else "float64")
    written = export(model, args.outdir, args.weights, dtype, args.inference_only, force=args.force,
                     test_vectors=args.test_vectors, lanes=args.lanes,
                     trainable=None if args.trainable is None else [n for n in args.trainable.split(",") if n],
                     quantize=args.quantize, calibrate=args.calibrate)
    if args.quantize:
        print(f"gradc: {args.quantize} export, how each stage runs:")
        for line in written.report:
            print("  " + line)
    print(f"gradc: wrote {', '.join(written)}")
    return 0


def _class_weight_option(text):
    """--class-weight: None, "balanced", or {label: weight} from "0:1,1:5"."""
    if text is None or text == "balanced":
        return text
    out = {}
    for part in text.split(","):
        label, sep, w = part.partition(":")
        try:
            out[int(label)] = float(w)
        except ValueError:
            raise ValueError(f"--class-weight: {part!r} is not LABEL:WEIGHT (e.g. 0:1,1:5), nor is the "
                             "option 'balanced'") from None
    return out


def _dp_option(text):
    """--dp NOISE,CLIP,DELTA as fit's dp dict."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        noise, clip, delta = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"--dp {text}: give three numbers, NOISE,CLIP,DELTA (e.g. 1.0,1.0,1e-5)") from None
    return dict(noise_multiplier=noise, max_grad_norm=clip, delta=delta)


def cmd_train(args):
    from .api import compile_model
    from .distributed import world_from_environment
    from .npz import NpzError, read_npz
    from .train import Callback, Trainer, load_checkpoint
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, not {args.epochs} (it counts all epochs, "
                         "those of a resumed run included)")
    comm = world_from_environment()            # under mpiexec -n N: data-parallel over N ranks
    root = comm is None or comm.Get_rank() == 0
    model = _load(args)
    mod = compile_model(model, args.dtype)
    try:
        data = read_npz(args.data, "--data")
    except NpzError as e:
        raise ValueError(f"cannot read --data {args.data}: {e.why}") from None
    weights = None
    if args.sample_weight is not None:
        if args.sample_weight not in data:
            raise ValueError(f"--sample-weight {args.sample_weight}: --data has no such array "
                             f"(it has {', '.join(sorted(data))})")
        weights = data.pop(args.sample_weight)
    params = mod.init_params(seed=args.seed)
    if args.init:
        pre, _ = load_checkpoint(args.init, mod)
        for k in params:
            params[k][...] = pre[k]
    opt_kw = {k: v for k, v in (("weight_decay", args.weight_decay), ("momentum", args.momentum)) if v is not None}
    if root:
        os.makedirs(args.outdir, exist_ok=True)
    ckpt = args.checkpoint or os.path.join(args.outdir, "checkpoint.npz")
    start = {}

    class Lines(Callback):
        def on_train_begin(self, trainer):
            start["epoch"] = trainer.epoch
            if args.resume:
                _resumed_settings(trainer, args, opt_kw, root)
            named = [m for m in trainer.metrics if m != "loss"]
            if named and trainer.val_split is None and root and not args.quiet:
                print(f"gradc: no --val-split: {', '.join(named)} on the training data "
                      f"({', '.join('train_' + m for m in named)}); add --val-split 0.2 to hold out data "
                      "for validation", flush=True)
            elif args.resume and args.val_split is None and trainer.val_split is not None and root:
                print(f"gradc: resuming with the checkpoint's validation split ({trainer.val_split:g}, the same "
                      "rows held out)", flush=True)

        def on_epoch_end(self, trainer, epoch, logs):
            if not args.quiet and root:
                print(f"epoch {epoch + 1:4d}  " + "  ".join(
                    f"{k} {v:.5g}" for k, v in logs.items()
                    if isinstance(v, float) and k not in ("seconds", "lr", "epoch")), flush=True)

    trainer = Trainer(mod, params, optimizer=args.optimizer, lr=args.lr, optimizer_options=opt_kw,
                      frozen=[f for f in args.freeze.split(",") if f], batch_size=args.batch_size,
                      seed=args.seed, metrics=[m for m in args.metrics.split(",") if m], callbacks=[Lines()],
                      progress=False, comm=comm, nan="skip" if args.nan == "skip" else "raise",
                      dp=_dp_option(args.dp))
    trainer.nan_advice = "run with --nan skip to skip such batches"
    try:
        hist = trainer.fit(data, epochs=args.epochs, val_split=args.val_split, checkpoint=ckpt,
                           resume=args.resume, early_stopping=args.early_stopping, sample_weight=weights,
                           class_weight=_class_weight_option(args.class_weight))
    except KeyboardInterrupt:
        print(f"gradc: interrupted; the last complete epoch is in {ckpt}", file=sys.stderr)
        return 130
    if not root:
        return 0
    if trainer.epoch == start.get("epoch"):
        print(f"gradc: nothing to train: {args.resume} already holds {trainer.epoch} epochs "
              f"(--epochs {args.epochs}); ask for more epochs to train on")
        return 0
    hist.to_csv(os.path.join(args.outdir, "history.csv"))
    hist.to_json(os.path.join(args.outdir, "history.json"))
    wrote = [ckpt, "history.csv", "history.json"]
    try:
        hist.plot(os.path.join(args.outdir, "loss.png"))
        wrote.append("loss.png")
    except ImportError:
        pass
    ranks = f" on {comm.Get_size()} ranks" if comm is not None else ""
    print(f"gradc: trained {len(hist.get('epoch', []))} epochs{ranks}; wrote {', '.join(wrote)} in {args.outdir}")
    return 0


def _resumed_settings(trainer, args, opt_kw, root):
    """After ``--resume`` restored the checkpoint's optimizer: refuse a given --momentum or
    --weight-decay other than the checkpoint's; apply a given --lr other than its, and say so."""
    opt = trainer.optimizer
    live = [k for k in opt.params if k in opt.lr]
    for option, value in opt_kw.items():
        was = {opt.hyper(k).get(option) for k in live}
        if was != {value}:
            raise ValueError(f"--resume {args.resume}: it was trained with --{option.replace('_', '-')} "
                             f"{', '.join(map(str, sorted(was, key=str)))}, this run gives {value}: training on "
                             "would not continue that run (drop the option, or start a new run with --init)")
    if args.lr is not None:
        was = {opt.lr[k] for k in live}
        if was != {args.lr}:
            for k in live:
                opt.lr[k] = args.lr
            if root:
                print(f"gradc: resuming {args.resume} with --lr {args.lr} (its learning rate was "
                      f"{', '.join(f'{v:g}' for v in sorted(was))})", flush=True)


def cmd_show(args):
    from .api import deep_guard
    from .autodiff import differentiate
    from .ir import lower
    from .show import listing
    prog = lower(_load(args).spec())
    with deep_guard(prog, "differentiating and printing"):
        text = listing(prog, differentiate(prog), latex=args.latex)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
