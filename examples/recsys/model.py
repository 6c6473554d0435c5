"""Recommendation: matrix factorization with user and item biases, rank 32.

r_hat = mu + bu[u] + bi[i] + P[u] . Q[i], squared error, L2 (0.05) on the two rows a rating touches.
"""
import sympy as sp

import gradc as gc

N_USERS, N_ITEMS, RANK = 1000, 1700, 32

m = gc.Model("recsys")
u, i = m.input("user", dtype="int32"), m.input("item", dtype="int32")
r = m.target("rating")
mu = m.param("mu", init=3.5)                                  # set to the global mean before training
bu, bi = m.param("bu", N_USERS), m.param("bi", N_ITEMS)
P = m.param("P", (N_USERS, RANK), init=gc.init.normal(0, 0.1))
Q = m.param("Q", (N_ITEMS, RANK), init=gc.init.normal(0, 0.1))

k = gc.index("k")
r_hat = m.output("r_hat", mu + bu[u] + bi[i] + sp.Sum(P[u, k] * Q[i, k], (k, 0, RANK - 1)))
Pu, Qi = gc.embedding(P, u), gc.embedding(Q, i)               # the rows, as tensor expressions
m.loss((r - r_hat) ** 2 + 0.05 * ((Pu * Pu).sum() + (Qi * Qi).sum()))
