"""Code generation: a program and its gradient rendered through each target's templates.

The builders (``c.Builder``, ``cuda``'s subclass) turn the stages into the kernel IR of ``kir``:
frozen dataclasses (``Assign``, ``Accumulate``, ``LaneLoop``, ``LaneReduction``, ``Nest``, ...)
whose fields the templates read and whose ``names()`` list the arrays they touch, so each function
declares exactly the pointers it uses. ``templates/<target>/kir.j2`` prints the statements,
``templates/<target>/model.*.j2`` the functions, ``templates/shared/abi.j2`` the signatures that the
source, the header and the cffi declarations share. Which builder serves a target is said once, in
``gradc.targets``.

Example::

    src = gradc.codegen.c.render(prog, differentiate(prog), "float64")
    print(src.c)        # NAME.c; src.h is NAME.h, src.cdef the cffi declarations
"""
