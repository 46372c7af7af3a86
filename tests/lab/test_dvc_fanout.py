"""Issue 17, item 5: `dvc repro` with `engine: ray` fans the replay stages out. DVC runs stages one
at a time, so the first replay stage runs one Ray batch of every submission whose result is not at
hand, and the later stages take theirs. Real DVC, a real embedded Ray, in a clone of the working tree."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import prov_json
from needs.dvc import DVC, ENV, clone_worktree, sh

pytest.importorskip("torch")
pytest.importorskip("ray")
if not DVC.exists():
    pytest.skip("dvc is not installed in the environment", allow_module_level=True)
RUN_DESCRIBING = ("timings", "created_at")


def ran(out: str) -> list[str]:
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]


def comparable(path: Path) -> dict:
    doc = json.loads(path.read_text())
    for k in RUN_DESCRIBING:
        doc.pop(k)
    return doc


@pytest.fixture
def ray_lab(tmp_path, monkeypatch):
    repo = clone_worktree(tmp_path / "repo")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("\nengine: local\n", "\nengine: ray\n"))
    short = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's Unix sockets need a short path
    for k, v in {"RAY_TMPDIR": str(short), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
        monkeypatch.setitem(ENV, k, v)
    ENV.pop("RAY_ADDRESS", None)
    yield repo
    shutil.rmtree(short, ignore_errors=True)


def test_dvc_repro_fans_the_replays_out_and_matches_local(ray_lab):
    repo = ray_lab
    r = sh(DVC, "repro", "replay@copy", "replay@half", cwd=repo)
    assert sorted(ran(r.stdout)) == ["miniature", "replay@copy", "replay@half"], r.stdout
    out = r.stdout + r.stderr
    n = len(yaml.safe_load((repo / "params.yaml").read_text())["submissions"])
    assert out.count(f"fan-out: {n} replay(s) as Ray tasks at once") == 1, out  # one batch, at the first stage
    assert out.count("taken from the fan-out") == 1 and " failed: " not in out, out  # the second stage
    # every other replay stage takes its result; nothing replays twice
    r = sh(DVC, "repro", cwd=repo)
    out = r.stdout + r.stderr
    assert "fan-out:" not in out and out.count("taken from the fan-out") == n - 2, out
    assert {"release", "verify", "site"} <= set(ran(r.stdout))
    assert json.loads((repo / "evidence/verify.json").read_text())["ok"]
    # a stage's outputs are what the local engine writes, but for the fields that describe the run
    local = repo / "local-half"
    prov_json("lab", "replay", "half", "--submissions", repo / "submissions", "--upstream",
              repo / "evidence/miniature/upstream", "--out", local, "--metrics", repo / "local-half.json",
              "--engine", "local", cwd=repo)
    assert comparable(repo / "evidence/replays/half/record.json") == comparable(local / "record.json")
    assert prov_json("fsck", store=repo / "evidence/replays/half/store")["ok"]
    assert prov_json("log", "verify", store=repo / "evidence/replays/half/store")["size"] == 1
    # a changed submission: its stage alone runs, and fans out alone
    archive = repo / "submissions/half/archive.zip"
    data = bytearray(archive.read_bytes())
    data[10] ^= 0x01  # the zip header's timestamp: same content, other archive bytes
    archive.write_bytes(bytes(data))
    r = sh(DVC, "repro", cwd=repo)
    out = r.stdout + r.stderr
    assert ran(r.stdout) == ["replay@half", "release", "verify", "site"], r.stdout
    assert "fan-out: 1 replay(s) as Ray tasks at once: half" in out, out
