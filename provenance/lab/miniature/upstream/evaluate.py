"""Miniature evaluator: the official CLI and report format, small scorers.

Decodes the original clip with PyAV, reads <submission>/inflated/<base>.raw (uint8 RGB,
N x H x W x 3, no header), scores frame pairs, and writes report.txt.
"""

import argparse
import math
import os
from pathlib import Path

import av
import numpy as np
import torch

from scorers import PoseNet, SegNet, load

HERE = Path(__file__).resolve().parent


def decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--submission-dir", required=True)
    ap.add_argument("--uncompressed-dir", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--video-names-file", default=str(HERE / "public_test_video_names.txt"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--prefetch-queue-depth", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.num_threads)
    dev = torch.device(a.device)
    pose = load(PoseNet, HERE / "models/posenet.safetensors").to(dev)
    seg = load(SegNet, HERE / "models/segnet.safetensors").to(dev)
    sub = Path(a.submission_dir)
    names = [n.strip() for n in Path(a.video_names_file).read_text().splitlines() if n.strip()]
    pose_d, seg_d, samples = 0.0, 0.0, 0
    for name in names:
        orig = decode(Path(a.uncompressed_dir) / name)
        n, h, w, _ = orig.shape
        raw = np.fromfile(sub / "inflated" / (os.path.splitext(name)[0] + ".raw"), dtype=np.uint8)
        if raw.size != orig.size:
            raise SystemExit(f"{name}: inflated output has {raw.size} bytes, expected {orig.size}")
        recon = raw.reshape(n, h, w, 3)
        for start in range(0, n - 1, 2 * a.batch_size):
            idx = range(start, min(start + 2 * a.batch_size, n - n % 2), 2)
            o = torch.from_numpy(np.stack([orig[i:i + 2] for i in idx])).to(dev).float() / 255
            r = torch.from_numpy(np.stack([recon[i:i + 2] for i in idx])).to(dev).float() / 255
            # (B, 2, H, W, 3) -> (B, 6, H, W) for pose; last frame (B, 3, H, W) for seg
            op, rp = [x.permute(0, 1, 4, 2, 3).reshape(x.shape[0], 6, h, w) for x in (o, r)]
            with torch.no_grad():
                pose_d += float(((pose(op)[:, :6] - pose(rp)[:, :6]) ** 2).mean(dim=1).sum())
                os_, rs = [seg(x[:, 1].permute(0, 3, 1, 2)).argmax(dim=1) for x in (o, r)]
                seg_d += float((os_ != rs).float().mean(dim=(1, 2)).sum())
            samples += len(idx)
    posenet, segnet = pose_d / samples, seg_d / samples
    size = (sub / "archive.zip").stat().st_size
    uncompressed = sum(p.stat().st_size for p in Path(a.uncompressed_dir).rglob("*") if p.is_file())
    rate = size / uncompressed
    score = 100 * segnet + math.sqrt(posenet * 10) + 25 * rate
    config = {"batch_size": a.batch_size, "device": a.device, "num_threads": a.num_threads,
              "prefetch_queue_depth": a.prefetch_queue_depth, "report": a.report, "seed": a.seed,
              "submission_dir": a.submission_dir, "uncompressed_dir": a.uncompressed_dir,
              "video_names_file": a.video_names_file}
    lines = ["=== Evaluation config ==="] + [f"  {k}: {v}" for k, v in sorted(config.items())]
    lines += [f"=== Evaluation results over {samples} samples ===",
              f"  Average PoseNet Distortion: {posenet:.8f}",
              f"  Average SegNet Distortion: {segnet:.8f}",
              f"  Submission file size: {size:,} bytes",
              f"  Original uncompressed size: {uncompressed:,} bytes",
              f"  Compression Rate: {rate:.8f}",
              f"  Final score: 100*segnet_dist + √(10*posenet_dist) + 25*rate = {score:.2f}"]
    text = "\n".join(lines) + "\n"
    Path(a.report).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
