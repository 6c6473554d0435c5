"""Refusing, before allocating, an array larger than the machine: a clear ``ValueError`` rather
than an out-of-memory kill halfway through a batch.

Example::

    check_alloc(n * 8, f"the outputs of a batch of {n}")      # raises when n * 8 bytes cannot fit
"""
import os


def physical_memory():
    """This machine's physical memory in bytes, or None when the system does not say.

    Example: ``physical_memory() / 2**30`` is the memory in GiB.
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_alloc(nbytes, what):
    """Refuse, before allocating, an array larger than this machine's physical memory.

    Example::

        check_alloc(n_params * 8, "the parameters")
    """
    mem = physical_memory()
    if mem and nbytes > mem:
        raise ValueError(f"{what} would need {nbytes / 2**30:,.1f} GiB, more than this machine's "
                         f"{mem / 2**30:,.1f} GiB of memory")
