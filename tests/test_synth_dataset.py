"""The synthetic dataset generator (SynHand5M layout): round trip, re-render, seeds, resuming."""

import filecmp
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fitting import InputError
from fitting.cli import main
from fitting.dataset import list_dataset
from fitting.synth_dataset import (PART_COLOURS, SynthDataset, SynthOptions, generate, part_labels, read_chunk,
                                   render_sample)
from renderers import make_renderer

SMALL = dict(width=160, height=120, fx=119.0, fy=119.0, progress=False)


@pytest.fixture(scope="module")
def dataset(hand_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(hand_model, out, SynthOptions(samples=5, chunk_size=3, seed=4, **SMALL))
    return out


def test_a_chunk_reads_back_its_parameters_depth_and_vertices(hand_model, dataset):
    camera = json.loads((dataset / "camera.json").read_text())
    assert camera["width"] == 160 and np.allclose(camera["extrinsics"], np.eye(4))
    samples = read_chunk(dataset / "chunk_0000", hand_model) + read_chunk(dataset / "chunk_0001", hand_model)
    assert len(samples) == 5
    lower, upper = hand_model.dof_lower, hand_model.dof_upper
    for s in samples:
        with torch.no_grad():
            out = hand_model(**s["params"])
        # the dataframe regenerates the sample: its vertices and keypoints
        verts = torch.from_numpy(np.fromfile(s["vertices"], dtype="<f4").reshape(-1, 3))
        assert verts.shape == (hand_model.num_vertices, 3)
        assert (out.vertices[0] - verts).abs().max() < 0.05  # mm (6 significant digits in the CSV)
        assert (out.keypoints[0] - s["keypoints"]).abs().max() < 0.05
        theta = s["params"]["theta"][0]
        assert bool(((theta >= lower - 1e-6) & (theta <= upper + 1e-6)).all())
        depth = iio.imread(s["depth"])
        assert depth.dtype == np.uint16 and depth.shape == (120, 160)
        seg = iio.imread(s["segmentation"])
        colours = {tuple(c) for c in seg.reshape(-1, 3)} - {(0, 0, 0)}
        assert colours and colours <= {tuple(c) for c in PART_COLOURS} and len(colours) >= 3
    assert {s["pose_class"] for s in samples} <= {"open", "spread", "fist", "pinch", "point", "free"}


def test_the_depth_png_matches_a_render_of_the_stored_vertices(hand_model, dataset):
    s = read_chunk(dataset / "chunk_0000", hand_model)[1]
    verts = torch.from_numpy(np.fromfile(s["vertices"], dtype="<f4").reshape(1, -1, 3))
    camera = SynthOptions(**SMALL).camera()
    render = make_renderer("hybrid")(verts, hand_model.faces, camera)
    depth = torch.from_numpy(iio.imread(s["depth"]).astype(np.float32))
    hand = torch.from_numpy(iio.imread(s["segmentation"]).any(-1)) & render.mask[0]
    assert int(hand.sum()) > 50
    # noise ~1 mm at these depths, 1 mm quantization, dropped edge pixels read 0
    residual = (depth - render.depth[0])[hand & (depth > 0)].abs()
    assert float(residual.median()) < 2.0 and float((residual < 6.0).float().mean()) > 0.95


def test_the_same_seed_gives_the_same_chunks_and_a_resumed_run_writes_them_too(hand_model, dataset, tmp_path):
    again = tmp_path / "again"
    generate(hand_model, again, SynthOptions(samples=5, chunk_size=3, seed=4, **SMALL))
    # a run stopped after the first chunk (a leftover temporary folder too), then resumed
    resumed = tmp_path / "resumed"
    generate(hand_model, resumed, SynthOptions(samples=3, chunk_size=3, seed=4, **SMALL))
    (resumed / ".chunk_0001.tmp").mkdir()
    stamp = (resumed / "chunk_0000" / "dataframe.csv").stat().st_mtime_ns
    generate(hand_model, resumed, SynthOptions(samples=5, chunk_size=3, seed=4, **SMALL))
    assert (resumed / "chunk_0000" / "dataframe.csv").stat().st_mtime_ns == stamp
    for other in (again, resumed):
        for chunk in ("chunk_0000", "chunk_0001"):
            cmp = filecmp.dircmp(dataset / chunk, other / chunk)
            assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
            for sub in ("depth", "vertices", "segmentation"):
                names = sorted(p.name for p in (dataset / chunk / sub).iterdir())
                match, mismatch, errors = filecmp.cmpfiles(dataset / chunk / sub, other / chunk / sub, names,
                                                           shallow=False)
                assert not mismatch and not errors
    other = generate(hand_model, tmp_path / "seed5", SynthOptions(samples=1, chunk_size=3, seed=5, **SMALL))
    assert (other[0] / "dataframe.csv").read_text() != (dataset / "chunk_0000" / "dataframe.csv").read_text()
    with pytest.raises(InputError, match="other settings"):
        generate(hand_model, again, SynthOptions(samples=5, chunk_size=3, seed=9, **SMALL))


def test_the_dataset_reads_as_normalized_crops_and_its_chunks_are_fit_dataset_sources(hand_model, dataset):
    ds = SynthDataset(dataset, hand_model, size=32)
    assert len(ds) == 5
    item = ds[0]
    assert item["depth"].shape == (1, 32, 32) and float(item["depth"].min()) >= -1 and float(item["depth"].max()) == 1
    assert float(item["depth"].min()) < 0.5  # the hand is in front of the background value 1
    assert item["keypoints"].shape == (21, 3) and float(item["keypoints"].norm(dim=-1).max()) < 150.0
    assert set(item["params"]) >= {"theta", "beta", "alpha", "global_orient", "transl"}
    # a chunk's depth folder is a fit-dataset folder (the camera is the dataset's camera.json)
    assert [i.name for i in list_dataset(dataset / "chunk_0000" / "depth")] == ["000000", "000001", "000002"]


def test_fitter_crops_cut_the_samples_as_the_fitter_cuts_a_frame(hand_model, dataset):
    from fitting import Observation
    from fitting.adaptation import AdaptOptions, FrameCrops
    from fitting.initialize import network_input
    from fitting.io import camera_from_args, read_depth
    from fitting.preprocess import prepare

    exact = SynthDataset(dataset, hand_model, size=32)
    fitter = SynthDataset(dataset, hand_model, size=32, crop="fitter")
    camera = camera_from_args(camera_json=dataset / "camera.json")
    frames = FrameCrops(dataset / "chunk_0000" / "depth", camera, 220.0, 32)
    differs = False
    for i in range(3):
        s = fitter.samples[i]
        crop = prepare(Observation(depth=read_depth(s["depth"]), camera=camera), 220.0, 32)
        x, centre = network_input([crop], 220.0, 32)
        item = fitter[i]
        # the network input of an unlabelled frame (FrameCrops, then network_input), with the labels
        # moved to that crop's centre
        assert torch.equal(item["depth"], x[0]) and torch.equal(item["centre"], centre[0])
        assert torch.equal(network_input([frames[i]], 220.0, 32)[0][0], x[0])
        assert torch.allclose(item["keypoints"] + item["centre"], s["keypoints"])
        differs |= not torch.equal(item["depth"], exact[i]["depth"])
    assert differs  # the depth segmentation is not the exact mask
    with pytest.raises(ValueError, match="crop"):
        SynthDataset(dataset, hand_model, crop="truth")
    with pytest.raises(ValueError, match="synthetic_crop"):
        AdaptOptions(synthetic_crop="truth")


def test_part_labels_cover_the_palm_and_every_phalanx(hand_model):
    labels = part_labels(hand_model)
    assert labels.shape == (hand_model.num_vertices,)
    assert set(labels.tolist()) == set(range(16))  # palm + 15 phalanges


def test_the_cli_generates_and_reports_bad_settings(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--samples", "1", "--chunk-size", "1", "--width", "96",
                 "--height", "72", "--focal", "72", "--no-noise"]) == 0
    assert (tmp_path / "d" / "chunk_0000" / "depth" / "000000.png").is_file()
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "e"), "--samples", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "handfit: error: synth: samples and chunk_size must be >= 1, got 0 and 1000"]
