"""W2, the textbook 5-10-1 MLP: ReLU hidden layer, sigmoid output, binary cross-entropy (batch 32).

Bench-local so that the workload stays fixed while the examples change.
"""
import gradc as gc

m = gc.Model("w2_mlp")
x, y = m.input("x", 5), m.target("y")                       # y in {0, 1}
W1, b1 = m.param("W1", (10, 5), init=gc.init.linear()), m.param("b1", 10, init=gc.init.linear(5))
W2, b2 = m.param("W2", (1, 10), init=gc.init.linear()), m.param("b2", 1, init=gc.init.linear(10))

h = gc.relu(W1 @ x + b1)
p = m.output("p", gc.sigmoid((W2 @ h + b2)[0]))
m.loss(gc.binary_cross_entropy(p, y))                       # rewritten by gradc to the stable softplus form
