"""The import structure of ``gradc/``: data flows one way, so no import cycle; and no module reaches
into another's underscore names.

Both read the source (by AST, function-level imports included) and import nothing of gradc, so they
run in a fraction of a second. Example of what they refuse::

    # gradc/optim/lr_scheduler.py
    from . import Optimizer              # gradc.optim imports lr_scheduler: a cycle
    optimizer._initial_lr                # another module's underscore name
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "gradc")
# underscore names any module may use: dunders, and the version module
ALLOWED = {"_version"}


def _modules():
    """{dotted name: path} of every module under gradc/ (a package under its own name)."""
    out = {}
    for folder, dirs, files in os.walk(PKG):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, f)
    return out


MODULES = _modules()
TREES = {name: ast.parse(open(path).read(), path) for name, path in MODULES.items()}


def _is_package(name):
    return MODULES[name].endswith("__init__.py")


def _resolve(name, node):
    """The dotted name an ImportFrom's ``from`` part names, inside module ``name``."""
    if not node.level:
        return node.module or ""
    parts = name.split(".") if _is_package(name) else name.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imports(name):
    """[(imported gradc module, line, the names taken from it)] for every import in module ``name``."""
    out = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = a.name
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target:
                    out.append((target, node.lineno, ()))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            if base not in MODULES:
                continue
            taken = []
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:          # a submodule: an edge to it, not to the package
                    out.append((sub, node.lineno, ()))
                else:
                    taken.append(a.name)
            if taken:
                out.append((base, node.lineno, tuple(taken)))
    return out


def _cycles():
    """The strongly connected components of more than one module (or a module importing itself)."""
    graph = {m: sorted({t for t, _, _ in _imports(m)}) for m in MODULES}
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps, graph


def _private(attr):
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")) and attr not in ALLOWED


def _defined(tree):
    """Every underscore name a module defines: functions, classes, attributes and names it assigns,
    and string keys it stores (``namespace["_compiled"] = ...``, ``setattr(x, "_y", ...)``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            out.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            out.add(node.args[1].value)
    return {n for n in out if isinstance(n, str) and _private(n)}


DEFINED = {m: _defined(t) for m, t in TREES.items()}


def _module_aliases(name):
    """Local names bound to gradc modules in module ``name`` (``from . import optim as _optim``)."""
    out = {}
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            for a in node.names:
                if f"{base}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{base}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    out[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]
    return out


def _own(node):
    """Whether an attribute is read off the module's own object: ``self``, ``cls`` or ``super()``."""
    v = node.value
    return (isinstance(v, ast.Name) and v.id in ("self", "cls")) or \
        (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super")


def _foreign_uses(name):
    """["line: what"] for each use in module ``name`` of another gradc module's underscore name."""
    tree, mine, aliases = TREES[name], DEFINED[name], _module_aliases(name)
    others = set().union(*(d for m, d in DEFINED.items() if m != name))
    bad = []
    for target, line, taken in _imports(name):
        for t in taken:
            if target != name and _private(t):
                bad.append(f"{line}: from {target} import {t}")
    for node in ast.walk(tree):
        attr = base = None
        if isinstance(node, ast.Attribute) and not _own(node):
            attr, base = node.attr, node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            attr, base = node.args[1].value, node.args[0]
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
        if attr is None or not _private(attr):
            continue
        if isinstance(base, ast.Name) and base.id in aliases and aliases[base.id] != name:
            bad.append(f"{node.lineno}: {base.id}.{attr} ({aliases[base.id]}'s)")
        elif attr not in mine and attr in others:
            owners = sorted(m for m, d in DEFINED.items() if attr in d and m != name)
            bad.append(f"{node.lineno}: {ast.unparse(base)}.{attr} ({', '.join(owners)}'s)")
    return sorted(bad, key=lambda u: int(u.split(":")[0]))


def test_the_walk_sees_every_module_and_the_known_edges():
    assert {"gradc", "gradc.runtime", "gradc.runtime.c", "gradc.optim.optimizer"} <= set(MODULES)
    _, graph = _cycles()
    assert "gradc.runtime.c" in graph["gradc.runtime.cuda"]
    assert "gradc.optim.optimizer" in graph["gradc.optim.lr_scheduler"]


def test_no_import_cycle_inside_gradc():
    comps, _ = _cycles()
    assert not comps, "import cycles (each a set of modules that import each other):\n" + \
        "\n".join(" <-> ".join(c) for c in comps)


def test_no_module_uses_another_modules_underscore_names():
    bad = {m: _foreign_uses(m) for m in sorted(MODULES)}
    bad = {m: b for m, b in bad.items() if b}
    assert not bad, "underscore names used outside their module:\n" + \
        "\n".join(f"{MODULES[m][len(ROOT) + 1:]}:{u}" for m, b in bad.items() for u in b)
