"""int8 beside float32: the digits MLP and the digits CNN, trained as their examples train them,
exported both ways, built with gcc and run in C on the same 359 test images.

    python examples/int8/compare.py [--cc gcc] [--keep DIR]

For each model: ``gradc export --dtype float32 --inference-only --lanes 1`` (with its weights file)
and ``gradc export --quantize int8 --calibrate`` (on the training images); the C of each is built
with ``-Os`` beside ``driver.c``, which classifies the test images; the int8 outputs are checked to
equal gradc's Python reference of the integer path bit for bit. Prints the README's table: test
accuracy, flash (code plus constants: ``size`` text + data of the model's object files) and RAM
(the workspace; the weights are constants in both). tests/test_int8.py checks the README against it.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.dirname(HERE)
MODELS = {"digits": ("digits 64-32-10 MLP, tanh", (64,)), "digits_cnn": ("digits_cnn, 2 conv + dense", (1, 8, 8))}


def _example(name):
    path = os.path.join(EXAMPLES, name, "train.py")
    spec = importlib.util.spec_from_file_location(f"gradc_example_{name}_train_int8", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sh(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p.stdout


def _flash(cc, objs, cwd):
    size = os.path.join(os.path.dirname(cc), "size") if os.path.isabs(cc) else "size"
    out = _sh([size, "-A", *objs], cwd)
    total = 0
    for m in re.finditer(r"^(\.\S+)\s+(\d+)", out, re.M):
        if m.group(1).startswith((".text", ".rodata", ".data")):
            total += int(m.group(2))
    return total


def run(name, work, cc="gcc", quiet=True):
    """(float32 accuracy, int8 accuracy, float32 flash, int8 flash, float32 RAM, int8 RAM, float stages)."""
    import gradc
    from gradc.api import export, load_model_file
    from gradc.quantize import plan
    from gradc.api import lower_model, read_weights
    _, shape = MODELS[name]
    ex = _example(name)
    weights = os.path.join(work, f"{name}.npz")
    argv = ["--save", weights]
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        ex.main(argv)
    split = _example("digits").load_split()
    (X, _), (Xt, yt) = split
    X, Xt = X.reshape((-1,) + shape), Xt.reshape((-1,) + shape).astype(np.float32)
    model = load_model_file(os.path.join(EXAMPLES, name, "model.py"))
    d32, d8 = os.path.join(work, name + "_f32"), os.path.join(work, name + "_int8")
    export(model, d32, weights=weights, dtype="float32", inference_only=True, lanes=1, force=True)
    export(model, d8, weights=weights, quantize="int8", calibrate={"x": X}, force=True)
    Xt.tofile(os.path.join(work, "x.bin"))
    res = {}
    for kind, d in (("float32", d32), ("int8", d8)):
        srcs = [os.path.join(d, f"{name}.c")] + ([os.path.join(d, f"{name}_weights.c")] if kind == "float32" else [])
        objs = []
        for s in srcs:
            o = os.path.join(work, f"{kind}-{os.path.basename(s)}.o")
            _sh([cc, "-std=c99", "-Os", "-c", s, "-o", o], work)
            objs.append(o)
        exe = os.path.join(work, f"{name}-{kind}")
        _sh([cc, "-std=c99", "-O2", f'-DGRADC_HEADER="{name}.h"', f"-I{d}"] +
            (["-DGRADC_INT8"] if kind == "int8" else []) +
            [os.path.join(HERE, "driver.c"), *objs, "-o", exe, "-lm"], work)
        out_bin = os.path.join(work, f"{kind}-out.bin")
        ram = int(_sh([exe, str(len(Xt)), os.path.join(work, "x.bin"), out_bin], work).split()[0])
        logits = np.fromfile(out_bin, dtype=np.float32).reshape(len(Xt), -1)
        res[kind] = (float((logits.argmax(1) == yt).mean()), _flash(cc, objs, work), ram, logits)
    prog = lower_model(model)
    qp = plan(prog, read_weights(weights, prog), {"x": X})
    ref = qp.reference({"x": Xt})["logits"]
    if not np.array_equal(ref.view(np.uint32), res["int8"][3].view(np.uint32)):
        sys.exit(f"{name}: the int8 C differs from gradc's Python reference of the integer path")
    del gradc
    return (res["float32"][0], res["int8"][0], res["float32"][1], res["int8"][1], res["float32"][2],
            res["int8"][2], qp.float_stages)


def table(rows):
    lines = ["| model | export | test accuracy | flash (code + constants) | RAM (workspace) |",
             "|---|---|---:|---:|---:|"]
    for name, r in rows.items():
        label = MODELS[name][0]
        lines.append(f"| {label} | float32 | {r[0]:.1%} | {r[2]:,} B | {r[4]:,} B |")
        lines.append(f"| {label} | int8 | {r[1]:.1%} | {r[3]:,} B | {r[5]:,} B |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="gcc")
    ap.add_argument("--keep", help="work in this folder (default: a temporary one)")
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        for name in MODELS:
            rows[name] = run(name, work, args.cc)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
