"""W5, matrix factorization: rank 32, user and item biases, L2 1e-4 on the two rows a rating touches.

r_hat = mu + bu[u] + bi[i] + P[u] . Q[i]; loss (r - r_hat)^2 + 1e-4 (|P[u]|^2 + |Q[i]|^2), batch mean.
The global mean mu comes from the data, as a per-sample input (the same value in every row), so one
compiled module serves any data set. Bench-local: examples/recsys trains mu and uses L2 0.05.
"""
import sympy as sp

import gradc as gc

N_USERS, N_ITEMS, RANK, L2 = 1000, 1700, 32, 1e-4

m = gc.Model("w5_mf")
u, i = m.input("user", dtype="int32"), m.input("item", dtype="int32")
mu = m.input("mu")
r = m.target("rating")
bu, bi = m.param("bu", N_USERS, init=0), m.param("bi", N_ITEMS, init=0)
P = m.param("P", (N_USERS, RANK), init=gc.init.normal(0, 0.1))
Q = m.param("Q", (N_ITEMS, RANK), init=gc.init.normal(0, 0.1))

k = gc.index("k")
r_hat = m.output("r_hat", mu + bu[u] + bi[i] + sp.Sum(P[u, k] * Q[i, k], (k, 0, RANK - 1)))
Pu, Qi = gc.embedding(P, u), gc.embedding(Q, i)
m.loss((r - r_hat) ** 2 + L2 * ((Pu * Pu).sum() + (Qi * Qi).sum()))
