"""Parameters (and gradients) as named views into one flat buffer.

Example::

    p = mod.init_params(seed=0)      # a Params
    p["b1"] = np.zeros(16)           # written into the buffer
    p.flat                           # all parameters, contiguous, in declaration order
"""
import numpy as np


class Params(dict):
    """Parameters (or gradients) as views into one flat buffer, ``flat``, in declaration order.

    A dict whose arrays never move: ``p["W"] = a`` copies ``a`` into W's view, so the kernels
    and the optimizers use the flat buffer directly (no copy, one vectorized update). ``layout``
    is the model's ``ModuleMeta.params`` (each entry's ``name``, ``shape``, ``offset``, ``size``).

    Example::

        p = mod.init_params(seed=0)      # a Params
        p["b1"] = np.zeros(16)           # written into the buffer
        p.flat                           # all parameters, contiguous
    """

    def __init__(self, flat, layout):
        super().__init__()
        self.flat = flat
        for q in layout:
            dict.__setitem__(self, q.name, flat[q.offset:q.offset + q.size].reshape(q.shape))

    def __setitem__(self, key, value):
        if key not in self:
            raise KeyError(f"{key!r} is not a parameter of this model; it has {', '.join(self)}")
        view = dict.__getitem__(self, key)
        a = np.asarray(value)
        if a.shape != view.shape:
            raise ValueError(f"parameter {key!r} has shape {view.shape}, got an array of shape {a.shape}")
        view[...] = a

    def update(self, *args, **kw):
        """Copy each given array into its parameter's view. Example: ``p.update(saved)``."""
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def copy(self):
        """An independent copy, with its own flat buffer. Example: ``best = p.copy()``."""
        new = Params.__new__(Params)
        dict.__init__(new)
        new.flat = self.flat.copy()
        for k, v in self.items():
            off = (v.__array_interface__["data"][0] - self.flat.__array_interface__["data"][0]) // v.itemsize
            dict.__setitem__(new, k, new.flat[off:off + v.size].reshape(v.shape))
        return new

    def __reduce__(self):          # pickles as a plain dict of arrays
        return (dict, (dict(self),))
