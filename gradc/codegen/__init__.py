"""Code generation: the IR and its gradient rendered through templates.

``c.render(prog, grad, dtype)`` returns the C source, the header and the cffi
cdef of one model; the shape of the code lives in ``templates/c/*.j2``.
"""
