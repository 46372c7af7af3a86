import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROV = str(Path(sys.executable).parent / "prov")
REPO = Path(__file__).resolve().parent.parent


def run_prov(*args, store=None, check=None, input=None, env=None, **kw):
    e = dict(os.environ)
    e.pop("PROV_STORE", None)
    if store is not None:
        e["PROV_STORE"] = str(store)
    if env:
        e.update(env)
    r = subprocess.run([PROV, *map(str, args)], capture_output=True, env=e, input=input, **kw)
    r.out = r.stdout.decode("utf-8", "replace")
    r.err = r.stderr.decode("utf-8", "replace")
    if check is not None:
        assert r.returncode == check, f"prov {' '.join(map(str, args))} -> {r.returncode}\n{r.out}\n{r.err}"
    return r


def inproc(*args, store=None, check=0):
    """Set-up steps in this process (CliRunner): the same commands without a Python start-up each."""
    from click.testing import CliRunner
    from provenance.cli.app import cli
    env = {"PROV_STORE": str(store)} if store else {}
    r = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    assert check is None or r.exit_code == check, (args, r.exit_code, r.output)
    return r


def prov_json(*args, **kw):
    r = run_prov(*args, "--json", check=kw.pop("check", 0), **kw)
    return json.loads(r.out)


def make_tree(root: Path, spec: dict) -> Path:
    """spec: name -> bytes (file) | ('exec', bytes) | ('link', target) | dict (subdir)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, v in spec.items():
        p = root / name
        if isinstance(v, dict):
            make_tree(p, v)
        elif isinstance(v, tuple) and v[0] == "link":
            os.symlink(v[1], p)
        elif isinstance(v, tuple) and v[0] == "exec":
            p.write_bytes(v[1])
            p.chmod(0o755)
        else:
            p.write_bytes(v)
            p.chmod(0o644)
    return root


RUNTIME_SPEC = {
    "inflate.sh": ("exec", b"#!/bin/sh\necho inflate\n"),
    "model.bin": bytes(range(256)) * 40,
    "lib": {"libSvtAv1Enc.so.2.3.0": b"\x7fELF fake", "libSvtAv1Enc.so.2": ("link", "libSvtAv1Enc.so.2.3.0")},
    "empty": {},
    "src": {"codec.py": b"print('x')\n", "deep": {"up.txt": ("link", "../codec.py")}},
}


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def runtime(tmp_path):
    return make_tree(tmp_path / "runtime", RUNTIME_SPEC)


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """The miniature contest, built once per session (needs torch and PyAV)."""
    pytest.importorskip("torch")
    pytest.importorskip("av")
    from provenance.lab.miniature.build import build
    return build(tmp_path_factory.mktemp("mini") / "contest")


def sample(mini, name):
    return mini / "submissions" / name / "archive.zip", mini / "submissions" / name / "runtime"


@pytest.fixture(scope="session")
def demo_lab(tmp_path_factory):
    """The demo pipeline (`dvc repro` in a clone of the working tree), run once for test_dvc and
    test_notebook: the sweep's replays are the slow part, so they are paid for once."""
    from test_dvc import DVC, clone_worktree, sh  # skips (module-level) where dvc or torch is missing
    base = tmp_path_factory.mktemp("dvc")
    repo = clone_worktree(base / "repo")
    sh(DVC, "remote", "add", "--local", "-f", "-d", "test", str(base / "remote"), cwd=repo)
    r = sh(DVC, "repro", cwd=repo)
    return {"base": base, "repo": repo, "first": r.stdout}
