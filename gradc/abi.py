"""Facts of the generated C ABI that the code generator and the runtime share: its version and the
return codes of every entry point.

The templates print the codes from ``ERROR_CODES`` (``#define NAME_EBATCH 1`` ...) and the runtime
turns a nonzero code back into a message from the same table, so the two cannot drift. Example::

    from gradc.abi import ERROR_CODES, error_message
    error_message(3)      # 'an integer input used as an index is out of range'
"""
from dataclasses import dataclass

ABI_VERSION = 4      # 2: adam_apply returns a code (it was void in C); 3: adam_step keeps beta^t in beta_pow;
#                      4: every entry point with a workspace takes its size (work_bytes), lanes fixed in the .c
#: the most threads a threaded entry point takes (NAME_MAX_THREADS; more returns EARG)
MAX_THREADS = 1024


@dataclass(frozen=True)
class ErrorCode:
    """One return code: ``NAME_<name>`` in C, ``value`` on the wire, ``message`` in Python's errors;
    ``targets``: the targets whose header defines it (empty: every target)."""
    name: str
    value: int
    message: str
    targets: tuple = ()


ERROR_CODES = (
    ErrorCode("OK", 0, "success"),
    ErrorCode("EBATCH", 1, "the batch is empty"),
    ErrorCode("ENULL", 2, "a NULL pointer was passed"),
    ErrorCode("EINDEX", 3, "an integer input used as an index is out of range"),
    ErrorCode("ECUDA", 4, "the CUDA runtime reported an error", ("cuda",)),
    ErrorCode("EARG", 5, "a scalar argument is out of its range (a clipping bound or scale must be positive and finite)"),
    ErrorCode("EIDENTITY", 6, "the object file or weights are not the ones the header describes (ABI version, "
                              "dtype, lanes or model hash differ)"),
    ErrorCode("ENONFINITE", 7, "the step's loss or gradient holds NaN or Inf; the parameters were left as they were"),
    ErrorCode("EWORKSPACE", 8, "the workspace is smaller than the NAME_workspace_size function for this call says "
                               "(work_bytes is short)"),
)
_BY_VALUE = {e.value: e for e in ERROR_CODES}
EINDEX = 3
ECUDA = 4
EARG = 5
EIDENTITY = 6
ENONFINITE = 7
EWORKSPACE = 8


def error_codes(target):
    """The return codes ``target``'s header defines, in value order."""
    return tuple(e for e in ERROR_CODES if not e.targets or target in e.targets)


def error_message(code):
    """The message for a nonzero return code (``'error code 42'`` for one the table lacks)."""
    e = _BY_VALUE.get(code)
    return e.message if e is not None else f"error code {code}"
