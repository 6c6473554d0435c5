"""CasADi code generation: the step as SX per sample, mapped over the batch, compiled by gcc (W1, W2, W4)."""
import math
import os
import shutil
import subprocess
import time

import numpy as np

from ..timing import Runner, Skip


def build_casadi(wl, workdir):
    try:
        import casadi as ca
    except ImportError as e:
        raise Skip(f"CasADi not importable ({e})")
    if wl.kind != "mlp":
        raise Skip("CasADi runs W1, W2 and W4 only")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise Skip("no C compiler for CasADi's generated code")
    t0 = time.perf_counter()
    init = wl.init
    n = sum(i * o + o for i, o in wl.layers)
    d_in, n_cls = wl.layers[0][0], wl.layers[-1][1]
    ny = n_cls if wl.head == "ce" else 1
    B = wl.batch_size

    # one sample in SX: parameters packed per layer as W (fan_in, fan_out) column-major, then b
    theta, x, y = ca.SX.sym("theta", n), ca.SX.sym("x", d_in), ca.SX.sym("y", ny)
    h, off = x, 0
    for li, (i, o) in enumerate(wl.layers):
        W = ca.reshape(theta[off:off + i * o], i, o)
        b = theta[off + i * o:off + i * o + o]
        off += i * o + o
        z = ca.mtimes(W.T, h) + b
        if li < len(wl.layers) - 1:
            h = ca.tanh(z) if wl.act == "tanh" else ca.fmax(z, 0)
    if wl.head == "hinge":
        loss = ca.fmax(0, 1 - y * z)
    elif wl.head == "bce":
        log1p = getattr(ca, "log1p", lambda a: ca.log(1 + a))      # older CasADi has no log1p
        loss = ca.fmax(z, 0) + log1p(ca.exp(-ca.fabs(z))) - y * z
    else:
        zmax = ca.mmax(z)
        loss = zmax + ca.log(ca.sum1(ca.exp(z - zmax))) - ca.dot(y, z)
    sample = ca.Function("sample", [theta, x, y], [loss, ca.gradient(loss, theta)])
    batch = sample.map(B, "serial")               # a loop over the batch in the generated C

    T, X, Y = ca.MX.sym("T", n), ca.MX.sym("X", d_in, B), ca.MX.sym("Y", ny, B)
    Ls, Gs = batch(T, X, Y)
    loss, grad = ca.sum2(Ls) / B, ca.sum2(Gs) / B
    if wl.head == "hinge":
        loss, grad = loss + 1e-4 * ca.sumsqr(T), grad + 2e-4 * T
    if wl.optimizer == "adam":
        b1, b2, eps = 0.9, 0.999, 1e-8
        M, V, ss, bc2 = ca.MX.sym("M", n), ca.MX.sym("V", n), ca.MX.sym("ss"), ca.MX.sym("bc2")
        M2, V2 = b1 * M + (1 - b1) * grad, b2 * V + (1 - b2) * grad * grad
        T2 = T - ss * M2 / (ca.sqrt(V2) / bc2 + eps)
        fn = ca.Function("train_step", [T, M, V, ss, bc2, X, Y], [T2, M2, V2, loss])
    else:
        lr = ca.MX.sym("lr")
        fn = ca.Function("train_step", [T, lr, X, Y], [T - lr * grad, loss])
    name = f"casadi_{wl.id.lower()}"
    cfile = os.path.join(workdir, name + ".c")
    so = os.path.join(workdir, name + ".so")
    cg = ca.CodeGenerator(name + ".c")
    cg.add(fn)
    cg.generate(workdir + os.sep)
    p = subprocess.run([cc, "-O3", "-march=native", "-fPIC", "-shared", cfile, "-o", so, "-lm"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise Skip(f"gcc failed on CasADi's code: {p.stderr[-300:]}")
    ext = ca.external("train_step", so)
    build_s = time.perf_counter() - t0

    pack = []
    for li in range(1, len(wl.layers) + 1):
        pack += [init[f"W{li}"].ravel(order="F"), init[f"b{li}"]]
    state = [ca.DM(np.concatenate(pack))]
    batches = []
    for Xb, yb in wl.mlp_batches():
        Yb = np.eye(n_cls)[yb].T if wl.head == "ce" else np.asarray(yb, float)[None, :]
        batches.append((ca.DM(np.ascontiguousarray(Xb.T)), ca.DM(np.ascontiguousarray(Yb))))
    nb = len(batches)
    if wl.optimizer == "adam":
        state += [ca.DM.zeros(n), ca.DM.zeros(n)]

        def step(k):
            t = k + 1
            out = ext(*state, wl.lr / (1 - 0.9 ** t), math.sqrt(1 - 0.999 ** t), *batches[k % nb])
            state[:] = out[:3]
            return out[3]
    else:
        def step(k):
            out = ext(state[0], wl.lr_at(k), *batches[k % nb])
            state[0] = out[0]
            return out[1]
    lines = sum(1 for _ in open(cfile))
    return Runner("casadi", step, value=float, compile_s=build_s, dtype="float64",
                  note=f"SX per sample, map(serial) over the batch; {lines:,} lines of C, gcc -O3")
