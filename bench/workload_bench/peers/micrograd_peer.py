"""micrograd: scalar autograd (W1 and W2 only; slow, so timed for a few steps)."""
import math

from ..timing import Runner, Skip


def build_micrograd(wl):
    try:
        from micrograd.engine import Value
    except ImportError as e:
        raise Skip(f"micrograd not importable ({e})")
    if wl.kind != "mlp" or wl.head not in ("hinge", "bce"):
        raise Skip("micrograd runs W1 and W2 only")

    def softplus(v):
        """log(1 + e^v) as a micrograd node (micrograd has no exp or log)."""
        z = v.data
        out = Value(max(z, 0.0) + math.log1p(math.exp(-abs(z))), (v,), "softplus")

        def _backward():
            e = math.exp(-abs(z))
            v.grad += (1 / (1 + e) if z >= 0 else e / (1 + e)) * out.grad
        out._backward = _backward
        return out

    init = wl.init
    layers = []                                   # per layer: [(weights of unit j, bias of unit j)]
    for li, (i, o) in enumerate(wl.layers, 1):
        W, b = init[f"W{li}"], init[f"b{li}"]
        layers.append([([Value(float(W[a, j])) for a in range(i)], Value(float(b[j]))) for j in range(o)])
    params = [q for layer in layers for ws, b in layer for q in ws + [b]]
    batches = [(X.tolist(), y.tolist()) for X, y in wl.mlp_batches()]
    nb = len(batches)

    def step(k):
        X, Y = batches[k % nb]
        for q in params:
            q.grad = 0
        losses = []
        for x, y in zip(X, Y):
            h = x
            for li, layer in enumerate(layers):
                h = [sum((w * xi for w, xi in zip(ws, h)), b) for ws, b in layer]
                if li < len(layers) - 1:
                    h = [a.relu() for a in h]
            z = h[0]
            losses.append((1 - y * z).relu() if wl.head == "hinge" else softplus(z) - y * z)
        total = sum(losses) * (1.0 / len(X))
        if wl.head == "hinge":
            total = total + 1e-4 * sum(q * q for q in params)
        total.backward()
        lr = wl.lr_at(k)
        for q in params:
            q.data -= lr * q.grad
        return total.data
    return Runner("micrograd", step, dtype="float64")
