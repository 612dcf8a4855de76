"""Untrusted model files (issue 15): each reported hostile MANO / glTF input, built by hand,
gives a one-line error that names the problem; and a fork-per-case fuzzer of the four
formats finds no outcome other than a clean load or a one-line ValueError (no crash, no
traceback of another type, no timeout, no unbounded allocation)."""

import base64
import io
import json
import os
import pickle
import struct
import time
import zipfile

import numpy as np
import pytest
import scipy.sparse

import hostile_fuzz as hf
from conftest import SHARED
from hands import gltf_hand
from hands.gltf_hand import GltfHandError, load_gltf_hand
from hands.mano import ManoFileError, load_mano

MODELS = SHARED / "models"


@pytest.fixture(scope="module")
def models_dir():
    if not (MODELS / "godot_xr_hand").is_dir() or not (MODELS / "webxr_hand").is_dir():
        pytest.skip(f"rigged hands not found under {MODELS}")
    return MODELS


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# -- MANO --------------------------------------------------------------------------------------

class RawArray:
    """Pickles as numpy's own array reconstruction with a state of our choosing (declared
    shape, dtype and buffer need not agree): what a hostile file can hold."""

    def __init__(self, shape, dtype, raw):
        self.state = (1, tuple(shape), np.dtype(dtype), False, raw)

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state)


def mano_file(tmp_path, **changes):
    obj = hf.mano_objects()
    obj.update(changes)
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(hf.mano_pickle_bytes(obj))
    return path


def sparse_file(tmp_path, edit):
    obj = hf.mano_objects()
    m = scipy.sparse.csc_matrix(obj["J_regressor"])
    edit(m)
    obj["J_regressor"] = m
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(hf.mano_pickle_bytes(obj))
    return path


def load_error(path, error=ManoFileError, loader=load_mano):
    with pytest.raises(error) as excinfo:
        loader(path)
    msg = one_line(excinfo)
    assert str(path) in msg
    print(f"\n{type(excinfo.value).__name__}: {msg}")
    return msg


def test_valid_pickle_and_npz_seeds_load(tmp_path):
    assert load_mano(mano_file(tmp_path)).num_vertices == 778
    path = tmp_path / "MANO_RIGHT.npz"
    path.write_bytes(hf.npz_bytes(hf.mano_objects()))
    assert load_mano(path).num_vertices == 778


def test_sparse_indices_past_the_shape(tmp_path):
    def edit(m):
        m.indices[0] = 5000

    msg = load_error(sparse_file(tmp_path, edit))
    assert "'J_regressor'" in msg and "indices outside [0, 16)" in msg


def test_sparse_negative_indices(tmp_path):
    def edit(m):
        m.indices[3] = -3

    msg = load_error(sparse_file(tmp_path, edit))
    assert "'J_regressor'" in msg and "indices outside [0, 16)" in msg and "-3" in msg


def test_sparse_indptr_past_the_indices(tmp_path):
    def edit(m):
        m.indptr[-1] = m.nnz + 100

    msg = load_error(sparse_file(tmp_path, edit))
    assert "'J_regressor'" in msg and "indptr must" in msg


def test_sparse_shape_of_a_million_squared(tmp_path):
    def edit(m):
        m._shape = (10**6, 10**6)

    t0 = time.perf_counter()
    msg = load_error(sparse_file(tmp_path, edit))
    assert "'J_regressor'" in msg and "declares shape (1000000, 1000000), more than the bound" in msg
    assert time.perf_counter() - t0 < 5


def test_array_whose_buffer_does_not_match_its_dtype_and_shape(tmp_path):
    short = mano_file(tmp_path, v_template=RawArray((778, 3), "<f8", b"\0" * 16))
    msg = load_error(short)
    assert "'v_template'" in msg and "needs 18672 bytes of data, its buffer has 16" in msg
    # float32 bytes declared as float64: half the bytes
    half = mano_file(tmp_path, weights=RawArray((778, 16), "<f8", np.ones((778, 16), np.float32).tobytes()))
    msg = load_error(half)
    assert "'weights'" in msg and "needs 99584 bytes" in msg


def test_npz_decompression_bomb_is_refused_from_its_zip_header(tmp_path):
    path = tmp_path / "MANO_RIGHT.npz"
    good = hf.mano_objects()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in good.items():
            if not isinstance(v, str):
                buf = io.BytesIO()
                np.save(buf, v)
                zf.writestr(k + ".npy", buf.getvalue())
        with zf.open("bomb.npy", "w", force_zip64=True) as fh:  # 128 MiB of zeros, 128 KiB on disk
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (2**24,)})
            block = bytes(2**24)
            for _ in range(8):
                fh.write(block)
    assert path.stat().st_size < 8 * 2**20
    t0 = time.perf_counter()
    msg = load_error(path)
    assert time.perf_counter() - t0 < 2  # nothing decompressed
    assert "'bomb'" in msg and "uncompressed, more than the bound" in msg and "not decompressed" in msg


def test_npz_member_whose_zip_header_lies_about_its_size(tmp_path):
    path = tmp_path / "MANO_RIGHT.npz"
    path.write_bytes(hf.npz_bytes(hf.mano_objects()))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("posedirs.npy")
    true_size = info.file_size
    # rewrite the uncompressed size in the local header and the central directory to 1000
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            if struct.unpack_from("<I", data, i + offset)[0] == true_size:
                struct.pack_into("<I", data, i + offset, 1000)
            start = i + 4
    path.write_bytes(bytes(data))
    msg = load_error(path)
    # zipfile stops decompressing at the declared size; the CRC then fails
    assert "'posedirs'" in msg and "Bad CRC-32" in msg


def test_strings_as_v_template(tmp_path):
    msg = load_error(mano_file(tmp_path, v_template=np.full((778, 3), "x")))
    assert "'v_template'" in msg and "string" in msg and "not a real number type" in msg
    npz = tmp_path / "MANO_RIGHT.npz"
    obj = hf.mano_objects()
    obj["v_template"] = np.full((778, 3), "x")
    npz.write_bytes(hf.npz_bytes(obj))
    msg = load_error(npz)
    assert "'v_template'" in msg and "string" in msg


def test_complex_faces_are_refused_not_cast(tmp_path):
    obj = hf.mano_objects()
    msg = load_error(mano_file(tmp_path, f=obj["f"].astype(np.complex128)))
    assert "'f'" in msg and "complex" in msg


def test_structured_dtype_hiding_an_object_field(tmp_path):
    raw = b"\x41" * (8 * 32)  # "pointers" 0x4141414141414141 if read as objects
    path = mano_file(tmp_path, kintree_table=RawArray((2, 16), [("a", "O")], raw))
    msg = load_error(path)
    assert "'kintree_table'" in msg and "structured" in msg
    # the same with the type string disguised as a plain float: the fields are in the state
    data = path.read_bytes()
    assert data.count(b"X\x02\x00\x00\x00V8") == 1
    path.write_bytes(data.replace(b"X\x02\x00\x00\x00V8", b"X\x02\x00\x00\x00f8"))
    msg = load_error(path)
    assert "'kintree_table'" in msg and "fields or a sub-array" in msg


def test_object_array_and_code_are_refused(tmp_path):
    msg = load_error(mano_file(tmp_path, weights=np.empty((778, 16), dtype=object)))
    assert "'weights'" in msg and "object" in msg


def test_millions_of_rows_of_hands_components(tmp_path):
    # 3M x 45 declared with an 8-byte buffer: refused from the declared shape, nothing allocated
    msg = load_error(mano_file(tmp_path, hands_components=RawArray((3_000_000, 45), "<f8", b"\0" * 8)))
    assert "'hands_components'" in msg and "(3000000, 45)" in msg and "more than the bound of 4194304 elements" in msg
    # within the array bound but not MANO's layout
    msg = load_error(mano_file(tmp_path, hands_components=np.zeros((46, 45))))
    assert "hands_components must have 1 to 45 components, got 46" in msg


def test_many_arrays_sharing_one_buffer_hit_the_total_bound(tmp_path):
    block = b"\0" * (30 * 2**20)  # one 30 MiB payload, referenced by many arrays (pickle memo)
    extra = {f"extra{i}": RawArray((30 * 2**17,), "<f8", block) for i in range(6)}
    path = tmp_path / "MANO_RIGHT.pkl"
    obj = hf.mano_objects()
    obj.update(extra)
    path.write_bytes(hf.mano_pickle_bytes(obj))
    assert path.stat().st_size < 40 * 2**20
    msg = load_error(path)
    assert "MiB in all" in msg


def test_oversized_file(tmp_path, monkeypatch):
    from hands import mano

    monkeypatch.setattr(mano, "MAX_FILE_BYTES", 2**20)
    msg = load_error(mano_file(tmp_path))
    assert "more than the bound of 1 MiB" in msg


# -- glTF --------------------------------------------------------------------------------------

@pytest.fixture
def gltf_folder(tmp_path, models_dir):
    """A folder with the Godot low-poly hand as hand_R.gltf + hand.bin, and a sub-directory."""
    doc, binary = hf.gltf_seed(models_dir)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "hand.bin").write_bytes(binary)
    (folder / "sub").mkdir()
    return folder, doc, binary


def write_gltf(folder, doc, uri=None, name="hand_R.gltf"):
    doc = json.loads(json.dumps(doc))
    if uri is not None:
        doc["buffers"][0]["uri"] = uri
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def test_external_bin_seed_loads_like_the_embedded_file(gltf_folder, models_dir):
    folder, doc, _ = gltf_folder
    a = load_gltf_hand(write_gltf(folder, doc))
    b = load_gltf_hand(models_dir / "godot_xr_hand" / "Hand_low_R.gltf")
    assert np.allclose(a.vertices.numpy(), b.vertices.numpy())
    os.symlink("hand.bin", folder / "link.bin")  # a symlink that stays inside the folder is fine
    assert load_gltf_hand(write_gltf(folder, doc, "link.bin")).num_vertices == b.num_vertices
    assert load_gltf_hand(write_gltf(folder, doc, "sub/../hand.bin")).num_vertices == b.num_vertices


@pytest.mark.parametrize("uri, expected", [
    ("../../../x.bin", "points outside the model's folder"),
    ("../outside.bin", "points outside the model's folder"),
    ("ABSOLUTE", "absolute uri"),
    ("FILE_URI", "uri scheme 'file': refused"),
    ("http://127.0.0.1:9/hand.bin", "uri scheme 'http': refused"),
    ("https://example.com/hand.bin", "uri scheme 'https': refused"),
    ("missing.bin", "no such file next to the model"),
    ("sub", "is not a regular file (a directory?)"),
    ("sub/", "is not a regular file (a directory?)"),
])
def test_buffer_uris_outside_the_folder_or_not_files(gltf_folder, uri, expected):
    folder, doc, binary = gltf_folder
    (folder.parent / "outside.bin").write_bytes(binary)  # readable, were the uri followed
    if uri == "ABSOLUTE":
        uri = str(folder.parent / "outside.bin")
    elif uri == "FILE_URI":
        uri = (folder.parent / "outside.bin").as_uri()
    msg = load_error(write_gltf(folder, doc, uri), GltfHandError, load_gltf_hand)
    assert "buffer 0" in msg and expected in msg


def test_symlink_pointing_outside_the_folder(gltf_folder):
    folder, doc, binary = gltf_folder
    (folder.parent / "secret.bin").write_bytes(binary)
    os.symlink(folder.parent / "secret.bin", folder / "hand_link.bin")
    msg = load_error(write_gltf(folder, doc, "hand_link.bin"), GltfHandError, load_gltf_hand)
    assert "points outside the model's folder" in msg and "after following symlinks" in msg


def test_image_uri_outside_the_folder(gltf_folder):
    folder, doc, _ = gltf_folder
    doc = dict(doc, images=[{"uri": "../../etc/passwd"}])
    msg = load_error(write_gltf(folder, doc), GltfHandError, load_gltf_hand)
    assert "image 0" in msg and "points outside the model's folder" in msg


def test_huge_data_uri_is_refused_before_decoding(gltf_folder, monkeypatch):
    folder, doc, binary = gltf_folder
    monkeypatch.setattr(gltf_hand, "MAX_BUFFER_BYTES", 2**20)
    calls = []
    real = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    uri = "data:application/octet-stream;base64," + base64.b64encode(binary * 40).decode()
    msg = load_error(write_gltf(folder, doc, uri), GltfHandError, load_gltf_hand)
    assert "data: uri" in msg and "more than the bound of 1 MiB per buffer" in msg and not calls


def test_truncated_buffer_and_accessors_outside_their_views(gltf_folder):
    folder, doc, binary = gltf_folder
    (folder / "short.bin").write_bytes(binary[: len(binary) // 2])
    msg = load_error(write_gltf(folder, doc, "short.bin"), GltfHandError, load_gltf_hand)
    assert "buffer 0 is truncated" in msg
    bad = json.loads(json.dumps(doc))
    bad["accessors"][0]["count"] += 1000
    msg = load_error(write_gltf(folder, bad), GltfHandError, load_gltf_hand)
    assert "accessor 0" in msg and "elements need bytes" in msg
    bad = json.loads(json.dumps(doc))
    bad["bufferViews"][0]["byteOffset"] = len(binary)
    msg = load_error(write_gltf(folder, bad), GltfHandError, load_gltf_hand)
    assert "lies outside buffer 0" in msg
    bad = json.loads(json.dumps(doc))
    bad["accessors"][0]["bufferView"] = 999
    msg = load_error(write_gltf(folder, bad), GltfHandError, load_gltf_hand)
    assert "bufferView index 999 outside" in msg


def test_oversized_glb_and_gltf(models_dir, gltf_folder, monkeypatch):
    monkeypatch.setattr(gltf_hand, "MAX_FILE_BYTES", 2**16)
    msg = load_error(models_dir / "webxr_hand" / "right.glb", GltfHandError, load_gltf_hand)
    assert "94004 bytes, more than the bound of 0.0625 MiB for a glTF/GLB file" in msg
    monkeypatch.setattr(gltf_hand, "MAX_FILE_BYTES", 2**26)
    monkeypatch.setattr(gltf_hand, "MAX_TOTAL_BYTES", 2**15)
    folder, doc, _ = gltf_folder
    msg = load_error(write_gltf(folder, doc), GltfHandError, load_gltf_hand)
    assert "the file and its buffers exceed 0.03125 MiB in all" in msg


# -- the fuzzer ----------------------------------------------------------------------------------

CASES = {"mano_pkl": 150, "mano_npz": 100, "gltf": 100, "glb": 100}


@pytest.mark.parametrize("loader", hf.LOADERS)
def test_fuzzed_files_load_or_fail_with_one_line(loader, models_dir, tmp_path):
    seeds = hf.Seeds(models_dir)
    counts = hf.fuzz(loader, CASES[loader], seeds, tmp_path, seed=0)
    print(f"{loader}: {CASES[loader]} cases: clean {counts['clean']}, one-line ValueError {counts['error']}, "
          f"other {len(counts['bad'])}")
    assert not counts["bad"], counts["bad"][:5]
    assert counts["error"] > 0
