"""One validation pass over an opened recording, before the reader trusts any of it.

A recording is one self-contained file laid out as docs/format.md says. Whatever a file holds —
a link into another file, a virtual dataset over one, raw storage in an outside file (which would
hand `/etc/passwd` back as matrix values), an attribute of the wrong type or shape, JSON nested a
hundred thousand deep, a string where a matrix belongs, an index longer than its data — it is
turned here into one ``RecordingError`` sentence. A file that passes comes back as a ``Checked``:
the typed attributes and the opened datasets the reader needs, so that the reader opens nothing
a second time and checks nothing again.

Cost: one walk over the file's links (no object is opened for it), and one open of each object
the reader uses, with its attributes; no data is read but the index datasets' lengths."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.h5.format import BF16_ENCODING, FORMAT_VERSION, STATUSES, STORAGE_DTYPES, UPDATE_COLUMNS
from lorascope.h5.opening import damaged

__all__ = ["validate", "Checked", "CheckedModule", "plain", "MAX_JSON_BYTES", "MAX_MATRIX_VALUES"]

MAX_JSON_BYTES = 16 * 2**20  # a run's whole config is a few KiB
_MAX_TEXT_BYTES = 2**20  # run names, versions, hosts
_MAX_JSON_DEPTH = 64  # a config is three levels deep
# One snapshot of one matrix: a 256k-token embedding at rank 1024 is 2.7e8 values. A larger shape
# in a file is a forgery whose first read would try to allocate it.
MAX_MATRIX_VALUES = 2**30
_MAX_PID = 2**31 - 1

# What h5py raises when the file's own metadata is broken (a block failing its checksum, an
# object header that does not decode): while validating, that means a damaged file.
_DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@dataclass
class CheckedModule:
    name: str
    attrs: dict[str, Any]  # plain Python values; rank, alpha, ... of the checked types
    series: dict[str, h5py.Dataset]  # "A", "B" and, when recorded, "grad_A", "grad_B", "magnitude"
    w0: h5py.Dataset | None
    state: dict[str, dict[str, h5py.Dataset]]  # "state_A"/"state_B" -> optimizer key -> series


@dataclass
class Checked:
    """What the reader may trust: every value typed, every length within its dataset."""

    attrs: dict[str, Any]  # root attributes, plain Python values
    config: dict
    environment: dict
    peft: dict  # the PEFT setup, {} without PEFT
    not_recorded: list  # [{"module", "type", "reason"}]: layers that trained but are not recorded
    counts: dict[str, int]  # committed rows: snapshots, grads, state, updates, scalars, other
    index: dict[str, h5py.Dataset]  # "snapshots/step", "grad_snapshots/micro_step", ...
    modules: list[CheckedModule]
    update_norms: h5py.Dataset
    scalar_columns: dict[str, h5py.Dataset] = field(default_factory=dict)  # name -> 1-D series
    # name -> whether a value was ever given (the column's "logged" attribute; None in files
    # written before it existed)
    scalar_logged: dict[str, bool | None] = field(default_factory=dict)
    scalars_other: h5py.Dataset | None = None


def _bad(path: Path, what: str) -> RecordingError:
    return RecordingError(
        f"{path} is not a valid lorascope recording: {what}; record the run again, or restore the "
        "file from a copy"
    )


def plain(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class _Attrs:
    """Typed reads of one object's attributes (all read once), each failure a sentence naming
    the attribute and its object."""

    def __init__(self, obj: Any, where: str, path: Path) -> None:
        self.where, self.path = where, path
        self.values: dict[str, Any] = dict(obj.attrs.items())

    def has(self, name: str) -> bool:
        return name in self.values

    def _scalar(self, name: str) -> Any:
        if name not in self.values:
            raise _bad(self.path, f"{self.where} has no attribute {name!r}")
        value = self.values[name]
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise _bad(self.path, f"the attribute {name!r} of {self.where} is an array of shape {value.shape}, not one value")
            value = value.reshape(-1)[0]
        return value.item() if isinstance(value, np.generic) else value

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> int:
        value = self._scalar(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is {type(value).__name__}, not an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is {value}, not {span}")
        return value

    def number(self, name: str) -> float:
        value = self._scalar(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is {type(value).__name__}, not a number")
        if not np.isfinite(value):
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is {value}, not a finite number")
        return float(value)

    def flag(self, name: str) -> bool:
        value = self._scalar(name)
        if not isinstance(value, (bool, int)):
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is {type(value).__name__}, not true or false")
        return bool(value)

    def text(self, name: str, limit: int = _MAX_TEXT_BYTES) -> str:
        value = self._scalar(name)
        if not isinstance(value, (bytes, str)):
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is {type(value).__name__}, not text")
        if len(value) > limit:
            raise _bad(self.path, f"the attribute {name!r} of {self.where} holds {len(value)} characters, more than {limit}")
        return plain(value)

    def json(self, name: str, kind: type) -> Any:
        text = self.text(name, MAX_JSON_BYTES)
        try:
            value = json.loads(text or ("{}" if kind is dict else "[]"))
        except (ValueError, RecursionError) as exc:
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(value, kind):
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is a JSON {type(value).__name__}, not a JSON {kind.__name__}")
        if _depth(value) > _MAX_JSON_DEPTH:
            raise _bad(self.path, f"the attribute {name!r} of {self.where} is nested deeper than {_MAX_JSON_DEPTH} levels")
        return value

    def plain(self) -> dict[str, Any]:
        return {k: plain(v) for k, v in self.values.items()}


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
    return deepest


def _outside(path: Path, what: str) -> RecordingError:
    return RecordingError(
        f"{path} is refused: {what}. A lorascope recording is one self-contained file and "
        "lorascope never reads data from outside it; record the run again, or copy the data in"
    )


def _hard_links_only(f: h5py.File, path: Path) -> None:
    """Every link in the file is a hard link inside it: no soft links (they can loop, or point
    anywhere) and no external links. Walks the links without opening any object."""
    found: list[str] = []

    def visit(name: bytes, info) -> int | None:
        if info.type != h5py.h5l.TYPE_HARD:
            kind = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}
            found.append(f"/{name.decode('utf-8', 'replace')} is {kind.get(info.type, 'a user-defined link')}")
            return 1  # stops the walk
        return None

    f.id.links.visit(visit, info=True)
    if found:
        raise _outside(path, found[0])


# --- groups and datasets -------------------------------------------------------------------------

_KINDS = {"iu": "integers", "f": "floats", "fu": "floats", "fiu": "numbers"}


def _node(parent: h5py.Group, name: str, path: Path, kind: type, optional: bool = False):
    obj = parent.get(name)
    where = f"{parent.name.rstrip('/')}/{name}"
    if obj is None:
        if optional:
            return None
        raise _bad(path, f"it has no {where}")
    if not isinstance(obj, kind):
        raise _bad(path, f"{where} is a {type(obj).__name__.lower()}, not a {kind.__name__.lower()}")
    if kind is h5py.Dataset:
        if obj.is_virtual:
            raise _outside(path, f"{where} is a virtual dataset")
        if obj.id.get_create_plist().get_external_count():
            raise _outside(path, f"{where} stores its data in an external file")
    return obj


def _dataset(parent, name: str, path: Path, kinds: str, ndim: int, optional: bool = False) -> h5py.Dataset | None:
    ds = _node(parent, name, path, h5py.Dataset, optional)
    if ds is None:
        return None
    if ds.dtype.kind not in kinds or ds.dtype.names is not None:
        raise _bad(path, f"{ds.name} holds {ds.dtype}, not {_KINDS[kinds]}")
    if ds.ndim != ndim:
        raise _bad(path, f"{ds.name} has {ds.ndim} dimension(s), not {ndim}")
    return ds


def _index(f: h5py.File, group: str, columns: dict[str, str], path: Path, into: dict) -> int:
    """An index group's columns (1-D, of their kind), into `into`; returns the committed count
    (the shortest column: see docs/format.md)."""
    g = _node(f, group, path, h5py.Group)
    lengths = []
    for column, kinds in columns.items():
        ds = _dataset(g, column, path, kinds, 1)
        into[f"{group}/{column}"] = ds
        lengths.append(ds.shape[0])
    return min(lengths)


def _rows(ds: h5py.Dataset, needed: int, path: Path) -> h5py.Dataset:
    if ds.shape[0] < needed:
        raise _bad(path, f"{ds.name} has {ds.shape[0]} rows but its index counts {needed}")
    return ds


def _series(group: h5py.Group, name: str, path: Path, rows: int, tail: tuple[int, ...]) -> h5py.Dataset:
    """A (T, *tail) matrix series: floats (or bfloat16 bits), at least `rows` rows."""
    ds = _dataset(group, name, path, "fu", 1 + len(tail))
    if tuple(ds.shape[1:]) != tail:
        raise _bad(path, f"{ds.name} has shape {tuple(ds.shape[1:])} per snapshot, its module says {tail}")
    encoding = _Attrs(ds, ds.name, path).text("encoding") if "encoding" in ds.attrs else ""
    if encoding not in ("", BF16_ENCODING):
        raise _bad(path, f"{ds.name} has the unknown encoding {encoding!r}")
    if ds.dtype.kind == "u" and (encoding != BF16_ENCODING or ds.dtype.itemsize != 2):
        raise _bad(path, f"{ds.name} holds {ds.dtype} without the {BF16_ENCODING!r} encoding")
    return _rows(ds, rows, path)


_MAGNITUDE_NORMS = ("", "row", "column")

# Per-module series: (name, the count its rows follow, its per-snapshot shape from rank/in/out),
# the first two required.
_MODULE_SERIES: tuple[tuple[str, str, Callable[[int, int, int], tuple[int, int]]], ...] = (
    ("A", "snapshots", lambda rank, n_in, n_out: (rank, n_in)),
    ("B", "snapshots", lambda rank, n_in, n_out: (n_out, rank)),
    ("grad_A", "grads", lambda rank, n_in, n_out: (rank, n_in)),
    ("grad_B", "grads", lambda rank, n_in, n_out: (n_out, rank)),
)


def _module(modules: h5py.Group, name: str, count: int, counts: dict[str, int], path: Path) -> CheckedModule:
    group = _node(modules, name, path, h5py.Group)
    attrs = _Attrs(group, f"module {name!r}", path)
    rank, n_in, n_out = attrs.integer("rank", 1), attrs.integer("in_features", 1), attrs.integer("out_features", 1)
    attrs.number("alpha")
    attrs.number("scaling")
    attrs.integer("index", 0, count - 1)
    if attrs.has("layer_index"):
        attrs.integer("layer_index", -1)
    for key in ("kind", "init", "name", "param_dtype", "adapter"):
        if attrs.has(key):
            attrs.text(key)
    norm = attrs.text("magnitude_norm") if attrs.has("magnitude_norm") else ""
    if norm not in _MAGNITUDE_NORMS:
        raise _bad(path, f"module {name!r} has the unknown magnitude_norm {norm!r}")
    if attrs.has("weight_shape"):
        shape = np.asarray(attrs.values["weight_shape"])
        if shape.ndim > 1 or shape.size > 8 or (shape.size and shape.dtype.kind not in "iu"):
            raise _bad(path, f"the attribute 'weight_shape' of module {name!r} is not a kernel shape")
    for key in ("a_trainable", "b_trainable"):
        if attrs.has(key):
            attrs.flag(key)
    if max(rank * n_in, rank * n_out) > MAX_MATRIX_VALUES:
        raise _bad(path, f"module {name!r} claims rank {rank} and shape ({n_out}, {n_in}), beyond any LoRA matrix")
    series = {}
    for key, counted_by, shape in _MODULE_SERIES:
        if key in ("A", "B") or key in group:
            series[key] = _series(group, key, path, counts[counted_by], shape(rank, n_in, n_out))
    if "magnitude" in group:  # DoRA: one norm per row (out) or per column (in) of W0 + s·B·A
        length = n_in if norm == "column" else n_out
        series["magnitude"] = _series(group, "magnitude", path, counts["snapshots"], (length,))
        if "W0" not in group:
            raise _bad(path, f"the DoRA module {name!r} has no W0, which its ΔW needs")
    w0 = None
    if "W0" in group:
        if n_out * n_in > MAX_MATRIX_VALUES:
            raise _bad(path, f"module {name!r} claims a W0 of shape ({n_out}, {n_in}), too large to be one")
        w0 = _dataset(group, "W0", path, "f", 2)
        if tuple(w0.shape) != (n_out, n_in):
            raise _bad(path, f"{w0.name} has shape {w0.shape}, its module says ({n_out}, {n_in})")
    state: dict[str, dict[str, h5py.Dataset]] = {}
    for matrix in ("state_A", "state_B"):
        sub = _node(group, matrix, path, h5py.Group, optional=True)
        if sub is None:
            continue
        state[matrix] = {}
        for key in sub:
            ds = _node(sub, key, path, h5py.Dataset)
            if ds.dtype.kind != "f" or ds.ndim < 1:
                raise _bad(path, f"{ds.name} holds {ds.dtype} of {ds.ndim} dimension(s), not a float series")
            if int(np.prod(ds.shape[1:], dtype=np.float64)) > MAX_MATRIX_VALUES:
                raise _bad(path, f"{ds.name} claims shape {ds.shape}, beyond any optimizer state")
            state[matrix][key] = _rows(ds, counts["state"], path)
    return CheckedModule(name, attrs.plain(), series, w0, state)


_ROOT_CHECKS: dict[str, Callable[[_Attrs, str], Any]] = {
    # attribute -> how it must read (each checked when present)
    "run_name": lambda a, n: a.text(n),
    "lorascope_version": lambda a, n: a.text(n),
    "created": lambda a, n: a.text(n),
    "record": lambda a, n: a.json(n, dict),
    "peft": lambda a, n: a.json(n, dict),
    "not_recorded": lambda a, n: a.json(n, list),
    "schedule": lambda a, n: a.json(n, dict),
    "planned_steps": lambda a, n: a.integer(n, -1),
    "writer_pid": lambda a, n: a.integer(n, 1, _MAX_PID),
    "writer_host": lambda a, n: a.text(n),
    "compression": lambda a, n: a.text(n),
    "resumed_from_step": lambda a, n: a.integer(n, 0),
    "resumed_time_offset": lambda a, n: a.number(n),
}


def validate(f: h5py.File, path: Path) -> Checked:
    """The file's trusted contents, or a RecordingError with one sentence when ``f`` is not a
    recording of format v1 ... v``FORMAT_VERSION`` laid out as docs/format.md says."""
    path = Path(path)
    try:
        return _validate(f, path)
    except RecordingError:
        raise
    except _DAMAGE as exc:
        raise damaged(path, exc) from None


def _validate(f: h5py.File, path: Path) -> Checked:
    root = _Attrs(f, "the file", path)
    if not root.has("lorascope_format"):
        raise RecordingError(
            f"{path} is an HDF5 file but not a lorascope recording (it has no lorascope_format "
            "attribute); give a file written by `lorascope record`"
        )
    version = root.integer("lorascope_format", 1)
    if version > FORMAT_VERSION:
        from lorascope import __version__

        raise RecordingError(
            f"{path} uses recording format v{version}, newer than this lorascope {__version__} reads "
            f"(v{FORMAT_VERSION}); upgrade lorascope (pip install -U lorascope) to read it"
        )
    _hard_links_only(f, path)
    for name, check in _ROOT_CHECKS.items():
        if root.has(name):
            check(root, name)
    config = root.json("config", dict) if root.has("config") else {}
    environment = root.json("environment", dict) if root.has("environment") else {}
    peft = root.json("peft", dict) if root.has("peft") else {}
    not_recorded = root.json("not_recorded", list) if root.has("not_recorded") else []
    if not all(isinstance(n, dict) for n in not_recorded):
        raise _bad(path, "its not_recorded attribute is not a list of {module, type, reason} objects")
    if not (isinstance(peft.get("adapters", {}), dict) and all(isinstance(c, dict) for c in peft.get("adapters", {}).values())
            and isinstance(peft.get("active_adapters", []), list) and isinstance(peft.get("modules_to_save", []), list)):
        raise _bad(path, "its peft attribute is not {active_adapters: [...], adapters: {name: LoraConfig}, modules_to_save: [...]}")
    if root.has("status") and root.text("status") not in STATUSES:
        raise _bad(path, f"its status {root.text('status')!r} is none of {', '.join(STATUSES)}")
    if root.has("storage_dtype") and root.text("storage_dtype") not in STORAGE_DTYPES:
        raise _bad(path, f"its storage_dtype {root.text('storage_dtype')!r} is none of {', '.join(STORAGE_DTYPES)}")

    index: dict[str, h5py.Dataset] = {}
    counts = {
        "snapshots": _index(f, "snapshots", {"step": "iu", "micro_step": "iu", "time": "f"}, path, index),
        "grads": (_index(f, "grad_snapshots", {"step": "iu", "micro_step": "iu", "loss_scale": "f"}, path, index)
                  if "grad_snapshots" in f else 0),
        "state": _index(f, "state_snapshots", {"step": "iu"}, path, index) if "state_snapshots" in f else 0,
        "updates": _index(f, "updates", {"step": "iu"}, path, index),
        "scalars": _index(f, "scalars", {"step": "iu"}, path, index),
    }
    modules = _node(f, "modules", path, h5py.Group)
    order_attrs = _Attrs(modules, "/modules", path)
    order = order_attrs.json("order", list) if order_attrs.has("order") else list(modules)
    if not all(isinstance(n, str) for n in order) or len(set(order)) != len(order):
        raise _bad(path, "the module order of /modules is not a list of distinct names")
    checked_modules = [_module(modules, name, len(order), counts, path) for name in order]

    norms = _dataset(f["updates"], "norms", path, "f", 3)
    if tuple(norms.shape[1:]) != (len(order), len(UPDATE_COLUMNS)):
        raise _bad(path, f"/updates/norms has shape {norms.shape[1:]} per step, not ({len(order)}, {len(UPDATE_COLUMNS)})")
    _rows(norms, counts["updates"], path)

    scalars = f["scalars"]
    columns = {name: _rows(_dataset(scalars, name, path, "fiu", 1), counts["scalars"], path)
               for name in scalars if name not in ("step", "other")}
    logged = {name: (_Attrs(ds, ds.name, path).flag("logged") if "logged" in ds.attrs else None)
              for name, ds in columns.items()}
    other = _node(scalars, "other", path, h5py.Dataset, optional=True)
    counts["other"] = 0
    if other is not None:
        names = other.dtype.names or ()
        if other.ndim != 1 or not {"step", "name", "value"} <= set(names):
            raise _bad(path, "/scalars/other is not a table of (step, name, value) rows")
        if other.dtype["step"].kind not in "iu" or other.dtype["name"].kind != "S" or other.dtype["value"].kind != "f":
            raise _bad(path, f"/scalars/other holds {other.dtype}, not (integer, bytes, float) rows")
        other_attrs = _Attrs(other, "/scalars/other", path)
        counts["other"] = other_attrs.integer("rows", 0) if other_attrs.has("rows") else 0
        _rows(other, counts["other"], path)
    return Checked(root.plain(), config, environment, peft, not_recorded, counts, index, checked_modules, norms,
                   columns, logged, other)
