"""JAX jit: the whole training step (value_and_grad and the update) as one jitted function; W6's
LeNet-5 with ``lax.conv_general_dilated`` and a ``lax.reduce_window`` max-pool."""
import math
import time

import numpy as np

from ..timing import Runner, Skip


def build_jax(wl, dtype=None):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise Skip(f"JAX not importable ({e})")
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    dt = np.dtype(dtype or wl.dtype)
    init = wl.init
    tree_map = jax.tree_util.tree_map

    if wl.kind == "mf":
        params = tuple(jnp.asarray(init[k], dt) for k in ("bu", "bi", "P", "Q"))
        mu = jnp.asarray(wl.data["mu"], dt)
        batches = [(jnp.asarray(u, jnp.int32), jnp.asarray(i, jnp.int32), jnp.asarray(r, dt))
                   for u, i, r in wl.mf_batches()]

        def loss_fn(params, u, i, r):
            bu, bi, P, Q = params
            Pu, Qi = P[u], Q[i]
            r_hat = mu + bu[u] + bi[i] + jnp.sum(Pu * Qi, axis=1)
            return jnp.mean((r - r_hat) ** 2 + 1e-4 * (jnp.sum(Pu * Pu, axis=1) + jnp.sum(Qi * Qi, axis=1)))
    elif wl.kind == "cnn":
        from jax import lax
        names = ("K1", "c1", "K2", "c2", "W3", "b3", "W4", "b4", "W5", "b5")
        params = tuple(jnp.asarray(init[k], dt) for k in names)     # dense W as (fan_in, fan_out)
        batches = [(jnp.asarray(X[:, None], dt), jnp.asarray(y, jnp.int32)) for X, y in wl.mlp_batches()]
        neg_inf = np.array(-np.inf, dt)

        def conv_relu_pool(h, K, c):
            z = lax.conv_general_dilated(h, K, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
            a = jax.nn.relu(z + c[None, :, None, None])
            return lax.reduce_window(a, neg_inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

        def loss_fn(params, X, y):
            K1, c1, K2, c2, W3, b3, W4, b4, W5, b5 = params
            h = conv_relu_pool(conv_relu_pool(X, K1, c1), K2, c2)
            h = h.reshape(h.shape[0], -1)                           # (channel, row, column) order
            h = jax.nn.relu(h @ W3 + b3)
            h = jax.nn.relu(h @ W4 + b4)
            z = h @ W5 + b5
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])
    else:
        L = len(wl.layers)
        params = tuple((jnp.asarray(init[f"W{li}"], dt), jnp.asarray(init[f"b{li}"], dt)) for li in range(1, L + 1))
        ydt = jnp.int32 if wl.head == "ce" else dt
        batches = [(jnp.asarray(X, dt), jnp.asarray(y, ydt)) for X, y in wl.mlp_batches()]
        act = jnp.tanh if wl.act == "tanh" else jax.nn.relu

        def loss_fn(params, X, y):
            h = X
            for W, b in params[:-1]:
                h = act(h @ W + b)
            W, b = params[-1]
            z = h @ W + b
            if wl.head == "hinge":
                l2 = sum(jnp.sum(q * q) for q in jax.tree_util.tree_leaves(params))
                return jnp.mean(jax.nn.relu(1 - y * z[:, 0])) + 1e-4 * l2
            if wl.head == "bce":
                s = z[:, 0]
                return jnp.mean(jax.nn.softplus(s) - y * s)
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])

    vg = jax.value_and_grad(loss_fn)
    if wl.optimizer == "adam":
        b1, b2, eps = 0.9, 0.999, 1e-8
        zeros = tree_map(jnp.zeros_like, params)
        state = [params, zeros, zeros]

        def train_step(params, m, v, step_size, bc2, *batch):
            loss, g = vg(params, *batch)
            m = tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
            v = tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            params = tree_map(lambda p_, m_, v_: p_ - step_size * m_ / (jnp.sqrt(v_) / bc2 + eps), params, m, v)
            return params, m, v, loss

        def args(k):
            t = k + 1
            return (*state, np.asarray(wl.lr / (1 - b1 ** t), dt), np.asarray(math.sqrt(1 - b2 ** t), dt),
                    *batches[k % len(batches)])
    else:
        state = [params]

        def train_step(params, lr, *batch):
            loss, g = vg(params, *batch)
            return tree_map(lambda p_, g_: p_ - lr * g_, params, g), loss

        def args(k):
            return (*state, np.asarray(wl.lr_at(k), dt), *batches[k % len(batches)])

    # trace + compile + one run; the step is a pure function, so its result is simply dropped
    fn = jax.jit(train_step)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args(0)))
    jit_s = time.perf_counter() - t0
    ns = len(state)

    def step(k):
        out = fn(*args(k))
        state[:] = out[:ns]
        return out[ns]
    return Runner("jax", step, value=float, sync=lambda a: a.block_until_ready(), compile_s=jit_s, dtype=dt.name,
                  note="lax.conv_general_dilated (NCHW, OIHW) and a lax.reduce_window max-pool"
                  if wl.kind == "cnn" else "")
