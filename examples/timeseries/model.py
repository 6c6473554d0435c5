"""Sequences: a GRU over 12 months of 5 account features, then a dense layer to one default logit.

The cell is ``torch.nn.GRUCell``'s (gates r, z, n; W_ih (3H, F), W_hh (3H, H)), unrolled over the
12 time steps from a zero state; the last state goes through a dense layer to the logit,
binary cross-entropy on the logit. Weights are drawn as PyTorch draws them, biases start at zero.
"""
import gradc as gc
from gradc.layers import gru_cell, unroll

T, F, H = 12, 5, 16

m = gc.Model("timeseries_gru")
xs, y = m.input("x", (T, F)), m.target("y")                     # y in {0, 1}
W_ih, W_hh = m.param("W_ih", (3 * H, F)), m.param("W_hh", (3 * H, H))
b_ih, b_hh = m.param("b_ih", 3 * H), m.param("b_hh", 3 * H)
w, b = m.param("w", (1, H)), m.param("b", 1)

h = unroll(lambda x_t, h: gru_cell(x_t, h, W_ih, W_hh, b_ih, b_hh), xs, None)
z = (w @ h + b)[0]
m.output("p", gc.sigmoid(z))
m.loss(gc.bce_with_logits(z, y))
