"""Build the miniature contest deterministically (byte-identical on every machine with the
pinned PyAV): DIR/upstream/ (clip, scorer weights, evaluator) and DIR/submissions/<name>/
(archive.zip + runtime/) for a near-lossless and a lossy sample."""

from __future__ import annotations

import array
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

from provenance.contest.miniature import FRAMES, HEIGHT, PROFILE, WIDTH

HERE = Path(__file__).parent
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def frames() -> np.ndarray:
    """A driving-like clip: sky, a road with moving lane dashes, a car drifting across."""
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


def weights(seed: int, layers: dict[str, list[int]]) -> bytes:
    """Seeded with the stdlib PRNG, so the bytes do not depend on the torch version."""
    rng = random.Random(seed)
    out = {}
    for name, shape in layers.items():
        n = math.prod(shape)
        if name.endswith(".bias"):
            out[name] = (shape, [rng.uniform(-0.1, 0.1) for _ in range(n)])
        else:
            fan_in = math.prod(shape[1:])
            out[name] = (shape, [rng.gauss(0, 1 / math.sqrt(fan_in)) for _ in range(n)])
    return safetensors(out)


POSENET = {"conv1.weight": [16, 6, 5, 5], "conv1.bias": [16], "conv2.weight": [32, 16, 3, 3], "conv2.bias": [32],
           "head.weight": [12, 32], "head.bias": [12]}
SEGNET = {"conv1.weight": [16, 3, 3, 3], "conv1.bias": [16], "conv2.weight": [5, 16, 1, 1], "conv2.bias": [5]}


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
# name -> (downscale factor, x265 crf, upsampling filter in inflate)
SWEEP = {
    "half_crf30": (2, 30, "nearest"),
    "half_crf42": (2, 42, "nearest"),
    "half_bilinear": (2, 36, "bilinear"),
    "quarter_bilinear": (4, 36, "bilinear"),
}
INFLATE_SCALED = """#!/usr/bin/env bash
# inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
set -euo pipefail
exec python "$(dirname "$0")/inflate.py" "$@" {scale} {filter}
"""


def build_sweep(work: Path, clip: np.ndarray) -> None:
    for name, (scale, crf, filt) in SWEEP.items():
        sub = work / "submissions" / name
        (sub / "runtime").mkdir(parents=True)
        write_exec(sub / "runtime/inflate.sh", INFLATE_SCALED.format(scale=scale, filter=filt))
        shutil.copyfile(HERE / "samples/scaled_inflate.py", sub / "runtime/inflate.py")
        tmp = work / f"{name}.mkv"
        encode(np.ascontiguousarray(clip[:, ::scale, ::scale, :]), tmp, crf=crf)
        write_zip(sub / "archive.zip", {"0.mkv": tmp.read_bytes()})
        tmp.unlink()


def build(dest: str | Path) -> Path:
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        from provenance.core.errors import ProvError
        raise ProvError(f"{dest}: exists and is not empty")
    work = dest.parent / f".{dest.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    up = work / "upstream"
    (up / "videos").mkdir(parents=True)
    (up / "models").mkdir()
    encode(frames(), up / "videos/0.mkv")
    clip = decode(up / "videos/0.mkv")
    (up / "models/posenet.safetensors").write_bytes(weights(1, POSENET))
    (up / "models/segnet.safetensors").write_bytes(weights(2, SEGNET))
    for f in ("evaluate.py", "scorers.py"):
        shutil.copyfile(HERE / "upstream" / f, up / f)
    write_exec(up / "evaluate.sh", (HERE / "upstream/evaluate.sh").read_text())
    (up / "public_test_video_names.txt").write_text("0.mkv\n")
    (up / "comma_lab_profile").write_text(PROFILE.name + "\n")

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
