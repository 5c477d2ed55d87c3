"""Compressed per-frame splats in Niantic's SPZ format (version 3), for the web viewer.

SPZ is a gzipped, attribute-major packing of 3DGS data, about 10x smaller than a standard PLY,
read by Spark (our viewer), SuperSplat and Niantic's own tools. Layout, after a 16-byte header
(magic ``NGSP``, version, count, SH degree, fractional bits, flags, reserved), all little-endian:

- positions: 3 x 24-bit signed fixed point per Gaussian (``FRACTIONAL_BITS`` fractional bits);
- alphas: ``sigmoid(logit) * 255``;
- colours: the SH DC coefficient as ``dc * 0.15 * 255 + 127.5`` (the 0.15 leaves headroom);
- scales: ``(log_scale + 10) * 16`` per axis;
- rotations: "smallest three" (v3): the index of the largest |component| of the unit (x, y, z, w)
  quaternion in the top 2 bits, then the other three as sign + 9-bit magnitude / sqrt(1/2);
- SH bands >= 1: ``round(c * 128) + 128``, coefficient-major with RGB innermost, degree 1 kept at
  5 bits and higher degrees at 4 (the reference encoder's defaults).

SPZ's frame is right-up-back (three.js / OpenGL): :func:`to_spz_axes` turns ds4d's world (Z up,
the input camera on -Y) into it, so the object stands upright and faces a viewer's default camera.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ds4d_cli.export.axes import rotate_gaussians
from ds4d_cli.export.splats import SplatFrame
from ds4d_cli.fsutil import write_bytes_atomic

MAGIC = 0x5053474E  # "NGSP"
VERSION = 3
FRACTIONAL_BITS = 12  # ~0.24 mm steps; positions up to +-2048 units
COLOR_SCALE = 0.15
SH1_BITS, SH_REST_BITS = 5, 4

#: ds4d world (Z up, front towards -Y) -> SPZ / three.js / glTF (Y up, front towards +Z):
#: (x, y, z) -> (x, z, -y), a rotation of -90 degrees about X.
RUB_FROM_WORLD = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
RUB_FROM_WORLD_QUAT = torch.tensor([math.cos(-math.pi / 4), math.sin(-math.pi / 4), 0.0, 0.0], dtype=torch.float64)


def to_spz_axes(frame: SplatFrame) -> SplatFrame:
    """Rotate a frame from ds4d's world into SPZ's right-up-back frame (SH rotated too)."""
    means, quats, shN = rotate_gaussians(frame.means, frame.quats, frame.shN, rot=RUB_FROM_WORLD,
                                         rot_quat=RUB_FROM_WORLD_QUAT)
    return replace(frame, means=means, quats=quats, shN=shN)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _pack_positions(means: np.ndarray) -> np.ndarray:
    fixed = np.round(means.astype(np.float64) * (1 << FRACTIONAL_BITS)).astype(np.int64)
    limit = 1 << 23
    if np.abs(fixed).max(initial=0) >= limit:
        raise ValueError(f"positions beyond +-{limit >> FRACTIONAL_BITS} units cannot be stored in SPZ")
    fixed = fixed.astype(np.int32).reshape(-1)
    as_bytes = fixed.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]  # low 24 bits, two's complement
    return np.ascontiguousarray(as_bytes).reshape(-1)


def _pack_quats_smallest_three(quats_wxyz: np.ndarray) -> np.ndarray:
    q = quats_wxyz[:, [1, 2, 3, 0]].astype(np.float64)  # SPZ order: x, y, z, w
    q /= np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    largest = np.abs(q).argmax(axis=1)
    rows = np.arange(len(q))
    negate = q[rows, largest] < 0
    comp = largest.astype(np.uint32)
    mask = (1 << 9) - 1
    for i in range(4):
        keep = largest != i
        neg = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum((mask * np.abs(q[:, i]) / math.sqrt(0.5) + 0.5).astype(np.uint32), mask)
        comp = np.where(keep, (comp << 10) | (neg << 9) | mag, comp)
    return comp.astype("<u4").view(np.uint8)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(x * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(frame: SplatFrame) -> bytes:
    """The gzipped SPZ v3 bytes of ``frame`` (already in SPZ's axes, see :func:`to_spz_axes`)."""
    n = len(frame)
    k = int(frame.shN.shape[1])
    degree = {0: 0, 3: 1, 8: 2, 15: 3}.get(k)
    if degree is None:
        raise ValueError(f"SPZ stores SH degree 0-3; got {k} higher-band coefficients")
    means = frame.means.numpy()
    header = struct.pack("<IIIBBBB", MAGIC, VERSION, n, degree, FRACTIONAL_BITS, 0, 0)
    alphas = _u8(torch.sigmoid(frame.opacity_logits).numpy() * 255.0)
    colors = _u8(frame.sh0[:, 0, :].numpy() * (COLOR_SCALE * 255.0) + 0.5 * 255.0).reshape(-1)
    scales = _u8((frame.log_scales.numpy() + 10.0) * 16.0).reshape(-1)
    rotations = _pack_quats_smallest_three(frame.quats.numpy())
    parts = [header, _pack_positions(means).tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(),
             rotations.tobytes()]
    if k:
        sh = frame.shN.numpy()  # [N, K, 3]: coefficient-major, RGB innermost, as SPZ stores it
        packed = np.concatenate([_quantize_sh(sh[:, :3], SH1_BITS), _quantize_sh(sh[:, 3:], SH_REST_BITS)], axis=1)
        parts.append(np.ascontiguousarray(packed).tobytes())
    return gzip.compress(b"".join(parts), compresslevel=9, mtime=0)


def decode_spz(data: bytes) -> dict[str, np.ndarray]:
    """Unpack SPZ v2/v3 bytes (for tests and size checks): means, alphas, colors (DC), log_scales,
    quats (w, x, y, z) and shN, in the file's axes."""
    raw = gzip.decompress(data)
    magic, version, n, degree, frac, _flags, _res = struct.unpack_from("<IIIBBBB", raw, 0)
    if magic != MAGIC or version not in (2, 3):
        raise ValueError("not an SPZ v2/v3 stream")
    off = 16
    pos = np.frombuffer(raw, np.uint8, n * 9, off).reshape(-1, 3).astype(np.int32)
    off += n * 9
    fixed = pos[:, 0] | (pos[:, 1] << 8) | (pos[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = (fixed.astype(np.float64) / (1 << frac)).reshape(n, 3)
    alphas = np.frombuffer(raw, np.uint8, n, off) / 255.0
    off += n
    colors = ((np.frombuffer(raw, np.uint8, n * 3, off) / 255.0 - 0.5) / COLOR_SCALE).reshape(n, 3)
    off += n * 3
    log_scales = (np.frombuffer(raw, np.uint8, n * 3, off) / 16.0 - 10.0).reshape(n, 3)
    off += n * 3
    if version >= 3:
        comp = np.frombuffer(raw, "<u4", n, off).astype(np.uint64)
        off += n * 4
        largest = (comp >> 30).astype(np.int64)
        q = np.zeros((n, 4))
        for i in range(3, -1, -1):
            skip = largest == i
            mag = (comp & 511).astype(np.float64) * math.sqrt(0.5) / 511.0
            val = np.where((comp >> 9) & 1, -mag, mag)
            q[:, i] = np.where(skip, q[:, i], val)
            comp = np.where(skip, comp, comp >> 10)
        rest = (q ** 2).sum(1) - q[np.arange(n), largest] ** 2
        q[np.arange(n), largest] = np.sqrt(np.clip(1.0 - rest, 0.0, None))
    else:
        xyz = np.frombuffer(raw, np.uint8, n * 3, off).reshape(n, 3) / 127.5 - 1.0
        off += n * 3
        q = np.concatenate([xyz, np.sqrt(np.clip(1 - (xyz ** 2).sum(1, keepdims=True), 0, None))], 1)
    k = {0: 0, 1: 3, 2: 8, 3: 15}[degree]
    shN = ((np.frombuffer(raw, np.uint8, n * k * 3, off).astype(np.float64) - 128.0) / 128.0).reshape(n, k, 3)
    return {"means": means, "alphas": alphas, "colors": colors, "log_scales": log_scales,
            "quats": q[:, [3, 0, 1, 2]], "shN": shN}


def write_spz(path: Path, frame: SplatFrame) -> int:
    """Atomically write ``frame`` (in SPZ axes) to ``path``; returns the file size in bytes."""
    data = encode_spz(frame)
    write_bytes_atomic(path, data)
    return len(data)
