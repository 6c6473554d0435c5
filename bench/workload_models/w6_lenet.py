"""W6, LeNet-5 on 28x28 in index style: conv 5x5 (6 channels), ReLU, 2x2 max-pool; conv 5x5 (16
channels), ReLU, 2x2 max-pool; dense 256-120-84-10 with ReLU; softmax cross-entropy.

Bench-local so that the workload stays fixed while the examples change. The parameters follow
PyTorch's layout: K1 (6, 1, 5, 5) and K2 (16, 6, 5, 5) as Conv2d weights, dense weights as
(fan_out, fan_in); W3 is (120, 16, 4, 4), the 16x4x4 map in (channel, row, column) order, so the
workload file's init_W3 (256, 120) loads as init_W3.T.reshape(120, 16, 4, 4), and init_W4, init_W5
transposed.
"""
import sympy as sp
import gradc as gc

m = gc.Model("lenet")
x = m.input("x", (28, 28))
label = m.target("label", dtype="int32")
K1, c1 = m.param("K1", (6, 1, 5, 5)), m.param("c1", 6)
K2, c2 = m.param("K2", (16, 6, 5, 5)), m.param("c2", 16)
W3, b3 = m.param("W3", (120, 16, 4, 4)), m.param("b3", 120)
W4, b4 = m.param("W4", (84, 120)), m.param("b4", 84)
W5, b5 = m.param("W5", (10, 84)), m.param("b5", 10)
k, l, d = gc.index("k"), gc.index("l"), gc.index("d")
a1 = m.define("a1", (6, 24, 24), lambda c, i, j: gc.relu(sp.Sum(K1[c, 0, k, l] * x[i + k, j + l], (k, 0, 4), (l, 0, 4)) + c1[c]))
p1 = m.define("p1", (6, 12, 12), lambda c, i, j: sp.Max(a1[c, 2*i, 2*j], a1[c, 2*i+1, 2*j], a1[c, 2*i, 2*j+1], a1[c, 2*i+1, 2*j+1]))
a2 = m.define("a2", (16, 8, 8), lambda c, i, j: gc.relu(sp.Sum(K2[c, d, k, l] * p1[d, i + k, j + l], (d, 0, 5), (k, 0, 4), (l, 0, 4)) + c2[c]))
p2 = m.define("p2", (16, 4, 4), lambda c, i, j: sp.Max(a2[c, 2*i, 2*j], a2[c, 2*i+1, 2*j], a2[c, 2*i, 2*j+1], a2[c, 2*i+1, 2*j+1]))
e = gc.index("e")
h3 = m.define("h3", 120, lambda o: gc.relu(sp.Sum(W3[o, d, k, e] * p2[d, k, e], (d, 0, 15), (k, 0, 3), (e, 0, 3)) + b3[o]))
h4 = gc.relu(W4 @ h3 + b4)
logits = m.output("logits", W5 @ h4 + b5)
m.loss(gc.softmax_cross_entropy(logits, label))
