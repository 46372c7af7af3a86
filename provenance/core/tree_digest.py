#!/usr/bin/env python3
"""prov-tree-v1 SHA-256 of a directory (docs/FORMATS.md), with nothing but the Python 3 stdlib.

A judge who trusts none of our code runs this file as published beside a release:

    python3 tree_digest.py runtime/              # print the runtime tree's SHA-256
    python3 tree_digest.py --check statement.json [--archive archive.zip] [--runtime runtime/]
        # compare archive.zip, runtime/ and the score against the signed statement
        # (check statement.json itself first: ssh-keygen -Y verify ... < statement.json)

Symlinks count as their target text and are never followed; the owner exec bit counts;
empty directories count. Like `prov`, it refuses FIFOs, sockets, devices and symlinks that
are absolute or climb above the root. Exit 0 ok, 1 mismatch or refused tree, 2 usage.
This file is self-contained on purpose: copy it, read it, run it with any Python 3.
"""

import hashlib
import json
import math
import os
import stat
import sys


class Refused(Exception):
    pass


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_link(target, depth, where):
    if not target or target.startswith(b"/"):
        raise Refused("%s: symlink target is empty or absolute" % where)
    level = depth
    for part in target.split(b"/"):
        if part == b"..":
            level -= 1
            if level < 0:
                raise Refused("%s: symlink escapes the tree root" % where)
        elif part not in (b"", b"."):
            level += 1


def tree_sha256(path, depth=0):
    """(hex SHA-256 tree digest, total size) of a directory, prov-tree-v1."""
    rows, total = [b"prov-tree-v1 sha256\n"], 0
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        where = full.decode("utf-8", "replace")
        if name in (b".", b"..") or b"\0" in name:
            raise Refused("%s: invalid entry name" % where)
        name.decode("utf-8")  # UnicodeDecodeError: refused below
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            check_link(target, depth, where)
            kind, digest, size = b"link", hashlib.sha256(target).hexdigest(), len(target)
        elif stat.S_ISDIR(st.st_mode):
            kind = b"tree"
            digest, size = tree_sha256(full, depth + 1)
        elif stat.S_ISREG(st.st_mode):
            kind = b"exec" if st.st_mode & stat.S_IXUSR else b"file"
            digest, size = file_sha256(full), st.st_size
        else:
            raise Refused("%s: special file (FIFO, socket or device) not allowed" % where)
        rows.append(b"%s %d %s %s\0" % (kind, size, digest.encode(), name))
        total += size
    return hashlib.sha256(b"".join(rows)).hexdigest(), total


def subjects(statement):
    """{name: (sha256, prov-tree-v1 sha256 or None)} of an in-toto statement's subjects."""
    out = {}
    for s in statement.get("subject", []):
        d = s.get("digest", {})
        out[s.get("name")] = d.get("prov-tree-v1-sha256") or d.get("sha256")
    return out


def check(statement_path, archive, runtime):
    with open(statement_path, "rb") as f:
        st = json.loads(f.read().decode("utf-8"))
    want = subjects(st)
    ok = True
    got = file_sha256(archive)
    same = got == want.get("archive.zip")
    ok &= same
    print("%s: %s sha256 %s" % (archive, "OK" if same else "MISMATCH", got))
    got = tree_sha256(os.fsencode(runtime))[0]
    same = got == want.get("runtime/")
    ok &= same
    print("%s: %s prov-tree-v1 sha256 %s" % (runtime, "OK" if same else "MISMATCH", got))
    sc = st.get("predicate", {}).get("score", {})
    again = 100 * sc["segnet"] + math.sqrt(sc["posenet"] * 10) + 25 * sc["rate"]  # evaluate.py's order
    same = again == sc["canonical"]
    ok &= same
    print("score: %s %r from its components (statement says %r)" % ("OK" if same else "MISMATCH", again,
                                                                     sc["canonical"]))
    return ok


def main(argv):
    try:
        if len(argv) == 1 and not argv[0].startswith("-"):
            if not os.path.isdir(argv[0]):
                print("tree_digest: %s: not a directory" % argv[0], file=sys.stderr)
                return 2
            print(tree_sha256(os.fsencode(argv[0]))[0])
            return 0
        if argv[:1] == ["--check"] and len(argv) >= 2:
            opts = dict(zip(argv[2::2], argv[3::2]))
            if len(argv) % 2 == 0 and not set(opts) - {"--archive", "--runtime"}:
                return 0 if check(argv[1], opts.get("--archive", "archive.zip"), opts.get("--runtime", "runtime")) else 1
    except Refused as e:
        print("tree_digest: refused: %s" % e, file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print("tree_digest: refused: a name is not valid UTF-8", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("tree_digest: error: %s" % e, file=sys.stderr)
        return 2
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
