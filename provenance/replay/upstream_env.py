"""The upstream's own Python: a venv built from the dependencies its pyproject.toml declares (as
entrants run `uv sync --group cpu`), holding nothing of comma-lab, for `prov replay --python`.

The requirements are the project's dependencies plus one dependency group's. Where the upstream
leaves a package unpinned, the pin that this machine's package index can satisfy applies (the
index these machines reach has no CPU build of torchvision; the CUDA builds of torch 2.14.1 and
torchvision 0.29.1 run on CPU); `--pin` overrides any of them. prov-env.json, written last, says
what was asked for and what was installed: a folder without it is not an environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Callable

from provenance.core.errors import MissingEnvironment, ProvError
from provenance.core.files import remove_tree
from provenance.replay import upstream as upstream_mod

ENV_FILE = "prov-env.json"
INDEX_PINS = {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def _name(req: str) -> str:
    m = _NAME.match(req)
    if not m:
        raise ProvError(f"pyproject.toml: {req!r} is not a requirement")
    return m.group(1).lower().replace("_", "-").replace(".", "-")


def requirements(pyproject: bytes, group: str | None, pins: dict[str, str]) -> list[str]:
    """The project's dependencies and the group's, each unpinned one given the index's pin, --pin last."""
    try:
        doc = tomllib.loads(pyproject.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ProvError(f"pyproject.toml: not TOML ({e})") from None
    reqs = list(doc.get("project", {}).get("dependencies", []))
    groups = doc.get("dependency-groups", {})
    if group is not None:
        if group not in groups:
            raise ProvError(f"--group {group}: the upstream declares {', '.join(sorted(groups)) or 'no groups'}")
        reqs += [r for r in groups[group] if isinstance(r, str)]  # an include-group table is not followed
    out: dict[str, str] = {}
    for r in reqs:
        name = _name(r)
        bare = _NAME.match(r).group(2).strip() == ""
        out[name] = INDEX_PINS.get(name, r) if bare else r
    for name, spec in pins.items():
        out[_name(name)] = spec
    return [out[k] for k in sorted(out)]


def parse_pins(specs: tuple[str, ...]) -> dict[str, str]:
    pins = {}
    for spec in specs:
        if "==" not in spec:
            raise ProvError(f"--pin {spec}: give NAME==VERSION")
        pins[_name(spec)] = spec.strip()
    return pins


PACKAGES = ("import json; from importlib import metadata; "
            "print(json.dumps({d.metadata['Name'].lower(): d.version for d in metadata.distributions()}))")


def build(store, upstream_spec: str | Path, out: str | Path, group: str | None = "cpu",
          pins: dict[str, str] | None = None, base_python: str | None = None,
          say: Callable[[str], None] = lambda m: None) -> dict:
    """Build the venv at OUT (it must not exist or be empty); on any failure nothing is left there."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ProvError(f"--out {out}: exists and is not empty")
    up_digest, _ = upstream_mod.obtain(store, upstream_spec)
    with tempfile.TemporaryDirectory(prefix="prov-upstream-env-") as tmp:
        upstream_mod.export_read_only(store, up_digest, Path(tmp) / "up")
        pyproject = Path(tmp) / "up" / "pyproject.toml"
        if not pyproject.is_file():
            raise ProvError(f"upstream {up_digest.sha256[:12]}: no pyproject.toml to take its dependencies from")
        reqs = requirements(pyproject.read_bytes(), group, pins or {})
    base = base_python or getattr(sys, "_base_executable", sys.executable)
    made = not out.exists()
    try:
        say(f"creating a venv at {out} from {base}")
        _run([base, "-m", "venv", "--without-pip", str(out)], "python -m venv")
        python = out / "bin" / "python"
        say(f"installing {len(reqs)} requirements with pip: {' '.join(reqs)}")
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-input",
              "--disable-pip-version-check", "--no-warn-script-location", *reqs], "pip install")
        r = subprocess.run([str(python), "-I", "-c", PACKAGES], capture_output=True, text=True)
        packages = dict(sorted(json.loads(r.stdout).items()))
        doc = {"upstream": up_digest.sha256, "group": group, "requirements": reqs, "packages": packages,
               "python": subprocess.run([str(python), "-I", "-c", "import platform; print(platform.python_version())"],
                                        capture_output=True, text=True).stdout.strip()}
        if "comma-lab" in packages:
            raise ProvError("the upstream's requirements pulled in comma-lab: the evaluator's environment must not hold it")
        tmp_file = out / f".{ENV_FILE}.{os.getpid()}"
        tmp_file.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_file, out / ENV_FILE)
        return doc
    except BaseException:
        if made:
            remove_tree(out)
        else:
            for p in list(out.iterdir()):
                remove_tree(p)
        raise


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("WARNING: Location")]
        raise MissingEnvironment(f"{what} failed (exit {r.returncode}): {(lines or ['no message'])[-1][:300]}")
