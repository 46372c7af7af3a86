"""The Python the sandbox's phases run, and what of its installation a phase must see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from provenance.core.errors import ProvError


@dataclass(frozen=True)
class Interpreter:
    """The Python the phases run: ours by default, or the upstream's own environment (`--python`)."""
    executable: str  # as found in the venv's bin (not resolved: resolving it would lose site-packages)
    prefix: str
    base_prefix: str

    @property
    def bin_dir(self) -> str:
        return os.path.dirname(self.executable)

    @property
    def is_venv(self) -> bool:
        return os.path.realpath(self.prefix) != os.path.realpath(self.base_prefix)

    def roots(self) -> list[str]:
        """What the sandbox binds read-only at the same paths for this Python to run (never /usr: bound
        whole): the venv, and of the base installation its bin/ and lib/. A root that is / or holds the
        home, the working directory or the temporary directory (scratch, the store, keys) is refused:
        a Python installed there would show them to every phase."""
        base = os.path.realpath(self.base_prefix)
        roots = {os.path.realpath(self.prefix) if self.is_venv else os.path.join(base, "lib"),
                 os.path.join(base, "bin"), os.path.join(base, "lib"), os.path.dirname(os.path.realpath(self.executable))}
        roots = {r for r in roots if os.path.isdir(r) and not r.startswith("/usr/")}
        guarded = {os.path.realpath(p) for p in (os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir())}
        for r in roots:
            if r == "/" or any(g == r or g.startswith(r.rstrip("/") + "/") for g in guarded):
                raise ProvError(f"--python: its installation at {r} holds the home, working or temporary "
                                "directory: a phase would see them (use a venv elsewhere)")
        return sorted(roots)

    @classmethod
    def current(cls) -> "Interpreter":
        return cls(sys.executable, sys.prefix, sys.base_prefix)

    @classmethod
    def at(cls, path: str | os.PathLike) -> "Interpreter":
        """A venv folder or an interpreter, asked where it lives (in isolated mode: nothing of ours runs)."""
        path = os.path.abspath(path)
        exe = os.path.join(path, "bin", "python") if os.path.isdir(path) else path
        if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            raise ProvError(f"--python {path}: no Python interpreter there (give a venv folder or its bin/python)")
        try:  # -S: no site, so no .pth of that environment runs on the host
            r = subprocess.run([exe, "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.base_prefix))"],
                               capture_output=True, text=True, timeout=60)
            base = json.loads(r.stdout.strip().splitlines()[-1])
            if not isinstance(base, str):
                raise ValueError
        except (ValueError, IndexError, OSError, subprocess.TimeoutExpired):
            raise ProvError(f"--python {path}: does not run as Python") from None
        venv = os.path.dirname(os.path.dirname(exe))  # what site would make sys.prefix: the venv of pyvenv.cfg
        py = cls(exe, venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else base, base)
        py.roots()  # refused here, before anything runs
        return py
