"""MANO model files supplied by the user, read without executing pickle code.

MANO (Romero, Tzionas, Black, "Embodied Hands", SIGGRAPH Asia 2017) is distributed by its
authors as ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (Python 2 pickles holding numpy arrays, a
scipy sparse joint regressor and ``chumpy`` objects); handfit never ships them. An ``.npz``
with the same arrays works too.

Loading never runs code from the file and validates before it builds:
:class:`RestrictedUnpickler` resolves only numpy's array/dtype reconstruction helpers,
scipy's sparse matrix classes and ``copyreg``'s plain object reconstructor, all mapped to
inert stand-ins; any ``chumpy`` class becomes an inert :class:`ChumpyStandIn` whose pickled
state is turned into a numpy array afterwards; every other global is refused with
:class:`UnsafePickleError`, before anything is called. An array is made only after its dtype
(bool, integer or float; no object, structured/void, complex, string or datetime dtypes),
its declared shape and its buffer length have been checked against each other and against
the bounds (:data:`MAX_ARRAY_ELEMENTS`, :data:`MAX_ARRAY_BYTES` per array,
:data:`MAX_TOTAL_BYTES` for the file, :data:`MAX_FILE_BYTES` on disk); sparse matrices are
rebuilt from bounds-checked ``indices``/``indptr`` (or ``row``/``col``) arrays, scipy never
sees them. An ``.npz`` is read member by member from its zip headers (stored or deflated
members within the bounds, refused before decompression; ``.npy`` headers checked; no
pickles). Then every key is checked against the MANO layout below. Every failure is a
one-line :class:`ManoFileError` naming the file and the key.

Mapping onto :class:`HandModelData` (lengths metres -> mm, the canonical hand frame of
:mod:`hands.model_data`):

- ``v_template`` (778, 3), ``f`` (1538, 3): template and faces;
- ``shapedirs`` (778, 3, 10): shape basis (betas), and ``J_regressor @ shapedirs`` for the joints;
  for a left hand the known sign fix ``shapedirs[:, 0, :] *= -1`` of the released MANO_LEFT
  file is applied (``fix_left_shapedirs``);
- ``posedirs`` (778, 3, 135): pose correctives on ``R_j - I`` of the 15 finger joints;
- ``J_regressor`` (16, 778): rest joints ``J_regressor @ v_template``;
- ``kintree_table`` (2, 16): parents; ``weights`` (778, 16): LBS weights;
- ``hands_components`` (45, 45), ``hands_mean`` (45,): the PCA pose space
  (:func:`mano_pca_pose`).

Joint frames are the canonical axes (MANO's joints have no frames of their own), so a MANO
axis-angle pose is the model's ``pose`` argument rotated into the canonical frame
(:func:`mano_pose`). The 20 articulation DoF of the default hand's layout
(:func:`hands.rig.articulation_table`) are defined on the MANO joints too, so the fitter works
unchanged. Keypoints: the 16 joints plus the fingertip vertices thumb 744, index 320,
middle 443, ring 554, little 671 (the common convention).
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .anny_hand import DIGITS
from .model_data import KEYPOINT_NAMES, HandModelData
from .rig import SideError, articulation_table, canonical_transform, check_side

__all__ = ["load_mano", "read_mano_arrays", "mano_pose", "mano_pca_pose", "ManoFrame", "ManoFileError",
           "UnsafePickleError", "RestrictedUnpickler", "ChumpyStandIn", "MANO_TIP_VERTICES", "MANO_CHAINS"]

NUM_VERTICES, NUM_FACES, NUM_JOINTS = 778, 1538, 16

#: MANO joint indices of each digit's three joints, proximal first (MANO's order: wrist,
#: index, middle, little, ring, thumb).
MANO_CHAINS = {"thumb": (13, 14, 15), "index": (1, 2, 3), "middle": (4, 5, 6), "ring": (10, 11, 12),
               "little": (7, 8, 9)}

#: Fingertip vertices of the MANO mesh (the common convention).
MANO_TIP_VERTICES = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "little": 671}

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")


#: Bounds of what a MANO file may make the loader allocate (checked before the allocation).
#: The released files are about 4 MB; their largest array, ``posedirs``, has 315,090 elements.
MAX_FILE_BYTES = 64 * 2**20  #: a ``.pkl`` or ``.npz`` on disk
MAX_ARRAY_ELEMENTS = 2**22  #: one array (dense or sparse), 4,194,304 elements
MAX_ARRAY_BYTES = 32 * 2**20  #: one decoded array
MAX_TOTAL_BYTES = 128 * 2**20  #: all decoded arrays of one file together
MAX_NDIM = 4
MAX_NPZ_MEMBERS = 64
MAX_SHAPE_DIMS = 300  #: shape coefficients (``shapedirs``' last axis); MANO has 10
MAX_PCA_COMPONENTS = 45  #: rows of ``hands_components``
MAX_LIST_ITEMS = 2**16  #: numbers in a plain pickled list or tuple used as an array
MAX_ABS_VALUE = 1e4  #: largest magnitude of a float entry (metres; MANO's are below 1)

#: Number types an array may have: bool, signed and unsigned integers, floats. Everything else
#: (object, structured or void, complex, strings, datetimes) is refused before numpy sees it.
_TYPESTR = re.compile(r"[<>|=]?(b1|\?|[iu][1248]|f[248])")

#: Layout of the keys the loader uses: (shape with None for a free axis, allowed dtype kinds).
_LAYOUT = {
    "v_template": ((NUM_VERTICES, 3), "iuf"),
    "f": ((NUM_FACES, 3), "iu"),
    "shapedirs": ((NUM_VERTICES, 3, None), "iuf"),
    "posedirs": ((NUM_VERTICES, 3, 9 * (NUM_JOINTS - 1)), "iuf"),
    "J_regressor": ((NUM_JOINTS, NUM_VERTICES), "biuf"),
    "kintree_table": ((2, NUM_JOINTS), "iu"),
    "weights": ((NUM_VERTICES, NUM_JOINTS), "iuf"),
    "hands_components": ((None, 3 * (NUM_JOINTS - 1)), "iuf"),
    "hands_mean": ((3 * (NUM_JOINTS - 1),), "iuf"),
}


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class ManoFileError(ValueError):
    """A MANO file that cannot be used; the one-line message names the file, the key and the problem."""

    def __init__(self, message="", *args):
        super().__init__(" ".join(str(message).split()), *args)


class UnsafePickleError(ManoFileError):
    """The pickle asks for a global that is not on the allow-list (it could run code)."""


class _Refused:
    """What a refused array, dtype or scalar becomes while unpickling: the reason, no data.

    Refusal is deferred so that the error can name the key that holds the object."""

    def __init__(self, problem: str):
        self.problem = problem

    def __setstate__(self, state):  # a BUILD on a refused object changes nothing
        pass


def _describe_typestr(typestr) -> str:
    kinds = {"O": "object", "V": "structured/void", "c": "complex", "S": "bytes", "a": "bytes", "U": "string",
             "M": "datetime", "m": "timedelta"}
    text = str(typestr)[:40]
    kind = next((v for k, v in kinds.items() if k in text.lstrip("<>|=")[:1]), None)
    return f"dtype {text!r}" + (f" ({kind})" if kind else "")


class _DtypeSpec:
    """Stand-in for ``numpy.dtype`` while unpickling: a plain number type or a refusal.

    numpy pickles a dtype as ``dtype(typestr, align, copy)`` followed by a BUILD with
    ``(version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])``; a
    structured dtype hides its fields (maybe an object field) in that state, so both parts are
    checked and no numpy dtype with fields or a sub-array is ever made."""

    def __init__(self, typestr=None, align=False, copy=False):
        self.dtype = None
        self.problem = None
        if isinstance(typestr, bytes):
            typestr = typestr.decode("latin1")
        if isinstance(typestr, str) and _TYPESTR.fullmatch(typestr):
            self.dtype = np.dtype(typestr)
        else:
            self.problem = (f"{_describe_typestr(typestr)} is not a real number type (object, structured, "
                            "complex, string and datetime dtypes are refused)")

    def __setstate__(self, state):
        if self.problem is not None:
            return
        if not isinstance(state, tuple) or not 6 <= len(state) <= 9:
            self.problem, self.dtype = "a dtype with a malformed pickled state", None
            return
        extra = state[2:4] if len(state) == 6 else state[2:5]  # (subarray, [names,] fields)
        if any(x is not None for x in extra):
            self.problem, self.dtype = "a dtype with fields or a sub-array (structured dtypes are refused)", None
            return
        order = state[1]
        if isinstance(order, bytes):
            order = order.decode("latin1")
        if order not in ("<", ">", "|", "="):
            self.problem, self.dtype = f"a dtype with byte order {str(order)[:10]!r}", None
            return
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)


def _check_declared(shape, dtype: np.dtype) -> tuple[tuple[int, ...] | None, str | None]:
    """Validate a declared shape against the bounds; ``(shape, None)`` or ``(None, problem)``."""
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                                       for n in shape):
        return None, "an array with a malformed shape"
    shape = tuple(int(n) for n in shape)
    if len(shape) > MAX_NDIM or any(n < 0 for n in shape):
        return None, f"an array of shape {shape[:8]} (at most {MAX_NDIM} non-negative axes)"
    count = 1
    for n in shape:
        count *= n
    if count > MAX_ARRAY_ELEMENTS or count * dtype.itemsize > MAX_ARRAY_BYTES:
        return None, (f"an array of shape {shape} ({count} elements), more than the bound of "
                      f"{MAX_ARRAY_ELEMENTS} elements / {_mib(MAX_ARRAY_BYTES)}")
    return shape, None


class _PendingArray:
    """Stand-in for ``numpy.ndarray`` while unpickling (what ``_reconstruct`` returns).

    Its BUILD state ``(version, shape, dtype, is_fortran, rawdata)`` is checked (a real number
    dtype, a bounded shape, a buffer of exactly ``prod(shape) * itemsize`` bytes, the running
    total of decoded bytes under :data:`MAX_TOTAL_BYTES`) before numpy reads the buffer."""

    def __init__(self, budget: list):
        self._budget = budget
        self.array = None
        self.problem = "an array without data (its pickled state is missing)"

    def __setstate__(self, state):
        self.array, self.problem = _build_array(state, self._budget)


def _build_array(state, budget):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        return None, "an array with a malformed pickled state"
    if len(state) == 5:
        state = state[1:]  # drop the version
    shape, dtype, fortran, raw = state
    if isinstance(dtype, _Refused):
        return None, dtype.problem
    if not isinstance(dtype, _DtypeSpec):
        return None, f"an array whose dtype is a pickled {type(dtype).__name__}"
    if dtype.problem is not None:
        return None, dtype.problem
    return _array_from_bytes(raw, dtype.dtype, shape, bool(fortran), budget)


def _array_from_bytes(raw, dtype: np.dtype, shape, fortran: bool, budget):
    shape, problem = _check_declared(shape, dtype)
    if problem:
        return None, problem
    if isinstance(raw, str):  # Python 2 pickles: str bytes decoded as latin-1
        try:
            raw = raw.encode("latin1")
        except UnicodeEncodeError:
            return None, "an array whose data is text, not bytes"
    if not isinstance(raw, (bytes, bytearray)):
        return None, f"an array whose data is a {type(raw).__name__}, not bytes"
    count = int(np.prod(shape, dtype=np.int64))
    need = count * dtype.itemsize
    if len(raw) != need:
        return None, (f"an array of shape {shape} and dtype {dtype.str} needs {need} bytes of data, "
                      f"its buffer has {len(raw)}")
    if budget[0] + need > MAX_TOTAL_BYTES:
        return None, f"arrays of more than {_mib(MAX_TOTAL_BYTES)} in all"
    budget[0] += need
    flat = np.frombuffer(bytes(raw), dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy(), None


class _NdarrayMarker:
    """What the global ``numpy.ndarray`` resolves to: only a tag for ``_reconstruct``."""


class ChumpyStandIn:
    """Inert stand-in for a pickled ``chumpy`` object: keeps its class name and state only."""

    chumpy_class = "chumpy.ch.Ch"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, (dict, type(None))) for s in state):
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise ManoFileError(f"{self.chumpy_class} object with a {type(state).__name__} state, expected a dict")
        self.__dict__["_state"] = state

    def to_array(self, _depth: int = 0) -> np.ndarray:
        """The array this chumpy object stands for (``Ch``: its ``x``; ``Select``: ``a.ravel()[idxs]``)."""
        if _depth > 8:
            raise ManoFileError(f"{self.chumpy_class} objects nested more than 8 deep")
        state = self.__dict__.get("_state", {})
        sub = lambda v: _plain_array(v, _depth + 1)  # noqa: E731
        if "x" in state:
            return sub(state["x"])
        if "a" in state and "idxs" in state:
            a, idxs = sub(state["a"]).ravel(), sub(state["idxs"]).ravel()
            if idxs.dtype.kind not in "iu" or (idxs.size and (idxs.min() < -a.size or idxs.max() >= a.size)):
                raise ManoFileError(f"{self.chumpy_class}: idxs must be integers in [0, {a.size})")
            out = a[idxs.astype(np.int64)]
            shape = state.get("preferred_shape")
            if shape is None:
                return out
            shape, problem = _check_declared(shape, out.dtype)
            if problem or int(np.prod(shape, dtype=np.int64)) != out.size:
                raise ManoFileError(f"{self.chumpy_class}: preferred_shape does not fit {out.size} elements")
            return out.reshape(shape)
        if "a" in state and "axes" in state:  # chumpy.reordering.transpose
            a = sub(state["a"])
            axes = state["axes"]
            if not isinstance(axes, (tuple, list)) or sorted(int(x) if isinstance(x, (int, np.integer)) else -1
                                                              for x in axes) != list(range(a.ndim)):
                raise ManoFileError(f"{self.chumpy_class}: axes must be a permutation of the {a.ndim} axes")
            return np.transpose(a, [int(x) for x in axes])
        if "a" in state and "newshape" in state:  # chumpy.reordering.Reshape
            a = sub(state["a"])
            shape, problem = _check_declared(state["newshape"], a.dtype)
            if problem or int(np.prod(shape, dtype=np.int64)) != a.size:
                raise ManoFileError(f"{self.chumpy_class}: newshape does not fit {a.size} elements")
            return a.reshape(shape)
        raise ManoFileError(f"cannot turn a pickled {self.chumpy_class} (fields {sorted(map(str, state))[:10]}) "
                            "into an array")


class _SparseStandIn:
    """Stand-in for a pickled scipy ``csc``/``csr``/``coo`` matrix: its state only.

    :meth:`to_array` rebuilds the dense matrix from validated arrays: a shape within
    :data:`MAX_ARRAY_ELEMENTS`, ``indptr`` starting at 0, non-decreasing and ending at most at
    ``len(indices)``, every index inside the shape. scipy never sees the arrays."""

    kind = "csc"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict):
            raise ManoFileError(f"a scipy {self.kind}_matrix with a {type(state).__name__} state, expected a dict")
        self.__dict__["_state"] = state

    def to_array(self, _depth: int = 0) -> np.ndarray:
        state = self.__dict__.get("_state", {})
        what = f"a sparse {self.kind} matrix"
        shape = state.get("_shape", state.get("shape"))
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, (int, np.integer))
                                                                     and not isinstance(n, bool) for n in shape)):
            raise ManoFileError(f"{what} without a (rows, columns) shape")
        rows, cols = int(shape[0]), int(shape[1])
        if rows < 0 or cols < 0 or rows * cols > MAX_ARRAY_ELEMENTS:
            raise ManoFileError(f"{what} declares shape ({rows}, {cols}), more than the bound of "
                                f"{MAX_ARRAY_ELEMENTS} elements")

        def vector(name, kinds):
            if name not in state:
                raise ManoFileError(f"{what} without {name}")
            arr = _plain_array(state[name], _depth + 1)
            if arr.ndim != 1 or arr.dtype.kind not in kinds:
                raise ManoFileError(f"{what}: {name} must be a 1-D array of {'integers' if kinds == 'iu' else 'numbers'}, "
                                    f"got shape {arr.shape} dtype {arr.dtype.str}")
            return arr

        data = vector("data", "biuf")
        if self.kind == "coo":
            if "coords" in state:
                coords = state["coords"]
                if not isinstance(coords, (tuple, list)) or len(coords) != 2:
                    raise ManoFileError(f"{what}: coords must be (row, col)")
                state = dict(state, row=coords[0], col=coords[1])
            r, c = vector("row", "iu"), vector("col", "iu")
            if not len(r) == len(c) == len(data):
                raise ManoFileError(f"{what}: row, col and data lengths differ ({len(r)}, {len(c)}, {len(data)})")
        else:
            indices, indptr = vector("indices", "iu"), vector("indptr", "iu")
            major, minor = (cols, rows) if self.kind == "csc" else (rows, cols)
            if len(indptr) != major + 1:
                raise ManoFileError(f"{what} of shape ({rows}, {cols}): indptr has {len(indptr)} entries, "
                                    f"expected {major + 1}")
            if len(indices) != len(data):
                raise ManoFileError(f"{what}: indices and data lengths differ ({len(indices)}, {len(data)})")
            if len(indptr) and (indptr[0] != 0 or (np.diff(indptr.astype(np.float64)) < 0).any()
                                or indptr[-1] > len(indices)):
                raise ManoFileError(f"{what}: indptr must start at 0, never decrease and end at most at "
                                    f"{len(indices)}")
            nnz = int(indptr[-1]) if len(indptr) else 0
            indices, data = indices[:nnz], data[:nnz]
            if nnz and (indices.min() < 0 or indices.max() >= minor):
                raise ManoFileError(f"{what} of shape ({rows}, {cols}): indices outside [0, {minor}) "
                                    f"(got {indices.min()} .. {indices.max()})")
            lead = np.repeat(np.arange(major), np.diff(indptr.astype(np.int64)))
            r, c = (indices, lead) if self.kind == "csc" else (lead, indices)
        if len(r) and (r.min() < 0 or r.max() >= rows or c.min() < 0 or c.max() >= cols):
            raise ManoFileError(f"{what} of shape ({rows}, {cols}): entries outside the shape")
        dense = np.zeros((rows, cols), dtype=np.float64)
        np.add.at(dense, (r.astype(np.int64), c.astype(np.int64)), data.astype(np.float64))
        return dense


_sparse_stand_ins: dict[str, type] = {}


def _sparse_stand_in(name: str) -> type:
    if name not in _sparse_stand_ins:
        _sparse_stand_ins[name] = type(f"SparseStandIn_{name}", (_SparseStandIn,), {"kind": name[:3]})
    return _sparse_stand_ins[name]


def _plain_array(value, _depth: int = 0) -> np.ndarray:
    """A real-number numpy array from what the restricted unpickler made, or ManoFileError."""
    if isinstance(value, _PendingArray):
        if value.problem is not None:
            raise ManoFileError(value.problem)
        return value.array
    if isinstance(value, _Refused):
        raise ManoFileError(value.problem)
    if isinstance(value, (ChumpyStandIn, _SparseStandIn)):
        out = value.to_array(_depth)
    elif isinstance(value, np.ndarray):
        out = value
    elif isinstance(value, (bool, int, float, np.generic)):
        out = np.asarray(value)
    elif isinstance(value, (list, tuple)):
        out = _list_array(value)
    elif isinstance(value, (str, bytes)):
        raise ManoFileError(f"text ({str(value)[:20]!r}), expected an array of numbers")
    else:
        raise ManoFileError(f"a pickled {type(value).__name__}, expected an array")
    if out.dtype.kind not in "biuf" or out.dtype.fields is not None:
        raise ManoFileError(f"{_describe_typestr(out.dtype.str)} is not a real number type")
    return out


def _list_array(value) -> np.ndarray:
    """A plain list/tuple of numbers (nested) as an array, walking it within a bound first."""
    seen, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_LIST_ITEMS or depth > MAX_NDIM:
            raise ManoFileError(f"a list of more than {MAX_LIST_ITEMS} items or {MAX_NDIM} levels")
        if isinstance(item, (list, tuple)):
            stack.extend((x, depth + 1) for x in item)
        elif isinstance(item, bool) or (isinstance(item, (int, float)) and abs(item) < 2**63):
            continue
        else:
            raise ManoFileError(f"a list holding a {type(item).__name__}, expected numbers")
    try:
        out = np.asarray(value)
    except ValueError as err:  # ragged
        raise ManoFileError(f"a ragged list ({err})") from None
    return out


def _check_key(key: str, arr: np.ndarray) -> None:
    """Layout check of one key (the message names the key, not the file)."""
    if key not in _LAYOUT:
        return
    shape, kinds = _LAYOUT[key]
    if arr.dtype.kind not in kinds:
        raise ManoFileError(f"{key} has dtype {arr.dtype.str} (expected "
                            f"{'integers' if kinds == 'iu' else 'real numbers'})")
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        raise ManoFileError(f"{key} must have shape {tuple('N' if s is None else s for s in shape)}, got {arr.shape}")
    if key == "shapedirs" and not 1 <= arr.shape[2] <= MAX_SHAPE_DIMS:
        raise ManoFileError(f"{key} must have 1 to {MAX_SHAPE_DIMS} shape dimensions, got {arr.shape[2]}")
    if key == "hands_components" and not 1 <= arr.shape[0] <= MAX_PCA_COMPONENTS:
        raise ManoFileError(f"{key} must have 1 to {MAX_PCA_COMPONENTS} components, got {arr.shape[0]}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ManoFileError(f"{key} holds NaN or infinite values")
    if arr.dtype.kind == "f" and arr.size and np.abs(arr).max() > MAX_ABS_VALUE:
        raise ManoFileError(f"{key} holds values beyond +-{MAX_ABS_VALUE:g} (MANO lengths are metres)")


_stand_ins: dict[str, type] = {}


def _stand_in(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _stand_ins:
        _stand_ins[key] = type(f"ChumpyStandIn_{name}", (ChumpyStandIn,), {"chumpy_class": key})
    return _stand_ins[key]


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals a MANO file needs, to inert stand-ins.

    Allowed: numpy's ``ndarray``, ``dtype`` and array/scalar reconstruction helpers, replaced by
    checking stand-ins (a dtype must be a plain bool/int/uint/float type without fields, an
    array's declared shape and buffer length must agree and stay within
    :data:`MAX_ARRAY_ELEMENTS` / :data:`MAX_ARRAY_BYTES` and, all arrays together,
    :data:`MAX_TOTAL_BYTES`, all before numpy reads a byte); scipy's sparse ``csc``/``csr``/
    ``coo`` matrices, as stand-ins holding their state (rebuilt later from checked index
    arrays); ``copyreg._reconstructor`` with ``object`` as base; ``_codecs.encode`` with the
    latin-1 codec (how Python 3 writes bytes into protocol-2 pickles); the builtin ``set``/
    ``frozenset`` (chumpy's pickled state holds a set of dirty names); ``chumpy.*`` classes,
    mapped to inert :class:`ChumpyStandIn` subclasses. Anything else (``os.system``,
    ``builtins.eval``, any function) raises :class:`UnsafePickleError` before it is called.

    What :meth:`load` returns may hold these stand-ins; :func:`read_mano_arrays` turns them
    into arrays (or a :class:`ManoFileError` naming the key).
    """

    _NUMPY = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"}
    _NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                      "numpy._core.numeric"}
    _SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix"}
    _SPARSE_MODULES = re.compile(r"^scipy\.sparse(\._?(csc|csr|coo|compressed|arrays))?$")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._budget = [0]  # bytes of array data decoded so far

    # -- the stand-ins' constructors -------------------------------------------------------
    def _reconstruct(self, subtype=None, shape=None, typecode=None, *rest):
        if subtype is not _NdarrayMarker:
            return _Refused(f"an array of a pickled subclass {getattr(subtype, '__name__', type(subtype).__name__)}")
        return _PendingArray(self._budget)

    def _frombuffer(self, buf=None, dtype=None, shape=None, order="C", *rest):
        pending = _PendingArray(self._budget)
        if not isinstance(dtype, _DtypeSpec) or dtype.problem is not None:
            pending.problem = getattr(dtype, "problem", None) or "an array without a dtype"
        else:
            pending.array, pending.problem = _array_from_bytes(buf, dtype.dtype, shape, order == "F", self._budget)
        return pending

    def _scalar(self, dtype=None, data=None, *rest):
        if not isinstance(dtype, _DtypeSpec) or dtype.problem is not None:
            return _Refused(getattr(dtype, "problem", None) or "a scalar without a dtype")
        pending = _PendingArray(self._budget)
        pending.array, pending.problem = _array_from_bytes(data, dtype.dtype, (), False, self._budget)
        return pending.array[()] if pending.problem is None else _Refused(pending.problem)

    @staticmethod
    def _reconstructor(cls=None, base=None, state=None, *rest):
        if base is not object or not (isinstance(cls, type) and issubclass(cls, (ChumpyStandIn, _SparseStandIn))):
            raise UnsafePickleError("refusing copyreg._reconstructor for anything but a chumpy or sparse object")
        return object.__new__(cls)

    @staticmethod
    def _encode(obj=None, encoding="utf-8", errors="strict", *rest):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
            raise UnsafePickleError("refusing _codecs.encode other than text with the latin-1 codec")
        try:
            return obj.encode("latin1")
        except UnicodeEncodeError:
            raise ManoFileError("_codecs.encode of text that is not latin-1") from None

    def find_class(self, module: str, name: str):
        if module in self._NUMPY_MODULES and name in self._NUMPY:
            return {"_reconstruct": self._reconstruct, "scalar": self._scalar, "_frombuffer": self._frombuffer,
                    "ndarray": _NdarrayMarker, "dtype": _DtypeSpec}[name]
        if self._SPARSE_MODULES.match(module) and name in self._SPARSE:
            return _sparse_stand_in(name)
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return self._reconstructor
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles written by Python 3
            return self._encode
        if module in ("builtins", "__builtin__") and name in ("object", "set", "frozenset"):
            return {"object": object, "set": set, "frozenset": frozenset}[name]  # chumpy keeps sets
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in(module, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: a MANO file holds only numpy arrays, scipy sparse "
            "matrices and chumpy objects, and this global could run code"
        )


def _to_plain(value, key: str, path):
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin1")
    try:
        return _plain_array(value)
    except ManoFileError as err:
        raise ManoFileError(f"mano_path {path}: key {key!r}: {err}") from None
    except (ValueError, TypeError, IndexError, OverflowError, MemoryError, RecursionError) as err:
        raise ManoFileError(f"mano_path {path}: key {key!r}: not an array of numbers "
                            f"({type(err).__name__}: {str(err)[:200]})") from None


def _read_npz(path: Path) -> dict:
    """Members of an ``.npz`` as arrays: zip headers and ``.npy`` headers checked before any
    member is decompressed (stored or deflated only; sizes within the bounds; a real number
    dtype; the data exactly ``prod(shape) * itemsize`` bytes); no pickles."""
    import zipfile

    def bad(key, problem):
        return ManoFileError(f"mano_path {path}: key {key!r}: {problem}")

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, NotImplementedError) as err:
        raise ManoFileError(f"mano_path {path}: not a readable .npz of arrays ({type(err).__name__}: {err})") from None
    out, total = {}, 0
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise ManoFileError(f"mano_path {path}: {len(infos)} members, more than the bound of {MAX_NPZ_MEMBERS}")
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if not info.filename.endswith(".npy"):
                raise bad(key, "not an .npy member")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                raise bad(key, f"compression method {info.compress_type} or encryption (only stored and deflated "
                               "members are read)")
            if info.file_size > MAX_ARRAY_BYTES + 2**16:
                raise bad(key, f"declares {info.file_size} bytes uncompressed, more than the bound of "
                               f"{_mib(MAX_ARRAY_BYTES)} per array (not decompressed)")
            total += info.file_size
            if total > MAX_TOTAL_BYTES:
                raise bad(key, f"members declare more than {_mib(MAX_TOTAL_BYTES)} uncompressed in all "
                               "(not decompressed)")
            try:
                with zf.open(info) as fh:
                    raw = fh.read(info.file_size + 1)  # decompression stops there, whatever the header says
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as err:
                raise bad(key, f"unreadable member ({type(err).__name__}: {err})") from None
            if len(raw) != info.file_size:
                raise bad(key, f"{len(raw)}{'+' if len(raw) > info.file_size else ''} bytes uncompressed, "
                               f"the zip header says {info.file_size}")
            fp = io.BytesIO(raw)
            try:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except (ValueError, TypeError, SyntaxError, KeyError, OverflowError, EOFError) as err:
                raise bad(key, f"not a readable .npy header ({type(err).__name__}: {str(err)[:200]})") from None
            if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
                raise bad(key, f"{_describe_typestr(dtype.str)} is not a real number type (object, structured, "
                               "complex, string and datetime dtypes are refused)")
            array, problem = _array_from_bytes(raw[fp.tell():], dtype, shape, bool(fortran), [total - info.file_size])
            if problem:
                raise bad(key, problem)
            out[key] = array
    return out


def read_mano_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a MANO ``.pkl`` (restricted unpickling) or ``.npz`` (no pickles) file.

    Nothing in the file runs, and nothing is allocated before its size is checked: the file
    is at most :data:`MAX_FILE_BYTES`, each array at most :data:`MAX_ARRAY_ELEMENTS` elements
    and :data:`MAX_ARRAY_BYTES`, all arrays at most :data:`MAX_TOTAL_BYTES`; only bool,
    integer and float dtypes; sparse matrices are rebuilt from bounds-checked index arrays.

    Returns:
        key -> numpy array (sparse matrices densified, chumpy objects turned into arrays,
        strings such as ``bs_style`` kept as ``str``).

    Raises:
        ManoFileError: missing, oversized or unreadable file, not a dict of arrays, a key
            whose value breaks the rules above (the one-line message names file and key).
        UnsafePickleError: the pickle refers to a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise ManoFileError(f"mano_path {path}: no such file (MANO files are downloaded by the user from "
                            "https://mano.is.tue.mpg.de and passed with --mano-path)")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ManoFileError(f"mano_path {path}: unreadable ({err})") from None
    if size > MAX_FILE_BYTES:
        raise ManoFileError(f"mano_path {path}: {size} bytes, more than the bound of {_mib(MAX_FILE_BYTES)} "
                            "for a MANO file")
    if path.suffix == ".npz":
        return _read_npz(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManoFileError(f"mano_path {path}: unreadable ({err})") from None
    try:
        raw = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"mano_path {path}: {err}") from None
    except ManoFileError as err:
        raise ManoFileError(f"mano_path {path}: {err}") from None
    except Exception as err:  # truncated or foreign files fail in many ways
        raise ManoFileError(f"mano_path {path}: not a readable MANO pickle ({type(err).__name__}: "
                            f"{str(err)[:200]})") from None
    if not isinstance(raw, dict):
        raise ManoFileError(f"mano_path {path}: holds a {type(raw).__name__}, expected a dict of arrays")
    return {str(k)[:100]: _to_plain(v, str(k)[:100], path) for k, v in raw.items()}


class ManoFrame(NamedTuple):
    """How a MANO file's frame maps into the canonical hand frame: ``x_c = R (1000 x - origin)``.

    Attributes:
        rotation: (3, 3) proper rotation; origin: (3,) mm, in MANO's axes.
    """

    rotation: torch.Tensor
    origin: torch.Tensor


def _check_shapes(arrays: dict, path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ManoFileError(f"mano_path {path}: lacks the keys {missing} (a MANO file has {list(REQUIRED_KEYS)})")
    for key in _LAYOUT:
        if key not in arrays:
            continue
        if not isinstance(arrays[key], np.ndarray):
            raise ManoFileError(f"mano_path {path}: key {key!r}: text, expected an array of numbers")
        try:
            _check_key(key, arrays[key])
        except ManoFileError as err:
            raise ManoFileError(f"mano_path {path}: {err}") from None
    f = arrays["f"]
    if f.min() < 0 or f.max() >= NUM_VERTICES:
        raise ManoFileError(f"mano_path {path}: f indexes vertices outside [0, {NUM_VERTICES})")


def _side_from_name(path: Path) -> str | None:
    stem = path.stem.upper()
    if "LEFT" in stem:
        return "left"
    if "RIGHT" in stem:
        return "right"
    return None


def load_mano(path: str | Path, side: str | None = None, fix_left_shapedirs: bool = True,
              return_frame: bool = False):
    """Read a user-supplied MANO file into :class:`HandModelData` (mm, canonical hand frame).

    Args:
        path: ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` or an ``.npz`` with the same keys.
        side: ``"right"`` or ``"left"``; ``None`` reads it from the file name (``LEFT``/
            ``RIGHT``), else right. The geometry is checked against it.
        fix_left_shapedirs: for a left hand, apply ``shapedirs[:, 0, :] *= -1`` (the known
            error of the released MANO_LEFT file); turn off for files already fixed.
        return_frame: also return the :class:`ManoFrame` (to compare with MANO's own frame).

    Returns:
        HandModelData (with pose correctives and, if the file has them, the PCA pose space),
        or ``(data, frame)``.

    Raises:
        ManoFileError (ValueError): missing file or key, wrong shape, unreadable content.
        UnsafePickleError (ManoFileError): the pickle would run code.
        SideError (ValueError): the file is the other side (a left file given as right).
    """
    path = Path(path)
    if side is None:
        side = _side_from_name(path) or "right"
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right', 'left' or None, got {side!r}")
    arrays = read_mano_arrays(path)
    _check_shapes(arrays, path)
    try:
        return _build_mano(arrays, path, side, fix_left_shapedirs, return_frame)
    except (ManoFileError, SideError):
        raise
    except (ValueError, ArithmeticError, IndexError, RuntimeError, np.linalg.LinAlgError) as err:
        # degenerate geometry of a hostile or broken file (e.g. coincident joints)
        raise ManoFileError(f"mano_path {path}: J_regressor / v_template give no usable hand "
                            f"({type(err).__name__}: {str(err)[:200]})") from None


def _build_mano(arrays, path, side, fix_left_shapedirs, return_frame):
    f64 = lambda k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float64))  # noqa: E731
    v = f64("v_template") * 1000.0
    shapedirs = f64("shapedirs").clone() * 1000.0  # (V, 3, S)
    if side == "left" and fix_left_shapedirs:
        shapedirs[:, 0, :] *= -1.0
    posedirs = f64("posedirs") * 1000.0  # (V, 3, 135)
    J_reg = f64("J_regressor")
    weights = f64("weights")
    parents = np.asarray(arrays["kintree_table"][0]).astype(np.int64)
    parents[0] = -1
    if (parents[1:] < 0).any() or any(p >= i for i, p in enumerate(parents[1:], 1)):
        raise ManoFileError(f"mano_path {path}: kintree_table must list parents before children, root first; "
                            f"got parents {parents.tolist()}")
    if (weights < 0).any() or not np.allclose(weights.sum(1).numpy(), 1.0, atol=1e-3):
        raise ManoFileError(f"mano_path {path}: weights must be non-negative rows summing to 1")

    joints = J_reg @ v
    C = canonical_transform(joints[0], joints[1], joints[4], joints[7], side)
    origin = v.mean(0)
    to_c = lambda x: (x - origin) @ C.T  # noqa: E731
    verts_c, joints_c = to_c(v), to_c(joints)
    shape_basis = shapedirs.permute(2, 0, 1) @ C.T  # (S, V, 3)
    joint_basis = torch.einsum("jv,svc->sjc", J_reg, shape_basis)
    # posedirs: displacement d = P f with f = (R - I) flattened in MANO axes; in canonical axes
    # f = C^T F C and d_c = C d, so P_c[k, c, e] = C[c, a] C[e, b] P[k, a, b] rotated by C.
    P = posedirs.reshape(NUM_VERTICES, 3, NUM_JOINTS - 1, 3, 3)
    P_c = torch.einsum("ca,eb,xy,vykab->kcevx", C, C, C, P).reshape(9 * (NUM_JOINTS - 1), NUM_VERTICES, 3)

    tips = {d: verts_c[i] for d, i in MANO_TIP_VERTICES.items()}
    thumb = torch.stack([joints_c[15], tips["thumb"]])
    mcps = joints_c[[1, 4, 10, 7]]
    check_side(thumb, mcps, side, f"mano_path {path}")

    eye = torch.eye(3, dtype=torch.float64).expand(NUM_JOINTS, 3, 3).clone()
    dof_joint, dof_axis, dof_names, lower, upper = articulation_table(MANO_CHAINS, joints_c, eye, tips, side)
    group = torch.full((NUM_JOINTS,), -1, dtype=torch.long)
    for k, d in enumerate(DIGITS, 1):
        a, b, c = MANO_CHAINS[d]
        group[a], group[b], group[c] = 0, k, k
    kp_joint, kp_vertex = [0], [-1]
    for d in DIGITS:
        kp_joint += list(MANO_CHAINS[d]) + [-1]
        kp_vertex += [-1, -1, -1, MANO_TIP_VERTICES[d]]
    assert len(kp_joint) == len(KEYPOINT_NAMES)

    pose_components = pose_mean = None
    if "hands_components" in arrays:
        comps = f64("hands_components")
        pose_components = (comps.reshape(comps.shape[0], -1, 3) @ C.T).reshape(comps.shape[0], -1).float()
        mean = f64("hands_mean") if "hands_mean" in arrays else torch.zeros(3 * (NUM_JOINTS - 1), dtype=torch.float64)
        pose_mean = (mean.reshape(-1, 3) @ C.T).reshape(-1).float()

    faces = torch.from_numpy(np.asarray(arrays["f"]).astype(np.int64))
    names = ["wrist"] + [""] * (NUM_JOINTS - 1)
    parts = {"thumb": ("cmc", "mcp", "ip")}
    for d, chain in MANO_CHAINS.items():
        for j, part in zip(chain, parts.get(d, ("mcp", "pip", "dip"))):
            names[j] = f"{d}_{part}"
    data = HandModelData(
        vertices=verts_c.float(),
        faces=faces,
        uv_coords=torch.zeros(0, 2),
        face_uvs=torch.zeros(faces.shape[0], 3, dtype=torch.long),
        shape_basis=shape_basis.float(),
        joint_shape_basis=joint_basis.float(),
        shape_names=[f"beta{i}" for i in range(shape_basis.shape[0])],
        joint_names=names,
        parents=torch.from_numpy(parents),
        rest_joints=joints_c.float(),
        rest_orientations=eye.float(),
        dof_joint=dof_joint,
        dof_axis=dof_axis,
        dof_names=dof_names,
        dof_lower=lower,
        dof_upper=upper,
        skin_indices=torch.arange(NUM_JOINTS).expand(NUM_VERTICES, NUM_JOINTS).clone(),
        skin_weights=weights.float(),
        bone_scale_group=group,
        keypoint_joint=torch.tensor(kp_joint, dtype=torch.long),
        keypoint_vertex=torch.tensor(kp_vertex, dtype=torch.long),
        side=side,
        source=f"MANO {path.name}" + (" (left shapedirs sign fix)" if side == "left" and fix_left_shapedirs else ""),
        pose_basis=P_c.float(),
        pose_components=pose_components,
        pose_mean=pose_mean,
    )
    if return_frame:
        return data, ManoFrame(C.float(), origin.float())
    return data


def mano_pose(pose: torch.Tensor, frame: ManoFrame) -> torch.Tensor:
    """A MANO axis-angle pose as :class:`HandModel`'s ``pose`` argument.

    Args:
        pose: (B, 48) or (B, 16, 3) MANO axis-angle (global rotation of the wrist first, then
            the 15 finger joints in MANO's joint order), radians, MANO's axes.
        frame: the :class:`ManoFrame` from ``load_mano(..., return_frame=True)``.

    Returns:
        (B, 16, 3) axis-angle in the canonical axes (an axis-angle vector turns with the frame).
        ``HandModel(data)(pose=...)`` then equals MANO's LBS of the same pose (the root turns
        about the wrist joint, as in MANO) mapped by ``x_c = R (1000 x - origin)``.

    Raises:
        ValueError: ``pose`` has another shape.
    """
    if pose.ndim == 2 and pose.shape[1] == 3 * NUM_JOINTS:
        pose = pose.reshape(-1, NUM_JOINTS, 3)
    if pose.ndim != 3 or tuple(pose.shape[1:]) != (NUM_JOINTS, 3):
        raise ValueError(f"pose must have shape (B, 48) or (B, 16, 3), got {tuple(pose.shape)}")
    return pose @ frame.rotation.to(pose.dtype).T


def mano_pca_pose(data: HandModelData, coeffs: torch.Tensor, flat_hand_mean: bool = False,
                  global_orient: torch.Tensor | None = None) -> torch.Tensor:
    """MANO's PCA pose space as :class:`HandModel`'s ``pose`` argument (canonical axes).

    The 15 finger joints' axis-angle rotations are ``hands_mean + coeffs @ hands_components[:ncomps]``
    with ``ncomps = coeffs.shape[1]``; with ``flat_hand_mean=True`` the mean is dropped, so zero
    coefficients give the flat template hand, and with ``False`` (MANO's default) zero
    coefficients give MANO's mean, relaxed pose.

    Args:
        data: a MANO :class:`HandModelData` (with ``pose_components``).
        coeffs: (B, ncomps) PCA coefficients, 1 <= ncomps <= number of components.
        flat_hand_mean: see above.
        global_orient: optional (B, 3) root (wrist) axis-angle in the canonical axes, radians.

    Returns:
        (B, J, 3) axis-angle, radians.

    Raises:
        ValueError: the model has no PCA pose space, or ``coeffs`` has a bad shape.
    """
    if data.pose_components is None:
        raise ValueError("data has no PCA pose space (pose_components); load a MANO file with hands_components")
    C = data.pose_components.shape[0]
    if coeffs.ndim != 2 or not 1 <= coeffs.shape[1] <= C:
        raise ValueError(f"coeffs must have shape (B, ncomps) with 1 <= ncomps <= {C}, got {tuple(coeffs.shape)}")
    comps = data.pose_components[: coeffs.shape[1]].to(coeffs.dtype)
    fingers = coeffs @ comps
    if not flat_hand_mean:
        fingers = fingers + data.pose_mean.to(coeffs.dtype)
    B = coeffs.shape[0]
    root = torch.zeros(B, 3, dtype=coeffs.dtype) if global_orient is None else global_orient
    if tuple(root.shape) != (B, 3):
        raise ValueError(f"global_orient must have shape ({B}, 3), got {tuple(root.shape)}")
    return torch.cat([root[:, None], fingers.reshape(B, -1, 3)], dim=1)
