"""An MNIST-sized MLP: 784-256-10, ReLU, softmax cross-entropy."""
import gradc as gc

m = gc.Model("mnist_mlp")
x = m.input("x", 784)
label = m.target("label", dtype="int32")                    # class 0..9
W1, b1 = m.param("W1", (256, 784), init=gc.init.linear()), m.param("b1", 256, init=gc.init.linear(784))
W2, b2 = m.param("W2", (10, 256), init=gc.init.linear()), m.param("b2", 10, init=gc.init.linear(256))

h = gc.relu(W1 @ x + b1)
logits = m.output("logits", W2 @ h + b2)
m.loss(gc.softmax_cross_entropy(logits, label))
