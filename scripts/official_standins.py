"""Stand-ins for the official upstream's git-LFS files, for tests and demos only: NOT the contest's
weights or clip. Run with the upstream's own Python (`prov upstream env`), in a writable copy of
the official tree whose LFS files are pointers:

    OFFENV/bin/python scripts/official_standins.py UPSTREAM_DIR [--frames 20]

- models/posenet.safetensors and models/segnet.safetensors: the state dicts of the upstream's own
  modules.DistortionNet as its constructors initialise them under a fixed seed (every tensor name,
  shape and dtype evaluate.py loads), labelled in their safetensors metadata;
- videos/0.mkv: FRAMES frames at the official geometry (1164x874), HEVC (libx265) in Matroska like
  the official clip, a seeded synthetic road scene, labelled in its container metadata;
- STAND-INS.json: the label, the frame count and each file's sha256. A replay against these fails
  `evaluator_pinned` naming each file ("stand-in: not the pinned oid"): its grade is capped at B.
"""

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

POSE_GAIN = 1e5
LABEL = ("comma-lab stand-in for a git-LFS file of the official upstream: made for tests and demos, not "
         "the contest's weights or clip; a replay against it can never bear a score")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights(up: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, str(up))
    import modules  # the upstream's own: the names and shapes are exactly what it loads
    torch.manual_seed(seed)
    net = modules.DistortionNet().eval()
    for name, part in (("posenet", net.posenet), ("segnet", net.segnet)):
        sd = {k: v.detach().contiguous().clone() for k, v in part.state_dict().items()}
        if name == "posenet":  # freshly initialised, the pose head barely moves: scaled so distortion shows
            sd["hydra.final_layer.pose.weight"] *= POSE_GAIN
        save_file(sd, str(up / "models" / f"{name}.safetensors"), metadata={"comma-lab": LABEL})


def clip(up: Path, frames: int, seed: int) -> None:
    import av
    import numpy as np
    w, h = 1164, 874
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    horizon = h * 2 // 5
    texture = rng.integers(-6, 7, size=(h, w), dtype=np.int16)
    path = up / "videos" / "0.mkv"
    with av.open(str(path), "w", format="matroska", options={"fflags": "+bitexact"}) as c:
        c.metadata["title"] = LABEL
        s = c.add_stream("libx265", rate=20)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "28", "preset": "ultrafast",
                     "x265-params": "pools=none:frame-threads=1:info=0:log-level=error"}
        for t in range(frames):
            img = np.zeros((h, w, 3), np.int16)
            sky = y < horizon
            img[..., 0] = np.where(sky, 90 + y // 8, 70)
            img[..., 1] = np.where(sky, 140 + y // 8, 72)
            img[..., 2] = np.where(sky, 220 - y // 16, 75)
            depth = np.clip(y - horizon, 1, None)
            road = ~sky & (np.abs(x - w / 2) < depth * w / (2 * (h - horizon)) + 30)
            img[~sky & ~road] = (60, 110, 50)
            dash = road & (np.abs(x - w / 2) < 4 + depth // 30) & (((depth * 3 + t * 24) // 120) % 2 == 0)
            img[dash] = (230, 230, 210)
            cx = int(w / 2 + 250 * math.sin(t / 8))
            img[(np.abs(x - cx) < 70) & (np.abs(y - (horizon + 200)) < 45)] = (200, 30, 40)
            img += texture[..., None]
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("upstream", type=Path, help="a writable copy of the official tree (LFS files as pointers)")
    ap.add_argument("--frames", type=int, default=20, help="frames of the stand-in clip (samples = frames / 2)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    up = a.upstream
    if not (up / "modules.py").is_file() or not (up / "evaluate.py").is_file():
        sys.exit(f"official_standins: {up}: not the official upstream (no modules.py / evaluate.py)")
    if a.frames < 2 or a.frames % 2:
        sys.exit("official_standins: --frames must be an even number >= 2")
    (up / "models").mkdir(exist_ok=True)
    (up / "videos").mkdir(exist_ok=True)
    weights(up, a.seed)
    clip(up, a.frames, a.seed)
    files = {rel: sha256(up / rel) for rel in ("models/posenet.safetensors", "models/segnet.safetensors", "videos/0.mkv")}
    (up / "STAND-INS.json").write_text(json.dumps({"label": LABEL, "frames": a.frames, "files": files},
                                                  indent=2, sort_keys=True) + "\n")
    print(f"stand-ins written to {up}: {a.frames} frames; " + ", ".join(f"{k} {v[:12]}" for k, v in files.items()))


if __name__ == "__main__":
    main()
