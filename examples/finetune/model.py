"""A 20-32-4 tanh classifier, pretrained on one task and fine-tuned on another."""
import gradc as gc

m = gc.Model("finetune")
x, label = m.input("x", 20), m.target("label", dtype="int32")
W1, b1 = m.param("W1", (32, 20), init=gc.init.linear()), m.param("b1", 32, init=gc.init.linear(20))
W2, b2 = m.param("W2", (4, 32), init=gc.init.linear()), m.param("b2", 4, init=gc.init.linear(32))
logits = m.output("logits", W2 @ gc.tanh(W1 @ x + b1) + b2)
m.loss(gc.softmax_cross_entropy(logits, label))
