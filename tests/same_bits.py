"""Bit-for-bit comparison of what the compiled modules compute, before and after a compiler change.

For every example model, the workload models and 40 seeded fuzz models, in float64 and float32,
this records ``forward``, ``loss``, ``loss_and_grad``, two threads' ``loss_and_grad`` and one fused
SGD and Adam step on fixed random batches, as raw bytes. ``--save FILE`` writes the record;
``--check FILE`` recomputes it with the gradc on ``sys.path`` and lists every array that differs in
a single bit. A refactor of the code generator that claims "same bits" runs both::

    git stash; python tests/same_bits.py --save /tmp/before.npz; git stash pop
    python tests/same_bits.py --check /tmp/before.npz
"""
import argparse
import glob
import hashlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def model_files():
    files = sorted(glob.glob(os.path.join(ROOT, "examples", "*", "model.py")))
    files += sorted(glob.glob(os.path.join(ROOT, "bench", "workload_models", "*.py")))
    return files


def models(n_fuzz):
    from gradc.model import Model
    for path in model_files():
        ns = {}
        exec(compile(open(path).read(), path, "exec"), ns)     # a file may define several models
        for k, v in ns.items():
            if isinstance(v, Model):
                yield f"{os.path.relpath(path, ROOT)}:{k}", v
    if n_fuzz:
        import fuzz
        for i, case in enumerate(fuzz.sample_cases(n_fuzz, label="same_bits")):
            try:
                yield f"fuzz{i}", case.build()
            except Exception:        # a case whose loss cancels out is skipped by the fuzz tests too
                continue


def record(mod, out, key):
    from batches import random_batch
    rng = np.random.default_rng(1234)
    data = random_batch(mod, 37, rng)
    p = mod.init_params(seed=3)
    for k, v in p.items():
        p[k] = (v + rng.uniform(-0.5, 0.5, v.shape)).astype(v.dtype)
    ins = {k: v for k, v in data.items() if k in mod.input_shapes}
    if mod.output_shapes:
        for k, v in mod.forward(p, **ins).items():
            out[f"{key}/forward/{k}"] = v
    out[f"{key}/loss"] = np.asarray(mod.loss(p, **data))
    L, g = mod.loss_and_grad(p, **data)
    out[f"{key}/lg/L"] = np.asarray(L)
    for k, v in g.items():
        out[f"{key}/lg/{k}"] = v
    mod.set_threads(2)
    L2, g2 = mod.loss_and_grad(p, **data)
    mod.set_threads(1)
    out[f"{key}/lg2/L"] = np.asarray(L2)
    for k, v in g2.items():
        out[f"{key}/lg2/{k}"] = v
    from gradc.optim import SGD, Adam
    for name, opt in (("sgd", SGD), ("adam", Adam)):
        q = {k: v.copy() for k, v in p.items()}
        o = opt(q, lr=0.01)
        for _ in range(2):
            o.train_step(mod, **data)
        for k, v in q.items():
            out[f"{key}/{name}/{k}"] = v


def compute(n_fuzz):
    import gradc as gc
    out = {}
    for name, model in models(n_fuzz):
        for dtype in ("float64", "float32"):
            try:
                mod = gc.compile_model(model, dtype)
            except gc.ModelError as e:
                out[f"{name}:{dtype}/error"] = np.frombuffer(str(e).encode(), np.uint8)
                continue
            record(mod, out, f"{name}:{dtype}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save")
    g.add_argument("--check")
    ap.add_argument("--fuzz", type=int, default=40, help="seeded fuzz models to add (default 40)")
    a = ap.parse_args(argv)
    out = compute(a.fuzz)
    if a.save:
        np.savez(a.save, **out)
        digest = hashlib.sha256(b"".join(k.encode() + np.ascontiguousarray(v).tobytes()
                                         for k, v in sorted(out.items()))).hexdigest()
        print(f"saved {len(out)} arrays from {len({k.split('/')[0] for k in out})} builds, sha256 {digest[:16]}")
        return 0
    with np.load(a.check) as z:
        ref = {k: z[k] for k in z.files}
    bad = [k for k in sorted(set(ref) | set(out))
           if k not in ref or k not in out or ref[k].dtype != out[k].dtype or ref[k].shape != out[k].shape
           or ref[k].tobytes() != out[k].tobytes()]
    builds = len({k.split('/')[0] for k in out})
    for k in bad[:50]:
        print("differs:", k)
    print(f"{len(out)} arrays from {builds} builds compared: {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
