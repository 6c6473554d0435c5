"""The record a build hands to the runtime: what a compiled model takes, holds and returns.

``gradc.api.module_info`` makes a ``ModuleMeta`` from the lowered program; the build stores it
as JSON (``meta.json`` in a cache entry, ``NAME.gradc.json`` beside a generated module) with the
build's own fields added (cache key, extension module, files and their hashes); the runtime reads
it back with ``ModuleMeta.from_json``. The JSON keeps its format, so cached entries and generated
modules written before this record existed load unchanged, and ``to_json(from_json(d)) == d`` (a
record older than the ``target`` field gains ``"target": "c"``).

Example::

    meta = ModuleMeta.from_json(json.load(open("build/moons.gradc.json")))
    meta.param("W1").shape          # (16, 2)
    [a.name for a in meta.inputs]   # ['x']
"""
from dataclasses import dataclass, field
from types import MappingProxyType

INT32 = "int32"


def _shape(v):
    return tuple(int(d) for d in v)


def _frozen(mapping):
    return MappingProxyType(dict(mapping))


def _set(record, **fields):
    """Normalize fields of a frozen record after ``__init__`` (tuples, read-only mappings)."""
    for k, v in fields.items():
        object.__setattr__(record, k, v)


@dataclass(frozen=True)
class ParamMeta:
    """One parameter: its place in the flat parameter buffer (``offset``, ``size`` values, row-major)
    and the initializer spec ``gradc.init.draw`` reads.

    Example::

        p = meta.param("b1")
        flat[p.offset:p.offset + p.size].reshape(p.shape)      # b1 in Params.flat
    """
    name: str
    shape: tuple
    offset: int
    size: int
    init: MappingProxyType

    def __post_init__(self):
        _set(self, shape=_shape(self.shape), offset=int(self.offset), size=int(self.size), init=_frozen(self.init))

    @classmethod
    def from_json(cls, d):
        """The record of one entry of the JSON's ``params`` list.

        Example: ``ParamMeta.from_json({"name": "b", "shape": [4], "offset": 8, "size": 4, "init": {...}})``.
        """
        return cls(d["name"], d["shape"], d["offset"], d["size"], d["init"])

    def to_json(self):
        """The JSON dict: ``{"name", "shape", "offset", "size", "init"}``.

        Example: ``meta.param("b").to_json()["offset"]  # 8``.
        """
        return dict(name=self.name, shape=list(self.shape), offset=self.offset, size=self.size,
                    init=dict(self.init))


@dataclass(frozen=True)
class ArgMeta:
    """One input or target, per sample (the batch dimension left out): ``dtype`` is ``"int32"`` for
    ids and labels, else the model's real type; ``dropout`` is the drop rate of a dropout mask.

    Example::

        [a.name for a in meta.inputs if a.dropout is not None]      # the dropout masks
    """
    name: str
    shape: tuple
    dtype: str
    dropout: float = None

    def __post_init__(self):
        _set(self, shape=_shape(self.shape))

    @property
    def is_int(self):
        """Whether the argument is passed as int32 (ids, class labels).

        Example: ``[a.name for a in meta.inputs if a.is_int]  # ['user', 'item']``.
        """
        return self.dtype == INT32

    @classmethod
    def from_json(cls, d):
        """The record of one entry of the JSON's ``inputs`` or ``targets`` list.

        Example: ``ArgMeta.from_json({"name": "u", "shape": [], "dtype": "int32"}).is_int  # True``.
        """
        return cls(d["name"], d["shape"], d["dtype"], d.get("dropout"))

    def to_json(self):
        """The JSON dict: ``{"name", "shape", "dtype"}``, and ``"dropout"`` for a mask.

        Example: ``ArgMeta("drop", (8,), "real", 0.25).to_json()["dropout"]  # 0.25``.
        """
        d = dict(name=self.name, shape=list(self.shape), dtype=self.dtype)
        if self.dropout is not None:
            d["dropout"] = self.dropout
        return d


@dataclass(frozen=True)
class OutputMeta:
    """One output, per sample. Example: ``{o.name: o.shape for o in meta.outputs}``."""
    name: str
    shape: tuple

    def __post_init__(self):
        _set(self, shape=_shape(self.shape))

    @classmethod
    def from_json(cls, d):
        """The record of one entry of the JSON's ``outputs`` list.

        Example: ``OutputMeta.from_json({"name": "z", "shape": [4]}).shape  # (4,)``.
        """
        return cls(d["name"], d["shape"])

    def to_json(self):
        """The JSON dict: ``{"name", "shape"}``. Example: ``OutputMeta("z", (4,)).to_json()``."""
        return dict(name=self.name, shape=list(self.shape))


# the keys a build adds to the record it stores; absent before the build
BUILD_KEYS = ("key", "module", "so", "files", "gradc", "meta_sha256")
# keys that older records may lack (``target`` then means "c")
_OPTIONAL = ("target", "model_hash", "ws_reals", "ws_ints")


@dataclass(frozen=True)
class ModuleMeta:
    """A compiled model as the runtime sees it.

    ``name`` is the model's name, ``prefix`` the C prefix of its functions, ``dtype`` ``"float32"``
    or ``"float64"``, ``target`` ``"c"`` or ``"cuda"``. ``params``, ``inputs``, ``targets`` and
    ``outputs`` are in declaration order; ``int_bounds`` maps an int32 input to the row count each of
    its elements indexes (``None``: indexes nothing). ``build`` holds what the build added (cache key,
    extension module ``module`` and file ``so``, file hashes), empty before the build; ``extra``
    any key this version does not know, kept so that the JSON round-trips.

    Example::

        meta = ModuleMeta.from_json(d)
        meta.n_params, meta.param("W1").offset, meta.build["so"]
    """
    name: str
    prefix: str
    dtype: str
    params: tuple
    n_params: int
    inputs: tuple
    targets: tuple
    outputs: tuple
    int_bounds: MappingProxyType
    target: str = "c"
    model_hash: str = None
    ws_reals: int = None
    ws_ints: int = None
    build: MappingProxyType = field(default_factory=dict)
    extra: MappingProxyType = field(default_factory=dict)

    def __post_init__(self):
        _set(self, params=tuple(self.params), n_params=int(self.n_params), inputs=tuple(self.inputs),
             targets=tuple(self.targets), outputs=tuple(self.outputs),
             int_bounds=_frozen({k: tuple(v) for k, v in self.int_bounds.items()}),
             build=_frozen(self.build), extra=_frozen(self.extra))

    @classmethod
    def from_json(cls, d):
        """The record of a JSON dict as a build stores it (or as ``to_json`` writes it).

        Example: ``ModuleMeta.from_json(json.load(open(os.path.join(entry, "meta.json"))))``.
        """
        known = {"name", "prefix", "dtype", "params", "n_params", "inputs", "targets", "outputs",
                 "int_bounds", *_OPTIONAL, *BUILD_KEYS}
        return cls(
            name=d["name"], prefix=d["prefix"], dtype=d["dtype"],
            params=[ParamMeta.from_json(p) for p in d["params"]], n_params=d["n_params"],
            inputs=[ArgMeta.from_json(a) for a in d["inputs"]], targets=[ArgMeta.from_json(a) for a in d["targets"]],
            outputs=[OutputMeta.from_json(o) for o in d["outputs"]], int_bounds=d["int_bounds"],
            **{k: d[k] for k in _OPTIONAL if k in d},
            build={k: d[k] for k in BUILD_KEYS if k in d}, extra={k: v for k, v in d.items() if k not in known})

    def to_json(self):
        """The JSON dict (lists, dicts, strings and numbers), as the build stores it.

        Example: ``json.dumps(meta.to_json(), sort_keys=True)``.
        """
        d = dict(name=self.name, prefix=self.prefix, dtype=self.dtype,
                 params=[p.to_json() for p in self.params], n_params=self.n_params,
                 inputs=[a.to_json() for a in self.inputs], targets=[a.to_json() for a in self.targets],
                 outputs=[o.to_json() for o in self.outputs],
                 int_bounds={k: list(v) for k, v in self.int_bounds.items()})
        d["target"] = self.target
        for k in _OPTIONAL[1:]:
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        d.update(self.build)
        d.update(self.extra)
        return d

    def param(self, name):
        """The ``ParamMeta`` of parameter ``name``. Example: ``meta.param("W1").shape``."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{name!r} is not a parameter of model {self.name!r}")

    @property
    def dropout_inputs(self):
        """Names of the inputs that are dropout masks. Example: ``meta.dropout_inputs  # ('drop',)``."""
        return tuple(a.name for a in self.inputs if a.dropout is not None)
