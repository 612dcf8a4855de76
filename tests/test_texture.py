"""UV atlas, texture extraction (fitting.texture), the NCC texture energy and `handfit texture`."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from fitting import InputError
from fitting.uv_atlas import texel_density, uv_atlas
from hands import HandModel


# -- UV atlas --------------------------------------------------------------------------------
def test_default_atlas_own_uvs_charts_and_texel_map(hand_model):
    atlas = uv_atlas(hand_model)
    assert atlas.source == "model" and atlas.num_charts == 1
    assert atlas.uv.min() >= 0 and atlas.uv.max() <= 1
    tm = atlas.texel_map(64)
    covered = tm.covered
    assert 0.3 < covered.float().mean() < 0.45  # the used part of the layout fills the square
    assert torch.equal(tm.chart >= 0, covered)
    # the barycentric coordinates of every covered texel give back its centre's UV
    face, bary = tm.face[covered], tm.bary[covered].double()
    uv = (atlas.uv.double()[atlas.face_uvs[face]] * bary[..., None]).sum(1)
    ii, jj = torch.nonzero(covered, as_tuple=True)
    centre = torch.stack([(jj + 0.5) / 64, 1 - (ii + 0.5) / 64], -1).double()
    assert (uv - centre).abs().max() < 1.0 / 64


def test_texel_density_scales_with_the_texture_area(hand_model):
    atlas = uv_atlas(hand_model)
    d512, d1024 = texel_density(atlas, hand_model.v_template, 512), texel_density(atlas, hand_model.v_template, 1024)
    assert d1024 == pytest.approx(4 * d512)
    assert 1.0 < d512 < 10.0  # texels per mm^2 of the canonical hand
    raw = uv_atlas(hand_model, fit_to_square=False)  # the whole-body layout: a far lower density
    assert texel_density(raw, hand_model.v_template, 512) < d512 / 10


def test_model_without_uvs_is_an_input_error_unless_unwrapped(hand_data):
    bare = dataclasses.replace(hand_data, uv_coords=torch.zeros(0, 2),
                               face_uvs=torch.zeros_like(hand_data.faces), source="no-uv test hand")
    with pytest.raises(InputError, match="no texture coordinates.*unwrap"):
        uv_atlas(bare)
    pytest.importorskip("xatlas")
    atlas = uv_atlas(bare, unwrap="auto")
    assert atlas.source == "xatlas" and atlas.num_charts > 1
    assert atlas.face_uvs.shape == hand_data.faces.shape and atlas.uv.min() >= 0 and atlas.uv.max() <= 1
    # texels of different charts never share a texel; every chart has texels at 128
    tm = atlas.texel_map(128)
    assert set(torch.unique(tm.chart[tm.covered]).tolist()) <= set(range(atlas.num_charts))
