"""The textbook 5-10-1 MLP: ReLU, then a sigmoid output, binary cross-entropy."""
import gradc as gc

m = gc.Model("seed_mlp")
x, y = m.input("x", 5), m.target("y")                       # y in {0, 1}
W1, b1 = m.param("W1", (10, 5), init=gc.init.linear()), m.param("b1", 10, init=gc.init.linear(5))
W2, b2 = m.param("W2", (1, 10), init=gc.init.linear()), m.param("b2", 1, init=gc.init.linear(10))

h = gc.relu(W1 @ x + b1)
p = m.output("p", gc.sigmoid((W2 @ h + b2)[0]))
m.loss(gc.binary_cross_entropy(p, y))      # rewritten to the stable softplus form by gradc
