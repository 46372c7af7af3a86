"""Issue #14 benchmark: whole-process `prov verify` against `python -I -c pass` (the same
interpreter's bare start-up: the floor for any Python verifier), and `ssh-keygen -Y verify` of
the same release's SSHSIG (the peer for the signature step), in one run.

    .venv/bin/python bench/bench_judge.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_verify import setup as make_release  # noqa: E402
from common import OUT, PROV, compare, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    work = OUT / "judge"
    tools = make_release(work)
    prov_cmd = tools["prov verify (full)"]
    rel = work / "rel"
    subprocess.run([PROV, "export-checksums", str(work / "manifest.json"), "--runtime", str(work / "runtime"),
                    "--archive", str(work / "archive.zip"), "--out", str(rel)], check=True, capture_output=True)
    subprocess.run([PROV, "trust", "allowed-signers", str(work / "trust.json"), "--out", str(rel / "allowed_signers")],
                   check=True, capture_output=True)
    ident = (rel / "allowed_signers").read_text().split(" ", 1)[0]
    res = compare({
        "python -I -c pass": [sys.executable, "-I", "-c", "pass"],
        "prov verify (full)": prov_cmd,
        "prov verify --no-files": prov_cmd[:5] + ["--no-files"],
        "ssh-keygen -Y verify": f"ssh-keygen -Y verify -f {rel}/allowed_signers -I {ident} -n comma-lab-release "
                                f"-s {rel}/statement.json.sig < {rel}/statement.json",
    }, a.rounds)
    report("prov verify vs the interpreter's bare start-up", res, "python -I -c pass")
    report("the signature step vs OpenSSH", res, "ssh-keygen -Y verify")


if __name__ == "__main__":
    main()
