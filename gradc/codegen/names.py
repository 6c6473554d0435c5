"""C identifiers from user names: sanitized, never pasted.

A user may name a parameter ``int``, ``x; system("id")`` or ``Gewicht_ä``.
Every identifier in generated C is built from ``ident()`` of such a name
plus a fixed prefix, so no user text reaches the source as code.

Example::

    >>> ident('x; system("id")')
    'x_system_id'
"""
import re

_C_KEYWORDS = set("""auto break case char const continue default do double else enum extern float for goto
if inline int long register restrict return short signed sizeof static struct switch typedef union
unsigned void volatile while _Bool _Complex _Imaginary bool true false class namespace template this
new delete operator private public protected virtual""".split())


def ident(name, fallback="t"):
    """A C identifier made of [A-Za-z0-9_] only, derived from ``name``.

    Letters outside ASCII become ``u`` + their code point in hex, so distinct
    names stay distinct; everything else becomes one underscore.
    """
    out = []
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            out.append(ch)
        elif ch.isalpha():
            out.append(f"u{ord(ch):x}")
        else:
            out.append("_")
    s = re.sub(r"_+", "_", "".join(out)).strip("_")
    if not s:
        s = fallback
    if s[0].isdigit():
        s = fallback + "_" + s
    if s in _C_KEYWORDS:
        s = s + "_"
    return s[:48]


class Namer:
    """Assigns each name a distinct identifier (case-insensitively, for macros)."""

    def __init__(self, reserved=()):
        self.taken = {r.lower() for r in reserved}
        self.of = {}

    def __call__(self, name):
        if name in self.of:
            return self.of[name]
        base = ident(name)
        cand, k = base, 1
        while cand.lower() in self.taken:
            k += 1
            cand = f"{base}_{k}"
        self.taken.add(cand.lower())
        self.of[name] = cand
        return cand
