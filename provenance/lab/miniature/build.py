"""Build the miniature contest deterministically (byte-identical on every machine with the
pinned PyAV): DIR/upstream/ (clip, scorer weights, evaluator) and DIR/submissions/<name>/
(archive.zip + runtime/) for a near-lossless and a lossy sample.

The clip's scored detail and the scorers' weights derive from miniature/block.bin, 12 KiB of
committed random bytes outside the package (so no environment a phase runs in holds it): the
generator alone, without those bytes, cannot rebuild what is scored. A runtime that tries must
carry the block, six times the profile's custody allowance."""

from __future__ import annotations

import array
import hashlib
import io
import json
import math
import os
import random
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import av
import numpy as np

from provenance.contest.miniature import BLOCK_SHA256, FRAMES, HEIGHT, PROFILE, WIDTH
from provenance.core.errors import ProvError

HERE = Path(__file__).parent
BLOCK = HERE.parents[2] / "miniature" / "block.bin"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
CELL, SHADE, GRAIN = 8, 96, 6  # block cells of 8x8 px shaded +-96; public grain +-6
SOURCE_CRF = 18  # the original is a high-quality encode, so rate weighs as in the real contest


def read_block(path: str | Path = BLOCK) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProvError(f"{path}: the miniature's block cannot be read ({e.strerror}); "
                        "the miniature is built from a checkout of comma-lab") from None
    if hashlib.sha256(data).hexdigest() != BLOCK_SHA256:
        raise ProvError(f"{path}: not the miniature's block (sha256 differs from the pinned one)")
    return data


def scene() -> np.ndarray:
    """The public part of the clip: sky, a road with moving lane dashes, a car drifting across."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = np.empty((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    horizon = HEIGHT * 2 // 5
    texture = ((x * 7 + y * 13) % 17).astype(np.int16)  # fixed texture so nothing compresses to nothing
    for t in range(FRAMES):
        img = np.zeros((HEIGHT, WIDTH, 3), np.int16)
        sky = (y < horizon)
        img[..., 0] = np.where(sky, 90 + y, 70)
        img[..., 1] = np.where(sky, 140 + y, 72)
        img[..., 2] = np.where(sky, 220 - y // 2, 75)
        depth = np.clip(y - horizon, 1, None)
        half_width = depth * WIDTH / (2 * (HEIGHT - horizon)) + 4
        road = ~sky & (np.abs(x - WIDTH / 2) < half_width)
        img[~sky & ~road] = (60, 110, 50)
        dash = road & (np.abs(x - WIDTH / 2) < 1 + depth // 12) & (((depth * 3 + t * 4) // 16) % 2 == 0)
        img[dash] = (230, 230, 210)
        cx = int(WIDTH / 2 + 30 * math.sin(t / 8))
        car = (np.abs(x - cx) < 9) & (np.abs(y - (horizon + 28)) < 6)
        img[car] = (200, 30, 40)
        img += (texture - 8)[..., None]
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def frames(block: bytes) -> np.ndarray:
    """The clip: the public scene, each frame's 8x8 cells shaded by one byte of the block (what
    the scorers see), and a public per-pixel grain (what they pool away, but a copy must carry)."""
    gh, gw = HEIGHT // CELL, WIDTH // CELL
    cells = np.frombuffer(block[:FRAMES * gh * gw], np.uint8).reshape(FRAMES, gh, gw)
    shade = np.rint((cells.astype(np.float32) - 127.5) * (SHADE / 127.5)).astype(np.int16)
    shade = shade.repeat(CELL, 1).repeat(CELL, 2)
    t, y, x = np.mgrid[0:FRAMES, 0:HEIGHT, 0:WIDTH].astype(np.int64)
    grain = ((((x * 73856093) ^ (y * 19349663) ^ (t * 83492791)) * 2654435761 >> 7) % (2 * GRAIN + 1) - GRAIN)
    img = scene().astype(np.int16) + (shade + grain.astype(np.int16))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(clip: np.ndarray, path: Path, crf: int = 24) -> None:
    """HEVC in MKV like the official clip; single-threaded and bit-exact so the bytes repeat."""
    with av.open(str(path), "w", format="matroska", options={"fflags": "+bitexact"}) as c:
        s = c.add_stream("libx265", rate=20)
        s.height, s.width = clip.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": str(crf), "preset": "medium",
                     "x265-params": "pools=none:frame-threads=1:info=0:log-level=error"}
        s.codec_context.flags |= av.codec.context.Flags.bitexact
        for img in clip:
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def safetensors(tensors: dict[str, tuple[list[int], list[float]]]) -> bytes:
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        data = array.array("f", values)
        if sys.byteorder != "little":
            data.byteswap()
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def weights(name: str, block: bytes, layers: dict[str, list[int]], gain: dict[str, float]) -> bytes:
    """The stdlib PRNG seeded by a digest of the name and the whole block, so the bytes depend on
    neither the torch version nor anything public; gain sets how much each term weighs."""
    rng = random.Random(hashlib.sha256(name.encode() + b"\0" + block).digest())
    out = {}
    for layer, shape in layers.items():
        n, g = math.prod(shape), gain.get(layer, 1.0)
        if layer.endswith(".bias"):
            out[layer] = (shape, [g * rng.uniform(-0.1, 0.1) for _ in range(n)])
        else:
            fan_in = math.prod(shape[1:])
            out[layer] = (shape, [g * rng.gauss(0, 1 / math.sqrt(fan_in)) for _ in range(n)])
    return safetensors(out)


POSENET = {"conv1.weight": [16, 6, 5, 5], "conv1.bias": [16], "conv2.weight": [32, 16, 3, 3], "conv2.bias": [32],
           "head.weight": [12, 32], "head.bias": [12]}
SEGNET = {"conv1.weight": [16, 3, 3, 3], "conv1.bias": [16], "conv2.weight": [5, 16, 1, 1], "conv2.bias": [5]}
# At the frontier the terms weigh about as at the real one (rate ~.5, SegNet ~.3, PoseNet ~.2 of the score)
POSENET_GAIN = {"head.weight": 200.0, "head.bias": 200.0}


# The evaluator's own dependencies, as the official upstream declares its: `prov upstream env` builds
# a venv from them that holds nothing of comma-lab.
PYPROJECT = """[project]
name = "comma-miniature-upstream"
version = "1"
requires-python = ">=3.11"
dependencies = ["numpy", "av==18.1.0"]

[dependency-groups]
cpu = ["torch==2.13.0"]
cuda = ["torch==2.14.1"]
"""


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, members[name], compresslevel=9)
    path.write_bytes(buf.getvalue())


def write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


INFLATE_DIRECT = """#!/usr/bin/env bash
# inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
set -euo pipefail
exec python "$(dirname "$0")/inflate.py" "$@"
"""
INFLATE_MODULE = """#!/usr/bin/env bash
# inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
# Runs as a module from the upstream root, as many real submissions do.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
exec python -m "submissions.$(basename "$here").inflate" "$@"
"""


# The sweep: variants of `half` along named axes (params.yaml names each one's parent and axis).
# name -> (downscale factor, x265 crf, upsampling filter in inflate, the inflate sample it runs)
SWEEP = {
    "half_crf30": (2, 30, "nearest", "scaled_inflate.py"),
    "half_crf42": (2, 42, "nearest", "scaled_inflate.py"),
    "half_bilinear": (2, 36, "bilinear", "scaled_inflate.py"),
    "quarter_bilinear": (4, 36, "bilinear", "scaled_inflate.py"),
    # the story's failure and its repair: planar YUV bytes where the evaluator reads RGB (off the
    # plots' scale), then the same archive inflated as rgb24 again
    "half_yuv444p": (2, 36, "nearest", "yuv444p_inflate.py"),
    "half_rgb24_repair": (2, 36, "nearest", "scaled_inflate.py"),
}
INFLATE_SCALED = """#!/usr/bin/env bash
# inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
set -euo pipefail
exec python "$(dirname "$0")/inflate.py" "$@" {scale} {filter}
"""


def build_sweep(work: Path, clip: np.ndarray) -> None:
    for name, (scale, crf, filt, sample) in SWEEP.items():
        sub = work / "submissions" / name
        (sub / "runtime").mkdir(parents=True)
        write_exec(sub / "runtime/inflate.sh", INFLATE_SCALED.format(scale=scale, filter=filt))
        shutil.copyfile(HERE / "samples" / sample, sub / "runtime/inflate.py")
        tmp = work / f"{name}.mkv"
        encode(np.ascontiguousarray(clip[:, ::scale, ::scale, :]), tmp, crf=crf)
        write_zip(sub / "archive.zip", {"0.mkv": tmp.read_bytes()})
        tmp.unlink()


def build(dest: str | Path, block_path: str | Path = BLOCK) -> Path:
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ProvError(f"{dest}: exists and is not empty")
    block = read_block(block_path)
    work = dest.parent / f".{dest.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    up = work / "upstream"
    (up / "videos").mkdir(parents=True)
    (up / "models").mkdir()
    encode(frames(block), up / "videos/0.mkv", crf=SOURCE_CRF)
    clip = decode(up / "videos/0.mkv")
    (up / "models/posenet.safetensors").write_bytes(weights("posenet", block, POSENET, POSENET_GAIN))
    (up / "models/segnet.safetensors").write_bytes(weights("segnet", block, SEGNET, {}))
    for f in ("evaluate.py", "scorers.py"):
        shutil.copyfile(HERE / "upstream" / f, up / f)
    write_exec(up / "evaluate.sh", (HERE / "upstream/evaluate.sh").read_text())
    (up / "public_test_video_names.txt").write_text("0.mkv\n")
    (up / "comma_lab_profile").write_text(PROFILE.name + "\n")
    (up / "pyproject.toml").write_text(PYPROJECT)

    copy = work / "submissions/copy"
    (copy / "runtime").mkdir(parents=True)
    write_exec(copy / "runtime/inflate.sh", INFLATE_DIRECT)
    shutil.copyfile(HERE / "samples/copy_inflate.py", copy / "runtime/inflate.py")
    write_zip(copy / "archive.zip", {"0.mkv": (up / "videos/0.mkv").read_bytes()})

    half = work / "submissions/half"
    (half / "runtime/lib").mkdir(parents=True)
    write_exec(half / "runtime/inflate.sh", INFLATE_MODULE)
    shutil.copyfile(HERE / "samples/half_inflate.py", half / "runtime/inflate.py")
    (half / "runtime/lib/libhalf.so.1.0.0").write_bytes(b"\x7fELF placeholder: a versioned library\n")
    os.symlink("libhalf.so.1.0.0", half / "runtime/lib/libhalf.so.1")
    encode(np.ascontiguousarray(clip[:, ::2, ::2, :]), work / "half.mkv", crf=36)
    write_zip(half / "archive.zip", {"0.mkv": (work / "half.mkv").read_bytes()})
    (work / "half.mkv").unlink()
    build_sweep(work, clip)
    if dest.exists():
        dest.rmdir()
    os.rename(work, dest)
    return dest
