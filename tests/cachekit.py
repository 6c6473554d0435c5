"""A tiny model with a random constant and cache-folder helpers, shared by the cache tests, so that no
test shares a cache entry with another (or with another run).

Example::

    path, c = write_tiny(tmp_path, "cachetiny")
    mod = gradc.load(path)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c))
"""
import os
import random
import textwrap

import numpy as np

X = [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]
Y = [1.0, -1.0, 0.5]


def tiny_source(name, c):
    return textwrap.dedent(f"""\
        import gradc as gc
        m = gc.Model("{name}")
        x, y = m.input("x", 2), m.target("y")
        w, b = m.param("w", 2, init=0.5), m.param("b", init=-0.25)
        m.loss({c!r} * (w[0] * x[0] + w[1] * x[1] + b - y) ** 2)
        """)


def tiny_loss(c):
    """The loss of ``tiny_source(.., c)`` at its initial parameters on X, Y."""
    s = np.asarray(X) @ np.array([0.5, 0.5]) - 0.25
    return float(np.mean(c * (s - np.asarray(Y)) ** 2))


def write_tiny(folder, name):
    c = round(random.Random().uniform(1.0, 2.0), 6)
    path = folder / f"{name}.py"
    path.write_text(tiny_source(name, c))
    return str(path), c


def entries(root):
    return sorted(n for n in os.listdir(root) if not n.startswith(".")) if os.path.isdir(root) else []


def hidden(root):
    return sorted(n for n in os.listdir(root) if n.startswith(".")) if os.path.isdir(root) else []


def fallback_cache(tmp):
    """The private fallback cache folder gradc uses under the temporary folder ``tmp``."""
    return tmp / f"gradc-cache-{os.getuid()}"
