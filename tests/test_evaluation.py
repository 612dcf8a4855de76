"""Keypoint metrics (MPJPE, PCK, AUC), joint maps, keypoint readers and ``handfit eval``.

Pure tensors and small temporary files: no hand model, no rendering.
"""

import json
import math

import numpy as np
import pytest
import torch

from fitting import evaluation
from fitting.cli import main
from fitting.errors import InputError
from fitting.evaluation import (DEFAULT_THRESHOLDS_MM, JOINT_MAPS, auc, evaluate, load_joint_map, map_joints, mpjpe,
                                parse_thresholds, pck_curve, read_keypoint_frames)
from hands import KEYPOINT_NAMES

SHIFT = torch.tensor([3.0, 4.0, 0.0])  # 5 mm


def hand(seed=0, n=None):
    """Keypoints in mm, (21, 3) or (n, 21, 3), at whole mm (so that a 5 mm shift is exactly 5 mm)."""
    g = torch.Generator().manual_seed(seed)
    shape = (21, 3) if n is None else (n, 21, 3)
    return torch.rand(shape, generator=g, dtype=torch.float64).mul(100).round() + torch.tensor([0.0, 0.0, 400.0],
                                                                                             dtype=torch.float64)


def write_fit(folder, keypoints, name=None):
    """A fit output folder as fitting.writers.write_result writes it (only params.json matters)."""
    folder.mkdir(parents=True)
    doc = {"name": name or folder.name, "units": "millimetres", "metrics": {"iou": 0.9, "depth_mean_mm": float("nan")},
           "keypoint_names": list(KEYPOINT_NAMES), "keypoints": torch.as_tensor(keypoints).tolist(), "params": {}}
    (folder / "params.json").write_text(json.dumps(doc))


def run(argv, capsys):
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


# --- metrics ----------------------------------------------------------------------------------


def test_mpjpe_of_a_known_offset_is_its_length():
    gt = hand(n=4)
    assert torch.allclose(mpjpe(gt + SHIFT.double(), gt), torch.full((4,), 5.0, dtype=torch.float64))
    assert mpjpe(gt, gt).abs().max() == 0
    assert mpjpe(gt.float() + SHIFT, gt.float()).dtype == torch.float32


def test_mpjpe_leaves_out_invisible_and_absent_joints():
    gt = hand(n=2)
    pred = gt + SHIFT.double()
    pred[0, 7] += 1000.0                       # a wild joint ...
    visible = torch.ones(2, 21, dtype=torch.bool)
    visible[0, 7] = False                      # ... that is not visible
    assert torch.allclose(mpjpe(pred, gt, visible), torch.tensor([5.0, 5.0], dtype=torch.float64))
    gt_missing = gt.clone()
    gt_missing[0, 7] = math.nan                # ... or absent from the ground truth
    assert torch.allclose(mpjpe(pred, gt_missing), torch.tensor([5.0, 5.0], dtype=torch.float64))
    # weights: a weighted mean
    pred = gt.clone()
    pred[1, 0] += torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64)
    w = torch.zeros(2, 21)
    w[1, :2] = torch.tensor([3.0, 1.0])
    assert mpjpe(pred, gt, w)[1].item() == pytest.approx(7.5)
    assert math.isnan(mpjpe(pred, gt, w)[0].item())          # no evaluated joint
    nan_pred = gt.clone()
    nan_pred[1, 3] = math.nan
    assert math.isnan(mpjpe(nan_pred, gt)[1].item()) and mpjpe(nan_pred, gt)[0] == 0


def test_mpjpe_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"pred must have shape \(B, K, 3\)"):
        mpjpe(torch.zeros(21, 3), torch.zeros(21, 3))
    with pytest.raises(ValueError, match="gt must have the shape"):
        mpjpe(torch.zeros(1, 21, 3), torch.zeros(1, 14, 3))
    with pytest.raises(ValueError, match="visible must have shape"):
        mpjpe(torch.zeros(1, 21, 3), torch.zeros(1, 21, 3), torch.ones(21))
    with pytest.raises(ValueError, match="weights >= 0"):
        mpjpe(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.tensor([[1.0, -1.0]]))


def test_pck_equals_hand_computed_fractions():
    gt = torch.zeros(1, 6, 3)
    pred = torch.zeros(1, 6, 3)
    pred[0, :5, 2] = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])   # errors 1, 3, 5, 7, 9 mm
    gt[0, 5] = math.nan                                          # the 6th joint is absent
    pck = pck_curve(pred, gt, [0.0, 2.0, 4.0, 5.0, 6.0, 8.0, 10.0])
    assert pck.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.6, 0.8, 1.0])  # "within": error <= t
    visible = torch.tensor([[True, True, False, False, True, True]])
    assert pck_curve(pred, gt, [4.0, 10.0], visible).tolist() == pytest.approx([2 / 3, 1.0])
    pred[0, 0] = math.nan                                        # a NaN prediction is never correct
    assert pck_curve(pred, gt, [100.0]).item() == pytest.approx(0.8)


def test_pck_is_monotone_and_pooled_over_frames():
    gt = hand(1, n=8)
    pred = gt + torch.randn(8, 21, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 15
    t = torch.linspace(0, 80, 81)
    pck = pck_curve(pred, gt, t)
    assert (pck.diff() >= 0).all() and pck[0] == 0 and 0 <= pck.min() and pck.max() <= 1
    err = (pred - gt).norm(dim=-1)
    assert pck[20].item() == pytest.approx((err <= 20).double().mean().item())
    assert torch.isnan(pck_curve(pred, gt, [5.0], torch.zeros(8, 21))).all()


def test_auc_of_perfect_and_hopeless_predictions():
    gt = hand(n=3)
    t = DEFAULT_THRESHOLDS_MM
    assert auc(t, pck_curve(gt, gt, t)) == 1.0
    assert auc(t, pck_curve(gt + 1000.0, gt, t)) == 0.0
    assert auc(t, pck_curve(gt + SHIFT.double(), gt, t)) == 1.0           # 5 mm is within the first threshold
    assert auc([0.0, 10.0, 20.0], torch.tensor([0.0, 0.5, 1.0])) == pytest.approx(0.5)
    assert t == tuple(float(v) for v in range(5, 51, 5))
    with pytest.raises(ValueError, match="strictly increasing"):
        auc([10.0, 5.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=">= 2"):
        auc([5.0], [1.0])
    with pytest.raises(ValueError, match="one value per threshold"):
        auc([5.0, 10.0], [1.0])


def test_parse_thresholds():
    assert parse_thresholds("5:50:5") == DEFAULT_THRESHOLDS_MM
    assert parse_thresholds("20:50:1")[-1] == 50.0 and len(parse_thresholds("20:50:1")) == 31
    assert parse_thresholds("0.5:1.5:0.5") == (0.5, 1.0, 1.5)
    assert parse_thresholds("20, 30,40") == (20.0, 30.0, 40.0)
    for bad in ("5:50", "a:b:c", "5:50:0", "50:5:5", "20", "30,20", "-5,5", "inf,5", "0:1e9:1e-3"):
        with pytest.raises(InputError, match="--thresholds"):
            parse_thresholds(bad)


# --- joint maps -----------------------------------------------------------------------------


def test_fpha_map_is_a_permutation_in_the_published_order():
    fpha = JOINT_MAPS["fpha"]
    assert fpha.joint_names == ("Wrist", "TMCP", "IMCP", "MMCP", "RMCP", "PMCP", "TPIP", "TDIP", "TTIP",
                                "IPIP", "IDIP", "ITIP", "MPIP", "MDIP", "MTIP", "RPIP", "RDIP", "RTIP",
                                "PPIP", "PDIP", "PTIP")
    perm = list(fpha.sources)
    assert sorted(perm) == list(range(21))
    kp = hand(2, n=3)
    in_fpha = map_joints(kp, "fpha")
    back = torch.empty_like(in_fpha)
    back[:, perm] = in_fpha                                       # the inverse permutation
    assert torch.equal(back, kp)
    k = KEYPOINT_NAMES.index
    for fname, ours in (("Wrist", "wrist"), ("TMCP", "thumb_cmc"), ("TTIP", "thumb_tip"), ("IMCP", "index_mcp"),
                        ("ITIP", "index_tip"), ("MDIP", "middle_dip"), ("PPIP", "little_pip")):
        assert torch.equal(in_fpha[:, fpha.joint_names.index(fname)], kp[:, k(ours)])


def test_nyu14_map():
    nyu = JOINT_MAPS["nyu14"]
    assert len(nyu) == 14 and len(nyu.joint_names) == 14
    kp = hand(3)
    out = map_joints(kp, nyu)
    assert out.shape == (14, 3)
    k = KEYPOINT_NAMES.index
    assert torch.equal(out[0], kp[k("little_tip")]) and torch.equal(out[8], kp[k("thumb_tip")])
    assert torch.allclose(out[13], (kp[k("wrist")] + kp[k("middle_mcp")]) / 2)       # palm centre C
    assert torch.equal(map_joints(kp, "ours"), kp)


def test_joint_map_from_json(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(["wrist", 8, ["wrist", "middle_mcp"], None]))
    jm = load_joint_map(path)
    assert len(jm) == 4 and jm.sources == (0, 8, (0, 9), None)
    out = map_joints(hand(4), jm)
    assert torch.isnan(out[3]).all() and torch.equal(out[1], hand(4)[8])
    for doc, message in ((["wrist", "pinky_tip"], "unknown keypoint name 'pinky_tip'"),
                         ([0, 21], "index 21 is out of range 0..20"),
                         ([True], "expected a keypoint name"),
                         ([[]], "an empty list"),
                         ({"joints": [0]}, "must be a list"),
                         ([], "got 0 entries")):
        path.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=message):
            load_joint_map(path)
    with pytest.raises(InputError, match="unknown joint map 'mano'"):
        load_joint_map("mano")


# --- readers --------------------------------------------------------------------------------


def test_read_our_fit_outputs(tmp_path):
    kp = hand(5, n=3)
    write_fit(tmp_path / "single", kp[0])
    frames = read_keypoint_frames(tmp_path / "single")
    assert list(frames) == ["single"] and torch.equal(frames["single"], kp[0])
    assert list(read_keypoint_frames(tmp_path / "single" / "params.json")) == ["single"]
    seq = tmp_path / "seq"                     # the fit-sequence output
    for i, name in enumerate(["10", "2", "30"]):
        write_fit(seq / name, kp[i])
    (seq / "sequence.json").write_text("{}")
    (seq / "shape.npz").write_bytes(b"not read")
    (seq / "40.error.txt").write_text("no hand")
    (seq / ".50.tmp").mkdir()                  # an unfinished frame
    (seq / ".50.tmp" / "params.json").write_text("{")
    frames = read_keypoint_frames(seq)
    assert list(frames) == ["2", "10", "30"] and torch.equal(frames["30"], kp[2])


def test_read_plain_keypoint_files(tmp_path):
    kp = hand(6, n=2)
    (tmp_path / "a.json").write_text(json.dumps(kp[0].tolist()))
    (tmp_path / "b.json").write_text(json.dumps({"keypoints": kp[1].tolist()}))
    np.save(tmp_path / "c.npy", kp[0].float().numpy())
    (tmp_path / "d.txt").write_text("# x y z in mm\n" + "\n".join(" ".join(f"{v:.6f}" for v in r) for r in kp[1].tolist()))
    (tmp_path / "e.csv").write_text("x,y,z\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in kp[0].tolist()))
    (tmp_path / "notes.md").write_text("ignored")
    frames = read_keypoint_frames(tmp_path)
    assert list(frames) == ["a", "b", "c", "d", "e"]
    assert torch.equal(frames["a"], kp[0]) and torch.equal(frames["b"], kp[1])
    assert torch.allclose(frames["c"], kp[0], atol=1e-4)
    assert torch.allclose(frames["d"], kp[1], atol=1e-5) and torch.allclose(frames["e"], kp[0], atol=1e-5)


def test_read_multi_frame_arrays_and_missing_joints(tmp_path):
    kp = hand(7, n=3)
    np.save(tmp_path / "gt.npy", kp.numpy())
    assert list(read_keypoint_frames(tmp_path / "gt.npy")) == ["0", "1", "2"]
    np.savez(tmp_path / "gt.npz", keypoints=kp.numpy(), names=np.array(["f1", "f2", "f10"]))
    frames = read_keypoint_frames(tmp_path / "gt.npz")
    assert list(frames) == ["f1", "f2", "f10"] and torch.equal(frames["f10"], kp[2])
    rows = kp.tolist()
    rows[1][4] = [None, None, None]            # a joint the ground truth lacks
    (tmp_path / "gt.json").write_text(json.dumps({"names": ["x", "y", "z"], "keypoints": rows}))
    frames = read_keypoint_frames(tmp_path / "gt.json", allow_missing=True)
    assert torch.isnan(frames["y"][4]).all() and torch.isfinite(frames["y"][5]).all()
    with pytest.raises(InputError, match="must all be finite"):
        read_keypoint_frames(tmp_path / "gt.json")          # not in predictions


# --- handfit eval -----------------------------------------------------------------------------


def test_eval_end_to_end(tmp_path, capsys):
    gt = hand(8, n=4)
    for i in range(3):                          # frames 0, 1, 2 predicted; 0..3 in the ground truth; 9 extra
        write_fit(tmp_path / "pred" / f"{i}", gt[i] + SHIFT.double())
    write_fit(tmp_path / "pred" / "9", gt[0])
    (tmp_path / "gt").mkdir()
    for i in range(4):
        (tmp_path / "gt" / f"{i}.json").write_text(json.dumps(gt[i].tolist()))
    csv_path = tmp_path / "errors.csv"
    status, out, err = run(["eval", tmp_path / "pred", tmp_path / "gt", "--csv", csv_path], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("frames: 3 evaluated (63 joint positions, joint map ours: 21 joints); "
                               "1 without a prediction (3), 1 without ground truth (9)")
    assert lines[1] == "MPJPE: mean 5.00 mm, median over frames 5.00 mm"
    assert lines[2] == "PCK: " + ", ".join(f"{t} mm 1.000" for t in range(5, 51, 5))
    assert lines[3] == "AUC of PCK over 5-50 mm: 1.000 (trapezoidal, 10 thresholds)"
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("frame,mpjpe_mm,wrist_mm,thumb_cmc_mm") and len(rows) == 4
    assert rows[1].startswith("0,5.000,5.000,")

    # a 7.5 mm error sits between the 5 and 10 mm thresholds; FPHA-ordered ground truth
    (tmp_path / "fpha").mkdir()
    for i in range(3):
        (tmp_path / "fpha" / f"{i}.json").write_text(json.dumps(map_joints(gt[i] + torch.tensor(
            [0.0, 0.0, 2.5], dtype=torch.float64), "fpha").tolist()))
    status, out, err = run(["eval", tmp_path / "pred", tmp_path / "fpha", "--joints", "fpha",
                            "--thresholds", "5,10,15"], capsys)
    assert status == 0, err
    assert "MPJPE: mean 5.59 mm" in out                   # |(3, 4, -2.5)| = 5.59 mm
    assert "PCK: 5 mm 0.000, 10 mm 1.000, 15 mm 1.000" in out
    assert "AUC of PCK over 5-15 mm: 0.750" in out


def test_evaluate_returns_the_documented_fields():
    gt = {"a": torch.zeros(14, 3), "b": torch.zeros(14, 3)}
    gt["b"][0] = math.nan
    pred = {"a": torch.zeros(21, 3), "b": torch.zeros(21, 3)}
    r = evaluate(pred, gt, joint_map="nyu14")
    assert r["frames"] == ["a", "b"] and r["num_joints"] == 27 and r["joint_names"][0] == "P1"
    assert math.isnan(r["per_joint_mpjpe_mm"]["P1"]) is False and r["mpjpe_mm"] == 0.0
    assert r["joint_errors_mm"].shape == (2, 14) and math.isnan(r["joint_errors_mm"][1, 0])
    single = evaluate({"fit": torch.zeros(21, 3)}, {"truth": torch.ones(21, 3)})  # one frame each: any names
    assert single["frames"] == ["fit"] and single["mpjpe_mm"] == pytest.approx(math.sqrt(3))


def big_npy_header(path):
    """An .npy whose header claims 10^12 float64 values but holds none."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 21, 3)})


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file or folder"),
        ("not_json", "invalid JSON"),
        ("nan_only", "no finite keypoint"),
        ("wrong_shape", "expected keypoints of shape (K, 3) or (N, K, 3)"),
        ("ragged", "ragged"),
        ("text_values", "must be numbers"),
        ("huge", "bytes, more than the 100 bytes a keypoint file may have"),
        ("huge_header", "more than the 256.0 MiB an array may have"),
        ("pickle", "holds Python objects"),
        ("not_npy", "not a valid .npy"),
        ("inf", "infinite values"),
        ("overflow", "too large"),
        ("long_int", "invalid JSON (Exceeds the limit"),
        ("deep", "nested too deeply"),
        ("nan_prediction", "must all be finite"),
        ("bad_txt", "line 2: expected 3 numbers"),
        ("no_frames", "holds neither fit output folders"),
        ("two_frames_in_folder", "each file of a folder must hold one frame"),
        ("twice", "given twice"),
        ("link_outside", "links outside"),
        ("other_names", "'keypoint_names' are not hands.KEYPOINT_NAMES"),
        ("no_common_frame", "no frame is in both"),
        ("pred_joints", "expected the 21 keypoints"),
        ("map_length", "but the joint map nyu14 has 14 joints"),
        ("map_file_length", "but the joint map"),
        ("map_unknown", "unknown joint map 'freihand'"),
        ("map_name", "unknown keypoint name 'thumb'"),
        ("map_index", "index 99 is out of range"),
        ("thresholds", "--thresholds must be"),
        ("csv", "--csv's folder"),
    ],
)
def test_bad_input_gives_one_line_error(case, expected, tmp_path, capsys, monkeypatch):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write_fit(pred / "0", hand(9))
    write_fit(pred / "1", hand(10))
    gt.mkdir()
    for name in ("0", "1"):
        (gt / f"{name}.json").write_text(json.dumps(hand(9).tolist()))
    extra = []
    target = gt / "0.json"
    if case == "missing":
        gt = tmp_path / "nowhere"
    elif case == "not_json":
        target.write_text("{not json")
    elif case == "nan_only":
        target.write_text(json.dumps([[None, None, None]] * 21))
    elif case == "wrong_shape":
        np.save(gt / "0.npy", np.zeros((21, 2)))
        target.unlink()
    elif case == "ragged":
        target.write_text(json.dumps([[1, 2, 3], [4, 5]]))
    elif case == "text_values":
        target.write_text(json.dumps([["1", "2", "3"]] * 21))
    elif case == "huge":
        monkeypatch.setattr(evaluation, "MAX_TEXT_BYTES", 100)
    elif case == "huge_header":
        target.unlink()
        big_npy_header(gt / "0.npy")
    elif case == "pickle":
        target.unlink()
        np.save(gt / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "not_npy":
        target.unlink()
        (gt / "0.npy").write_bytes(b"\x80\x04K\x01.")           # a pickle, not an array
    elif case == "inf":
        target.write_text("[[1e999, 0, 0]]")
    elif case == "overflow":
        target.write_text("[[1" + "0" * 400 + ", 0, 0]]")
    elif case == "long_int":
        target.write_text("[[" + "1" * 5000 + ", 0, 0]]")
    elif case == "deep":
        target.write_text("[" * 100000 + "]" * 100000)
    elif case == "nan_prediction":
        doc = json.loads((pred / "0" / "params.json").read_text())
        doc["keypoints"][3] = [None, None, None]
        (pred / "0" / "params.json").write_text(json.dumps(doc))
    elif case == "bad_txt":
        target.unlink()
        (gt / "0.txt").write_text("1 2 3\n4 5\n")
    elif case == "no_frames":
        for f in gt.iterdir():
            f.unlink()
        (gt / "readme.md").write_text("x")
    elif case == "two_frames_in_folder":
        np.save(gt / "2.npy", np.zeros((2, 21, 3)))
    elif case == "twice":
        np.save(gt / "0.npy", np.zeros((21, 3)))
    elif case == "link_outside":
        (tmp_path / "elsewhere.json").write_text(json.dumps(hand(9).tolist()))
        (gt / "3.json").symlink_to(tmp_path / "elsewhere.json")
    elif case == "other_names":
        doc = json.loads((pred / "0" / "params.json").read_text())
        doc["keypoint_names"] = doc["keypoint_names"][::-1]
        (pred / "0" / "params.json").write_text(json.dumps(doc))
    elif case == "no_common_frame":
        for name in ("0", "1"):
            (gt / f"{name}.json").rename(gt / f"frame_{name}.json")
    elif case == "pred_joints":
        pred = tmp_path / "pred14"
        pred.mkdir()
        for name in ("0", "1"):
            (pred / f"{name}.json").write_text(json.dumps(hand(9)[:14].tolist()))
    elif case == "map_length":
        extra = ["--joints", "nyu14"]
    elif case == "map_file_length":
        (tmp_path / "map3.json").write_text(json.dumps(["wrist", "thumb_tip", "index_tip"]))
        extra = ["--joints", tmp_path / "map3.json"]
    elif case == "map_unknown":
        extra = ["--joints", "freihand"]
    elif case in ("map_name", "map_index"):
        (tmp_path / "map.json").write_text(json.dumps(["wrist", "thumb"] if case == "map_name" else [0, 99]))
        extra = ["--joints", tmp_path / "map.json"]
    elif case == "thresholds":
        extra = ["--thresholds", "50:5:5"]
    elif case == "csv":  # a missing folder is created, one inside a file cannot be
        (tmp_path / "afile").write_text("x")
        extra = ["--csv", tmp_path / "afile" / "dir.csv"]
    status, out, err = run(["eval", pred, gt, *extra], capsys)
    assert status == 2, (out, err)
    assert err.startswith("handfit: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert "Traceback" not in err
