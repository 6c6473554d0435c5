"""micrograd's moons demo: MLP 2-16-16-1, ReLU, hinge loss, L2 1e-4."""
import sympy as sp

import gradc as gc

m = gc.Model("moons")
x, y = m.input("x", 2), m.target("y")                       # y in {-1, +1}
W1, b1 = m.param("W1", (16, 2), init=gc.init.uniform(-1, 1)), m.param("b1", 16, init=0)
W2, b2 = m.param("W2", (16, 16), init=gc.init.uniform(-1, 1)), m.param("b2", 16, init=0)
W3, b3 = m.param("W3", (1, 16), init=gc.init.uniform(-1, 1)), m.param("b3", 1, init=0)

h1 = gc.relu(W1 @ x + b1)
h2 = gc.relu(W2 @ h1 + b2)
score = m.output("score", (W3 @ h2 + b3)[0])
m.loss(sp.Max(0, 1 - y * score))                            # hinge, per sample
m.regularize(1e-4 * gc.sum_squares(W1, b1, W2, b2, W3, b3))
