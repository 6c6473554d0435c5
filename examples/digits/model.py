"""Small images: scikit-learn's 8x8 digits, MLP 64-32-10, tanh, softmax cross-entropy."""
import gradc as gc

m = gc.Model("digits")
x, label = m.input("x", 64), m.target("label", dtype="int32")
W1, b1 = m.param("W1", (32, 64), init=gc.init.linear()), m.param("b1", 32, init=gc.init.linear(64))
W2, b2 = m.param("W2", (10, 32), init=gc.init.linear()), m.param("b2", 10, init=gc.init.linear(32))

h = gc.tanh(W1 @ x + b1)
logits = m.output("logits", W2 @ h + b2)
m.loss(gc.softmax_cross_entropy(logits, label))
