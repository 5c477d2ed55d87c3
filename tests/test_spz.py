"""SPZ encoding of one frame: every attribute within its quantisation step, axes right-up-back.

(That Spark, an independent decoder, reads these files and draws what our renderer draws is
checked in the browser tests, tests/test_viewer.py.)
"""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import torch
from fake_model import FakeModel

from ds4d_cli.render.projection import quat_to_rotmat
from ds4d_cli.export.splats import splat_frame_from
from ds4d_cli.export.spz import COLOR_SCALE, RUB_FROM_WORLD, decode_spz, encode_spz, to_spz_axes


def test_spz_round_trip_within_quantisation_steps() -> None:
    frame = to_spz_axes(splat_frame_from(FakeModel(num_frames=1, n_static=300, n_moving=20, sh_degree=2,
                                                   seed=4).gaussians_at(0)))
    data = encode_spz(frame)
    raw = gzip.decompress(data)
    magic, version, n, degree, frac, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, frac, flags, reserved) == (0x5053474E, 3, len(frame), 2, 12, 0, 0)
    assert len(raw) == 16 + n * (9 + 1 + 3 + 3 + 4 + 8 * 3)
    d = decode_spz(data)
    np.testing.assert_allclose(d["means"], frame.means.numpy(), atol=0.5 / 4096 + 1e-7)
    np.testing.assert_allclose(d["alphas"], frame.opacities.numpy(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(d["colors"], frame.sh0[:, 0].numpy(), atol=0.5 / (255 * COLOR_SCALE) + 1e-6)
    np.testing.assert_allclose(d["log_scales"], frame.log_scales.numpy(), atol=0.5 / 16 + 1e-6)
    # Rotations: the same rotation (q and -q are one rotation) to within the 9-bit steps.
    r_in = quat_to_rotmat(frame.quats.double())
    r_out = quat_to_rotmat(torch.from_numpy(d["quats"]))
    assert (r_in - r_out).abs().max() < 0.02
    # Degree-1 SH at 5 bits (buckets of 8/128), degree 2 at 4 bits (16/128), inside [-1, 1); the
    # value is rounded to 1/128 first, then to its bucket: at most half a bucket + 1/256 off.
    sh = frame.shN.numpy().clip(-1, 127 / 128)
    assert np.abs(d["shN"][:, :3] - sh[:, :3]).max() <= 4.5 / 128 + 1e-6
    assert np.abs(d["shN"][:, 3:] - sh[:, 3:]).max() <= 8.5 / 128 + 1e-6


def test_spz_axes_are_right_up_back() -> None:
    """World up (+Z) becomes +Y; the input camera's side (world -Y) becomes +Z (towards the viewer)."""
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    towards_camera = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(RUB_FROM_WORLD @ up, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(RUB_FROM_WORLD @ towards_camera, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert math.isclose(float(torch.linalg.det(RUB_FROM_WORLD)), 1.0)
    model = FakeModel(num_frames=1, n_static=5, n_moving=0)
    frame = splat_frame_from(model.gaussians_at(0))
    moved = to_spz_axes(frame)
    np.testing.assert_allclose(moved.means.numpy(), (frame.means.double() @ RUB_FROM_WORLD.T).numpy(), atol=1e-6)
    # Each Gaussian's orientation turns with the positions: R @ rot(q).
    expected = RUB_FROM_WORLD.float() @ quat_to_rotmat(frame.quats)
    assert torch.allclose(quat_to_rotmat(moved.quats), expected, atol=1e-5)
