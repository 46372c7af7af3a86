"""Shared helpers: time whole commands, alternating tools in one run; report medians and ratios."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PROV = str(VENV_BIN / "prov")
OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "out"))
# As an installed wheel is: compiled. An editable checkout under PYTHONDONTWRITEBYTECODE would
# otherwise recompile every edited module on every command we time.
subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parent.parent / "provenance")],
               check=True, stdout=subprocess.DEVNULL)


LAST_CPU = [0.0, 0.0]  # user and system CPU seconds of the last run() (its processes and theirs)


def run(cmd, setup=None, **kw) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one command, its set-up excluded."""
    if setup:
        setup()
    # each measurement in a fresh helper so RUSAGE_CHILDREN.maxrss is this command's own
    code = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "r=subprocess.run(sys.argv[2:],stdout=subprocess.DEVNULL,shell=sys.argv[1]=='1');"
            "w=time.perf_counter()-t;"
            "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
            "print(json.dumps([w,u.ru_maxrss,r.returncode,u.ru_utime,u.ru_stime]))")
    shell = isinstance(cmd, str)
    out = subprocess.run([sys.executable, "-c", code, "1" if shell else "0", *([cmd] if shell else cmd)],
                         capture_output=True, text=True, check=True, **kw)
    import json
    wall, rss_kb, rc, user, sys_ = json.loads(out.stdout)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {cmd}\n{out.stderr}")
    LAST_CPU[:] = [user, sys_]
    return wall, rss_kb / 1024


def compare(tools: dict, rounds: int, setup: dict | None = None) -> dict:
    """Run each tool `rounds` times, interleaved, so machine noise hits all alike."""
    res = {k: [] for k in tools}
    for _ in range(rounds):
        for name, cmd in tools.items():
            res[name].append(run(cmd, (setup or {}).get(name)))
    return {k: {"median_s": statistics.median(w for w, _ in v), "min_s": min(w for w, _ in v),
                "peak_rss_mib": max(r for _, r in v),
                "runs": [round(w, 4) for w, _ in v]} for k, v in res.items()}


def report(title: str, res: dict, base: str) -> None:
    print(f"\n## {title}")
    b = res[base]["median_s"]
    for k, v in res.items():
        print(f"  {k:28s} median {v['median_s']:7.3f} s (ratio {v['median_s'] / b:5.2f})  "
              f"min {v['min_s']:7.3f} s (ratio {v['min_s'] / res[base]['min_s']:5.2f})  "
              f"rss {v['peak_rss_mib']:6.1f} MiB")


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def drop(path: Path):
    return lambda: shutil.rmtree(path, ignore_errors=True)
