"""Tabular binary risk: logistic regression and a small MLP with dropout (30 features)."""
import gradc as gc

N_FEATURES = 30

logreg = gc.Model("risk_logreg")
x, y = logreg.input("x", N_FEATURES), logreg.target("y")      # y in {0, 1}
w, b = logreg.param("w", (1, N_FEATURES), init=0), logreg.param("b", 1)     # from zero, as scikit-learn
z = (w @ x + b)[0]
logreg.output("p", gc.sigmoid(z))
logreg.loss(gc.bce_with_logits(z, y))
logreg.regularize(1e-3 * gc.sum_squares(w))

mlp = gc.Model("risk_mlp")
x, y = mlp.input("x", N_FEATURES), mlp.target("y")
W1, b1 = mlp.param("W1", (16, N_FEATURES), init=gc.init.linear()), mlp.param("b1", 16)
W2, b2 = mlp.param("W2", (1, 16), init=gc.init.linear()), mlp.param("b2", 1)
h = gc.dropout(gc.relu(W1 @ x + b1), 0.2)
z = (W2 @ h + b2)[0]
mlp.output("p", gc.sigmoid(z))
mlp.loss(gc.bce_with_logits(z, y))
mlp.regularize(1e-4 * gc.sum_squares(W1, W2))
