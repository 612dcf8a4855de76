"""A fork-per-case fuzzer of the model loaders (MANO ``.pkl`` / ``.npz``, glTF ``.gltf`` + ``.bin``,
``.glb``), shared by ``tests/test_hostile_models.py`` and ``bench/fuzz_loaders.py``.

From a valid seed file of each format it makes mutants with a fixed seed: byte-level (bit
flips, truncation, insertion, overwriting, duplication of a chunk), pickle-opcode-level
(integer and string arguments replaced, data payloads resized, opcodes deleted or duplicated,
globals swapped) and structure-level (the decoded dict of arrays or the glTF JSON: values,
types, dtypes, shapes and indices replaced, keys deleted; then re-encoded). Each mutant is
loaded in a child made by ``os.fork()`` (the parent has imported handfit already, so a case
costs milliseconds), with an address-space cap (``RLIMIT_AS``, so an unbounded allocation
shows as a MemoryError) and a timeout, so a segmentation fault is an outcome, not the end.

Outcomes: ``clean`` (loaded), ``error`` (a ``ValueError`` with a non-empty one-line message)
and ``bad`` (anything else: another exception type, a multi-line message, a crash by signal,
a timeout, a child that died without a word).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import pickle
import pickletools
import resource
import select
import signal
import struct
import sys
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

LOADERS = ("mano_pkl", "mano_npz", "gltf", "glb")
MEMORY_CAP = 3 * 2**30  #: address space a child may add to the parent's
TIMEOUT_S = 10.0


# -- seeds ---------------------------------------------------------------------------------

@contextlib.contextmanager
def chumpy_names():
    """Make test_mano's ``Ch``/``Select`` picklable as ``chumpy.ch.Ch`` / ``chumpy.reordering.Select``."""
    import test_mano

    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch", "chumpy.reordering")}
    old_modules = (test_mano.Ch.__module__, test_mano.Select.__module__)
    ch, reordering = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy.reordering")
    ch.Ch, reordering.Select = test_mano.Ch, test_mano.Select
    test_mano.Ch.__module__, test_mano.Select.__module__ = "chumpy.ch", "chumpy.reordering"
    sys.modules.update({"chumpy": types.ModuleType("chumpy"), "chumpy.ch": ch, "chumpy.reordering": reordering})
    try:
        yield test_mano
    finally:
        test_mano.Ch.__module__, test_mano.Select.__module__ = old_modules
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def mano_objects():
    """The valid synthetic MANO arrays (test_mano.random_mano), as a plain dict."""
    import test_mano

    return test_mano.random_mano()


def mano_pickle_bytes(obj: dict, protocol: int = 2) -> bytes:
    """Pickle like the released files (chumpy Ch/Select, scipy csc J_regressor)."""
    import scipy.sparse

    with chumpy_names() as tm:
        out = dict(obj)
        if isinstance(out.get("shapedirs"), np.ndarray):
            out["shapedirs"] = tm.Ch(out["shapedirs"])
        hm = out.get("hands_mean")
        if isinstance(hm, np.ndarray) and hm.ndim == 1:
            out["hands_mean"] = tm.Select(tm.Ch(np.concatenate([[9.0], hm])), np.arange(1, hm.size + 1), hm.shape)
        jr = out.get("J_regressor")
        if isinstance(jr, np.ndarray) and jr.ndim == 2 and jr.dtype.kind in "biuf":
            out["J_regressor"] = scipy.sparse.csc_matrix(jr)
        return pickle.dumps(out, protocol=protocol)


def npz_bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in obj.items() if not isinstance(v, str)})
    return buf.getvalue()


def gltf_seed(models_dir: Path) -> tuple[dict, bytes]:
    """The Godot low-poly hand as a ``.gltf`` JSON with its buffer moved to an external ``.bin``."""
    import base64

    doc = json.loads((models_dir / "godot_xr_hand" / "Hand_low_R.gltf").read_text())
    uri = doc["buffers"][0]["uri"]
    data = base64.b64decode(uri.split(",", 1)[1])
    doc["buffers"][0]["uri"] = "hand.bin"
    return doc, data


def glb_split(blob: bytes) -> tuple[dict, bytes]:
    length = struct.unpack_from("<I", blob, 12)[0]
    doc = json.loads(blob[20:20 + length])
    bin_len = struct.unpack_from("<I", blob, 20 + length)[0]
    return doc, blob[28 + length:28 + length + bin_len]


def glb_join(doc: dict, binary: bytes, lengths: tuple | None = None) -> bytes:
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    binary = binary + b"\0" * (-len(binary) % 4)
    jl, bl = lengths or (len(text), len(binary))
    body = struct.pack("<I4s", jl, b"JSON") + text + struct.pack("<I4s", bl, b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


# -- mutations -----------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 3, 15, 16, 17, 45, 777, 778, 779, 1538, 255, 256, 65535, 2**31 - 1, -2**31,
                    2**32 - 1, 10**6, 10**9, 2**62]
INTERESTING_STRINGS = ["f8", "<f8", ">f8", "O8", "O", "V8", "c16", "U5", "S4", "M8", "b1", "u4", "i8", "f2", "|",
                       "<", ">", "=", "latin1", "zlib", "", "x" * 300]


def byte_mutation(data: bytes, rng) -> tuple[bytes, str]:
    data = bytearray(data)
    kind = rng.integers(5)
    if not data:
        return bytes(rng.integers(0, 256, 8, dtype=np.uint8)), "random bytes"
    if kind == 0:
        n = int(rng.integers(1, 9))
        for _ in range(n):
            i = int(rng.integers(len(data)))
            data[i] ^= 1 << int(rng.integers(8))
        return bytes(data), f"{n} bit flips"
    if kind == 1:
        cut = int(rng.integers(len(data)))
        return bytes(data[:cut]), f"truncated to {cut}"
    if kind == 2:
        i, n = int(rng.integers(len(data) + 1)), int(rng.integers(1, 64))
        return bytes(data[:i]) + bytes(rng.integers(0, 256, n, dtype=np.uint8)) + bytes(data[i:]), f"{n} bytes inserted"
    if kind == 3:
        i, n = int(rng.integers(len(data))), int(rng.integers(1, 16))
        data[i:i + n] = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        return bytes(data), f"{n} bytes overwritten"
    i, n = int(rng.integers(len(data))), int(rng.integers(1, 256))
    return bytes(data[:i + n]) + bytes(data[i:]), f"{n} bytes duplicated"


def _encode_op(name: str, arg) -> bytes:
    if name in ("BININT1", "BININT2", "BININT", "LONG1"):
        if 0 <= arg < 256:
            return b"K" + bytes([arg])
        if -2**31 <= arg < 2**31:
            return b"J" + struct.pack("<i", arg)
        raw = arg.to_bytes((arg.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
        raw = arg.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(raw)) + raw
    if name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
        return b"B" + struct.pack("<I", len(arg)) + arg
    if name in ("SHORT_BINSTRING", "BINSTRING"):
        raw = arg.encode("latin1") if isinstance(arg, str) else arg
        return b"T" + struct.pack("<i", len(raw)) + raw
    if name == "GLOBAL":
        module, attr = arg.split(" ", 1)
        return b"c" + module.encode() + b"\n" + attr.encode() + b"\n"
    raise KeyError(name)


GLOBALS = ["numpy._core.multiarray _reconstruct", "numpy ndarray", "numpy dtype", "numpy._core.multiarray scalar",
           "_codecs encode", "copyreg _reconstructor", "builtins object", "builtins set", "scipy.sparse._csc csc_matrix",
           "scipy.sparse._csr csr_matrix", "scipy.sparse._coo coo_matrix", "chumpy.ch Ch", "os system",
           "builtins eval", "numpy._core.multiarray _frombuffer"]


def pickle_op_mutation(data: bytes, rng) -> tuple[bytes, str]:
    """Edit one opcode of a pickle: its argument replaced, its payload resized, deleted,
    duplicated, or a global swapped; the other opcodes are kept byte for byte."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return byte_mutation(data, rng)
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    k = int(rng.integers(len(ops)))
    op, arg, pos = ops[k]
    end = ends[k]
    name = op.name
    kind = int(rng.integers(4))
    new, what = None, None
    if kind == 0 and name in ("BININT1", "BININT2", "BININT", "LONG1"):
        value = int(rng.choice(INTERESTING_INTS)) if rng.random() < 0.7 else int(rng.integers(-1000, 1000))
        new, what = _encode_op(name, value), f"int {arg} -> {value}"
    elif kind == 0 and name in ("BINUNICODE", "SHORT_BINUNICODE") and len(arg) < 64:
        value = str(rng.choice(INTERESTING_STRINGS))
        new, what = _encode_op(name, value), f"str {arg[:10]!r} -> {value[:10]!r}"
    elif kind in (0, 1) and name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES",
                                      "BINSTRING", "SHORT_BINSTRING") and len(arg) >= 4:
        n = len(arg)
        m = int(rng.choice([0, 1, n - 1, n + 1, n // 2, 2 * n, n + 8, n - 8]))
        m = max(m, 0)
        value = (arg * 3)[:m] if m > n else arg[:m]
        new, what = _encode_op(name, value), f"payload {n} -> {m} bytes"
    elif kind == 1 and name == "GLOBAL":
        value = str(rng.choice(GLOBALS))
        new, what = _encode_op(name, value), f"global {arg} -> {value}"
    elif kind == 2 and k > 0:
        new, what = b"", f"deleted {name}"
    elif kind == 3 and k > 0:
        new, what = data[pos:end] * 2, f"duplicated {name}"
    if new is None:
        return byte_mutation(data, rng)
    return data[:pos] + new + data[end:], what


HOSTILE_DTYPES = [np.int8, np.uint32, np.float16, np.float32, np.complex128, object, np.bool_, "<U3", ">f8",
                  [("a", "<f8")], [("a", "O")], "datetime64[s]"]


def array_mutation(obj: dict, rng, sparse_ok: bool) -> str:
    """Replace one key's value in a MANO dict: dtype, shape, values, type; or delete it."""
    import scipy.sparse

    keys = sorted(obj)
    key = str(rng.choice(keys))
    value = obj[key]
    kind = int(rng.integers(9))
    if kind == 0:
        del obj[key]
        return f"{key} deleted"
    if not isinstance(value, np.ndarray):
        obj[key] = np.arange(3.0)
        return f"{key} -> array"
    if kind == 1:
        dt = HOSTILE_DTYPES[int(rng.integers(len(HOSTILE_DTYPES)))]
        try:
            if isinstance(dt, list):
                out = np.zeros(value.shape, dtype=dt)
            else:
                out = value.astype(dt)
        except (TypeError, ValueError):
            out = value.astype(np.float32)
        obj[key] = out
        return f"{key} dtype -> {out.dtype}"
    if kind == 2:
        flat = value.ravel()
        shape = [int(rng.integers(0, 5)) if rng.random() < 0.3 else int(rng.choice([1, 3, 16, 45, 778, 1538]))
                 for _ in range(int(rng.integers(0, 4)))]
        while int(np.prod(shape)) > 2**21:  # keep the parent small: huge shapes are made by opcode edits
            shape[int(np.argmax(shape))] //= 8
        n = int(np.prod(shape)) if shape else 1
        obj[key] = np.resize(flat, n).reshape(shape) if flat.size else np.zeros(shape)
        return f"{key} shape -> {shape}"
    if kind == 3:
        out = value.copy()
        if out.size:
            idx = tuple(int(rng.integers(n)) for n in out.shape)
            out[idx] = rng.choice([np.nan, np.inf, -1, 1e30, 10**6, -2**31, 0]) if out.dtype.kind == "f" else \
                rng.choice([-1, 0, 777, 778, 779, 10**6]) if out.dtype.kind in "iu" and out.dtype.itemsize >= 4 else 0
        obj[key] = out
        return f"{key} one value replaced"
    if kind == 4:
        obj[key] = [None, "text", 3, 2.5, [1, 2], {"a": 1}, (1, "b"), b"bytes"][int(rng.integers(8))]
        return f"{key} -> {type(obj[key]).__name__}"
    if kind == 5:
        obj[key] = value.T.copy() if value.ndim >= 2 else value.reshape(-1)[::-1].copy()
        return f"{key} transposed"
    if kind == 6 and sparse_ok and value.ndim == 2 and value.dtype.kind in "biuf" and value.size:
        m = scipy.sparse.csc_matrix(value.astype(np.float64)) if rng.random() < 0.5 else \
            scipy.sparse.csr_matrix(value.astype(np.float64))
        if m.nnz:
            which = int(rng.integers(4))
            if which == 0:
                m.indices[int(rng.integers(m.nnz))] = int(rng.choice([-1, 10**6, m.shape[0], m.shape[1], 2**31 - 1]))
            elif which == 1:
                m.indptr[int(rng.integers(len(m.indptr)))] = int(rng.choice([-1, 10**6, 0, m.nnz + 1]))
            elif which == 2:
                m._shape = (int(rng.choice([10**6, 0, 1, 16])), int(rng.choice([10**6, 0, 1, 778])))
            else:
                m.data = m.data[: m.nnz // 2]
        obj[key] = m
        return f"{key} -> hostile sparse"
    if kind == 7:
        obj[key] = np.concatenate([value, value], axis=0) if value.ndim else np.stack([value, value])
        return f"{key} doubled"
    obj[key] = np.zeros(value.shape[::-1] if value.ndim else (2,), dtype=value.dtype)
    return f"{key} zeros, axes reversed"


JSON_VALUES = [0, 1, -1, 3, 4, 5123, 5126, 5125, 10**6, 2**31, 2**64, -2**63, 0.5, float("nan"), "x", "", None, True,
               [], {}, [0], "../../../x.bin", "/etc/passwd", "file:///etc/passwd", "http://localhost/x.bin",
               "https://example.com/x", "hand.bin/", ".", "data:application/octet-stream;base64,AAAA",
               "data:application/octet-stream;base64,!!!!", "SCALAR", "VEC3", "MAT4", "VEC7"]


def json_mutation(doc, rng) -> str:
    """Replace or delete one value at a random place of a glTF JSON document."""
    path, node = [], doc
    while True:
        if isinstance(node, dict) and node:
            k = str(rng.choice(sorted(node)))
        elif isinstance(node, list) and node:
            k = int(rng.integers(len(node)))
        else:
            break
        child = node[k]
        path.append(k)
        if not isinstance(child, (dict, list)) or rng.random() < 0.25:
            break
        node = child
    if not path:
        return "nothing"
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.15:
        del parent[last]
        return f"deleted {'/'.join(map(str, path))}"
    old = parent[last]
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        new = old + int(rng.choice([-1, 1, -4, 4, 1000, -1000]))
    else:
        new = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
    parent[last] = new
    return f"{'/'.join(map(str, path))} -> {str(new)[:30]}"


# -- cases ---------------------------------------------------------------------------------

class Seeds:
    """The valid inputs of every loader, made once."""

    def __init__(self, models_dir: Path):
        self.mano = mano_objects()
        self.pkl = mano_pickle_bytes(self.mano)
        self.npz = npz_bytes(self.mano)
        self.gltf_doc, self.gltf_bin = gltf_seed(models_dir)
        self.glb = (models_dir / "webxr_hand" / "right.glb").read_bytes()


def make_case(loader: str, seeds: Seeds, rng, folder: Path) -> tuple[Path, str]:
    """Write one mutant of ``loader``'s seed into ``folder``; returns (file to load, what was done)."""
    import copy

    steps = []
    n = int(rng.integers(1, 4))
    if loader in ("mano_pkl", "mano_npz"):
        name = "MANO_RIGHT.pkl" if loader == "mano_pkl" else "MANO_RIGHT.npz"
        structured = rng.random() < 0.5
        if structured:
            obj = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in seeds.mano.items()}
            try:
                for _ in range(n):
                    steps.append(array_mutation(obj, rng, sparse_ok=loader == "mano_pkl"))
                data = mano_pickle_bytes(obj, protocol=int(rng.choice([0, 2, 4]))) if loader == "mano_pkl" \
                    else npz_bytes(obj)
            except Exception as err:  # a mutant the writers cannot write: fall back to the seed
                steps.append(f"unwritable ({type(err).__name__}), seed used")
                data = seeds.pkl if loader == "mano_pkl" else seeds.npz
        else:
            data = seeds.pkl if loader == "mano_pkl" else seeds.npz
            for _ in range(n):
                if loader == "mano_pkl" and rng.random() < 0.6:
                    data, what = pickle_op_mutation(data, rng)
                else:
                    data, what = byte_mutation(data, rng)
                steps.append(what)
        path = folder / name
        path.write_bytes(data)
        return path, "; ".join(steps)
    if loader == "gltf":
        doc, binary = copy.deepcopy(seeds.gltf_doc), seeds.gltf_bin
        text = None
        for _ in range(n):
            r = rng.random()
            if r < 0.55:
                steps.append(json_mutation(doc, rng))
            elif r < 0.8:
                binary, what = byte_mutation(binary, rng)
                steps.append("bin: " + what)
            else:
                raw = (text or json.dumps(doc)).encode()
                raw, what = byte_mutation(raw, rng)
                text = raw.decode("latin1")
                steps.append("json text: " + what)
        path = folder / "hand_R.gltf"
        path.write_text(text if text is not None else json.dumps(doc), encoding="latin1" if text else "utf-8",
                        errors="replace")
        (folder / "hand.bin").write_bytes(binary)
        (folder / "sub").mkdir(exist_ok=True)  # a directory for a uri to name
        return path, "; ".join(steps)
    # glb
    doc, binary = glb_split(seeds.glb)
    blob = None
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            steps.append(json_mutation(doc, rng))
        elif r < 0.6:
            binary, what = byte_mutation(binary, rng)
            steps.append("bin chunk: " + what)
        elif r < 0.7:
            jl = len(json.dumps(doc).encode())
            lengths = (int(rng.choice([0, 1, jl - 1, jl + 5, 2**31])), int(rng.choice([0, len(binary) // 2,
                                                                                         len(binary) + 4, 2**32 - 1])))
            blob = glb_join(doc, binary, lengths)
            steps.append(f"chunk lengths -> {lengths}")
        else:
            blob, what = byte_mutation(blob or glb_join(doc, binary), rng)
            steps.append("bytes: " + what)
    path = folder / "right.glb"
    path.write_bytes(blob if blob is not None else glb_join(doc, binary))
    return path, "; ".join(steps)


def load_function(loader: str):
    if loader.startswith("mano"):
        from hands.mano import load_mano

        return load_mano
    from hands.gltf_hand import load_gltf_hand

    return load_gltf_hand


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_in_child(fn, path: Path, timeout: float = TIMEOUT_S, memory_cap: int = MEMORY_CAP) -> tuple[str, str]:
    """Call ``fn(path)`` in a forked child; returns (outcome, detail).

    outcome: ``clean``, ``error`` (a ValueError with a one-line message) or ``bad`` (any other
    exception or message, a signal, a timeout). The child's address space is capped at the
    parent's size plus ``memory_cap``."""
    limit = _vm_size() + memory_cap
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        gc.freeze()  # the parent's objects stay out of the child's collections (no copy-on-write storm)
        try:
            os.close(rfd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            import warnings

            warnings.simplefilter("ignore")  # the parent's (pytest's) warning capture costs time here
            try:
                import torch

                torch.set_num_threads(1)
                fn(path)
                result = ("clean", "")
            except ValueError as err:
                msg = str(err)
                ok = bool(msg) and "\n" not in msg
                result = ("error" if ok else "bad", f"{type(err).__name__}: {msg[:300]!r}")
            except BaseException as err:  # noqa: BLE001 - every other outcome is the finding
                result = ("bad", f"{type(err).__name__}: {str(err)[:300]!r}")
            os.write(wfd, json.dumps(result).encode()[:60000])
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(wfd)
    chunks, deadline, timed_out = [], time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(rfd)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return "bad", f"timeout after {timeout:.0f} s"
    if os.WIFSIGNALED(status):
        return "bad", f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    try:
        outcome, detail = json.loads(b"".join(chunks))
    except ValueError:
        return "bad", f"child exited with status {os.WEXITSTATUS(status)} and no result"
    return outcome, detail


def blank_message(detail: str) -> str:
    return detail[:140]


def fuzz(loader: str, cases: int, seeds: Seeds, workdir: Path, seed: int = 0, timeout: float = TIMEOUT_S,
         progress=None, record=None) -> dict:
    """Run ``cases`` mutants of ``loader``; returns {"clean": n, "error": n, "bad": [(case, what, detail)]}.

    ``record``: an optional ``collections.Counter`` that counts the refusal messages
    (through :func:`blank_message`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:  # the parent, which makes the mutants, is capped too (softly, restored below)
        if soft == resource.RLIM_INFINITY:
            cap = _vm_size() + 2 * MEMORY_CAP
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        return _fuzz(loader, cases, seeds, workdir, seed, timeout, progress, record)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _fuzz(loader, cases, seeds, workdir, seed, timeout, progress, record):
    fn = load_function(loader)
    rng = np.random.default_rng([seed, LOADERS.index(loader)])
    counts = {"clean": 0, "error": 0, "bad": []}
    for i in range(cases):
        folder = workdir / f"{loader}_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        path, what = make_case(loader, seeds, rng, folder)
        outcome, detail = run_in_child(fn, path, timeout)
        if outcome == "bad":
            counts["bad"].append((i, what, detail))
        else:
            counts[outcome] += 1
            if outcome == "error" and record is not None:
                record[blank_message(detail)] += 1
        for f in sorted(folder.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        folder.rmdir()
        if progress:
            progress(loader, i, outcome)
    return counts
