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
import tomllib
from pathlib import Path
from typing import Callable

from provenance.core.errors import MissingEnvironment, ProvError, terminate_on_signals
from provenance.core.files import remove_tree
from provenance.replay import upstream as upstream_mod

ENV_FILE = "prov-env.json"
INDEX_PINS = {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _name(req: str) -> str:
    m = _NAME.match(req)
    if not m:
        raise ProvError(f"pyproject.toml: {req!r} is not a requirement")
    return _normalize(m.group(1))


def requirements(pyproject: bytes, group: str | None, pins: dict[str, str]) -> list[str]:
    """The project's dependencies and the group's (an include-group followed), each bare one given the
    index's pin; --pin replaces every entry of its name. Entries with markers or extras are kept as
    written; a direct reference (a URL) is refused: only the index's wheels are installed."""
    try:
        doc = tomllib.loads(pyproject.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ProvError(f"pyproject.toml: not TOML ({e})") from None
    project, groups = doc.get("project", {}), doc.get("dependency-groups", {})
    if not isinstance(project, dict) or not isinstance(groups, dict):
        raise ProvError("pyproject.toml: [project] and [dependency-groups] must be tables")

    def of_group(name: str, seen: tuple[str, ...]) -> list:
        if name not in groups:
            raise ProvError(f"--group {name}: the upstream declares {', '.join(sorted(groups)) or 'no groups'}")
        if name in seen:
            raise ProvError(f"pyproject.toml: dependency group {name} includes itself")
        if not isinstance(groups[name], list):
            raise ProvError(f"pyproject.toml: dependency group {name} is not a list")
        out = []
        for r in groups[name]:
            out += of_group(r["include-group"], seen + (name,)) if isinstance(r, dict) and "include-group" in r else [r]
        return out

    deps = project.get("dependencies", [])
    if not isinstance(deps, list):
        raise ProvError("pyproject.toml: project.dependencies is not a list")
    reqs = deps + (of_group(group, ()) if group is not None else [])
    out = []
    for r in reqs:
        if not isinstance(r, str):
            raise ProvError(f"pyproject.toml: {r!r} is not a requirement")
        if "@" in r.split(";")[0] or "://" in r:
            raise ProvError(f"pyproject.toml: {r!r} is a direct reference; only the index's wheels are installed")
        name = _name(r)
        if name in pins:
            continue
        out.append(INDEX_PINS.get(name, r) if _NAME.match(r).group(2).strip() == "" else r)
    out += [pins[k] for k in sorted(pins)]
    return sorted(dict.fromkeys(out), key=lambda r: (_name(r), r))


def parse_pins(specs: tuple[str, ...]) -> dict[str, str]:
    pins = {}
    for spec in specs:
        if "==" not in spec:
            raise ProvError(f"--pin {spec}: give NAME==VERSION")
        pins[_name(spec)] = spec.strip()
    return pins


def build(store, upstream_spec: str | Path, out: str | Path, group: str | None = "cpu",
          pins: dict[str, str] | None = None, base_python: str | None = None,
          say: Callable[[str], None] = lambda m: None) -> dict:
    """Build the venv at OUT (it must not exist or be empty); on any failure nothing is left there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProvError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        raise ProvError(f"--out {out}: exists and is not empty")
    up_digest, _ = upstream_mod.obtain(store, upstream_spec)
    declared = upstream_mod.read_files(store, up_digest, ("pyproject.toml", "uv.lock"))
    if "pyproject.toml" not in declared:
        raise ProvError(f"upstream {up_digest.sha256[:12]}: no pyproject.toml to take its dependencies from")
    reqs = requirements(declared["pyproject.toml"], group, pins or {})
    lock = declared.get("uv.lock")
    base = base_python or getattr(sys, "_base_executable", sys.executable)
    made = not out.exists()
    with terminate_on_signals():  # SIGTERM and SIGHUP clean up as Ctrl-C does
        return _build(out, made, base, reqs, lock, up_digest, group, say)


def _build(out, made, base, reqs, lock, up_digest, group, say) -> dict:
    try:
        say(f"creating a venv at {out} from {base}")
        _run([base, "-m", "venv", "--without-pip", str(out)], "python -m venv")
        python = out / "bin" / "python"
        say(f"installing {len(reqs)} requirements with pip: {' '.join(reqs)}")
        # wheels only: an sdist's build would run the upstream's code here, outside any sandbox
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-input", "--only-binary", ":all:",
              "--disable-pip-version-check", "--no-warn-script-location", *reqs], "pip install")
        # listed by the replay's own probe, so prov-env.json and every record name the packages alike
        from provenance.replay.run import PROBE
        r = subprocess.run([str(python), "-I", "-c", PROBE, "cpu"], capture_output=True, text=True)
        try:
            seen = json.loads(r.stdout.strip().splitlines()[-1])
            packages, version = seen["packages"], seen["python"]
        except (ValueError, IndexError, KeyError, TypeError):
            raise MissingEnvironment(f"{out}: the new environment does not list its packages (exit {r.returncode})") from None
        doc = {"upstream": up_digest.sha256, "group": group, "requirements": reqs, "packages": packages,
               "python": version, "lock": lock_differences(lock, packages)}
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


def lock_differences(lock: bytes | None, packages: dict[str, str]) -> dict:
    """What the upstream's uv.lock says beside what was installed: this machine's index does not hold
    every locked version, so the environment is the declared one, not the locked one, and says so."""
    if lock is None:
        return {"file": None}
    try:
        doc = tomllib.loads(lock.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {"file": "uv.lock", "readable": False}
    locked: dict[str, set[str]] = {}
    for pkg in doc.get("package", []):
        if isinstance(pkg, dict) and "name" in pkg and "version" in pkg:
            locked.setdefault(_normalize(str(pkg["name"])), set()).add(str(pkg["version"]))
    differs = {name: {"locked": sorted(locked[name]), "installed": version}
               for name, version in packages.items() if name in locked and version not in locked[name]}
    return {"file": "uv.lock", "followed": not differs, "differs": differs}


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("WARNING: Location")]
        raise MissingEnvironment(f"{what} failed (exit {r.returncode}): {(lines or ['no message'])[-1][:300]}")
