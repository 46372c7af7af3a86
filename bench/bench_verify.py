"""Issue #4 benchmark: whole-process `prov verify` on a ~180 KB archive and a 6-file runtime,
beside `openssl dgst -sha256` of the same files, in one run.

    .venv/bin/python bench/bench_verify.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, PROV, compare, fresh, report  # noqa: E402

REPORT = """=== Evaluation config ===
  device: cuda
=== Evaluation results over 600 samples ===
  Average PoseNet Distortion: 0.00017231
  Average SegNet Distortion: 0.00067591
  Submission file size: 178,981 bytes
  Original uncompressed size: 37,545,489 bytes
  Compression Rate: 0.00476709
  Final score: 100*segnet_dist + √(10*posenet_dist) + 25*rate = 0.23
"""


def setup(work: Path) -> dict:
    fresh(work)
    env = dict(os.environ, PROV_STORE=str(work / "store"))
    run = lambda *a: subprocess.run([PROV, *map(str, a)], env=env, check=True, capture_output=True, text=True).stdout
    rt = work / "runtime"
    (rt / "lib").mkdir(parents=True)
    (rt / "inflate.sh").write_text("#!/bin/sh\npython -m inflate \"$@\"\n")
    (rt / "inflate.sh").chmod(0o755)
    (rt / "inflate.py").write_text("print('inflate')\n" * 50)
    (rt / "model.bin").write_bytes(os.urandom(40_000))
    (rt / "config.json").write_text('{"a": 1}')
    (rt / "lib/libcodec.so.2.3.0").write_bytes(os.urandom(20_000))
    os.symlink("libcodec.so.2.3.0", rt / "lib/libcodec.so.2")
    archive = work / "archive.zip"
    archive.write_bytes(os.urandom(178_981))
    (work / "report.txt").write_text(REPORT)
    run("key", "generate", "--out", work / "key")
    run("trust", "init", "--release-key", work / "key/key.pub.pem", "--expires", "2099-01-01T00:00:00Z",
        "--out", work / "trust.json")
    rec = json.loads(run("adjudicate", work / "report.txt", "--archive", archive, "--runtime", rt, "--json"))
    run("release", "create", "--record", rec["digest"]["sha256"], "--archive", archive, "--runtime", rt,
        "--name", "bench", "--key", work / "key/key.pem", "--out", work / "manifest.json")
    files = [str(archive)] + [str(p) for p in sorted(rt.rglob("*")) if p.is_file() and not p.is_symlink()]
    return {"prov verify (full)": [PROV, "verify", str(work / "manifest.json"), "--trust", str(work / "trust.json"),
                                   "--archive", str(archive), "--runtime", str(rt)],
            "openssl dgst -sha256 (same files)": ["openssl", "dgst", "-sha256", *files]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    tools = setup(OUT / "verify")
    report("verify a release (180 KB archive, 6-file runtime)", compare(tools, a.rounds),
           "openssl dgst -sha256 (same files)")


if __name__ == "__main__":
    main()
