"""The official repository's real runtimes, each stored: its tree digest, bytes, custody figure and
binaries, as a Markdown table (docs/OFFICIAL_RUNTIMES.md is this script's output; a test keeps it true).

    .venv/bin/python scripts/official_runtimes.py [--tar TARBALL] [--out docs/OFFICIAL_RUNTIMES.md]
"""

import argparse
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from provenance.contest import rules
from provenance.records.adjudicate import runtime_information
from provenance.store.objects import Store

REPO = Path(__file__).resolve().parent.parent
TAR = REPO.parent / "shared" / "official" / "official-d0013db.tar.gz"


def rows(tar: Path) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="prov-runtimes-") as tmp:
        with tarfile.open(tar) as t:
            t.extractall(Path(tmp) / "official", filter="tar")
        store = Store(Path(tmp) / "store", create=True)
        out = []
        for sub in sorted((Path(tmp) / "official" / "submissions").iterdir()):
            if not sub.is_dir():
                continue
            d = store.add_as(sub, "tree", "runtime")
            info, top = runtime_information(store, d.blake3, rules.OFFICIAL)
            total, files, binaries = 0, 0, []
            for top_dir, dirs, names in os.walk(sub):
                dirs.sort()
                for n in sorted(names):
                    p = Path(top_dir) / n
                    rel = p.relative_to(sub).as_posix()
                    if p.is_symlink():
                        target = os.readlink(p)
                        if not p.exists():
                            binaries.append(f"{rel} -> {target} (dangling)")
                        continue
                    files += 1
                    total += p.stat().st_size
                    with open(p, "rb") as f:
                        if not rules.is_text(f.read(8192)):
                            binaries.append(f"{rel} ({p.stat().st_size:,} B)")
            out.append({"name": sub.name, "sha256": d.sha256, "files": files, "bytes": total, "custody": info,
                        "largest": top[0][0] if top else "", "binaries": binaries})
        return out


def markdown(tar: Path, table: list[dict]) -> str:
    allowance = rules.OFFICIAL.custody_allowance
    lines = [
        "# The official repository's runtimes",
        "",
        f"Every entry under `submissions/` of `{tar.name}` (commit d0013db of the official repository), stored",
        "as a runtime tree. *custody* is the runtime's information: zlib level 9 over its canonical listing and",
        f"every file's bytes (`runtime_custody`; the official allowance is {allowance:,} bytes). *binaries* are the",
        "files that are not text, and links whose target is absent (the tree at hand lacks the five binaries",
        "the repository ships: two ffmpeg builds and two SVT-AV1 libraries, see shared/official). Regenerate with",
        "`.venv/bin/python scripts/official_runtimes.py` (tests/contest/test_custody.py checks this file is current).",
        "",
        "| entry | prov-tree-v1 sha256 | files | bytes | custody | largest contributor | binaries |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['name']} | `{r['sha256']}` | {r['files']} | {r['bytes']:,} | {r['custody']:,} | "
                     f"{r['largest']} | {'; '.join(r['binaries']) or '-'} |")
    figures = sorted(r["custody"] for r in table)
    lines += ["", f"{len(table)} runtimes; custody {figures[0]:,} to {figures[-1]:,} bytes "
                  f"(median {figures[len(figures) // 2]:,}); every one within the allowance: "
                  f"{'yes' if figures[-1] <= allowance else 'NO'}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tar", type=Path, default=TAR)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "OFFICIAL_RUNTIMES.md")
    a = ap.parse_args()
    if not a.tar.is_file():
        sys.exit(f"official_runtimes: {a.tar}: the official tree's tarball is not there")
    text = markdown(a.tar, rows(a.tar))
    a.out.write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
