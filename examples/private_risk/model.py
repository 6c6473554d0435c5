"""Credit default from 12 applicant features: logistic regression and an MLP 12-16-1 (tanh).

Both output the probability of default and train on the binary cross-entropy with logits. They
are small on purpose: DP-SGD clips every sample's gradient, so each training sample costs one
forward and one backward pass of its own.
"""
import gradc as gc

N_FEATURES = 12
HIDDEN = 16

logreg = gc.Model("private_risk_logreg")
x, y = logreg.input("x", N_FEATURES), logreg.target("y")      # y in {0, 1}: 1 = defaulted
w, b = logreg.param("w", (1, N_FEATURES), init=0), logreg.param("b", 1, init=0)
z = (w @ x + b)[0]
logreg.output("p", gc.sigmoid(z))
logreg.loss(gc.bce_with_logits(z, y))

mlp = gc.Model("private_risk_mlp")
x, y = mlp.input("x", N_FEATURES), mlp.target("y")
W1, b1 = mlp.param("W1", (HIDDEN, N_FEATURES), init=gc.init.linear()), mlp.param("b1", HIDDEN, init=0)
W2, b2 = mlp.param("W2", (1, HIDDEN), init=gc.init.linear()), mlp.param("b2", 1, init=0)
h = gc.tanh(W1 @ x + b1)
z = (W2 @ h + b2)[0]
mlp.output("p", gc.sigmoid(z))
mlp.loss(gc.bce_with_logits(z, y))
