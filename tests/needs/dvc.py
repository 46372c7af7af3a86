"""DVC in a clone of the working tree: the demo pipeline run once, and the helpers to run more."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
ENV.pop("PROV_STORE", None)


def sh(*cmd, cwd, check=True):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def clone_worktree(dest: Path) -> Path:
    """The working tree as git would commit it (tracked and untracked, minus ignored), as a new repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if not os.path.lexists(src):
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / f)
        else:
            shutil.copy2(src, dest / f)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        sh(*cmd, cwd=dest)
    return dest


@pytest.fixture(scope="session")
def demo_lab(tmp_path_factory):
    """The demo pipeline (`dvc repro` in a clone of the working tree), run once for test_dvc and
    test_notebook: the sweep's replays are the slow part, so they are paid for once."""
    pytest.importorskip("torch")
    if not DVC.exists():
        pytest.skip("dvc is not installed in the environment")
    base = tmp_path_factory.mktemp("dvc")
    repo = clone_worktree(base / "repo")
    sh(DVC, "remote", "add", "--local", "-f", "-d", "test", str(base / "remote"), cwd=repo)
    r = sh(DVC, "repro", cwd=repo)
    return {"base": base, "repo": repo, "first": r.stdout}
