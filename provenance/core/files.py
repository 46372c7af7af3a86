"""Atomic file writes: temp file in the same directory, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os

from provenance.core.errors import ProvError


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes (an OSError as raised), without pathlib: the verify path does not import it."""
    with open(path, "rb") as f:
        return f.read()


def read_input(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """A file the user named, whole: ProvError naming it (exit 2) where it cannot be read, or holds
    more than `limit` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as e:
        raise ProvError(f"{os.fspath(path)}: {e.strerror}") from None
    if limit is not None and len(data) > limit:
        raise ProvError(f"{os.fspath(path)}: larger than {limit} bytes")
    return data


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory."""
    path = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: str | os.PathLike, obj) -> None:
    import json  # here: the verify path reads JSON (core.canonical) and writes it only with --state
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory tree that a sandboxed program made: at any depth (by directory fds, so
    no path grows past PATH_MAX and nothing recurses), without following links, making locked
    directories ours first. Best effort: never raises."""
    import stat
    top = os.fsencode(path)
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            os.unlink(top)
            return
        os.chmod(top, 0o700)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    names: list[bytes] = []  # the path from top to fd, by name
    try:
        while True:
            sub = None
            try:
                with os.scandir(fd) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            sub = os.fsencode(e.name)
                            break
                        try:
                            os.unlink(e.name, dir_fd=fd)
                        except OSError:
                            pass
            except OSError:
                pass
            if sub is not None:
                try:
                    os.chmod(sub, 0o700, dir_fd=fd)
                    child = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:  # cannot enter: try to remove it as it is, and move on
                    try:
                        os.rmdir(sub, dir_fd=fd)
                    except OSError:
                        return
                    continue
                os.close(fd)
                names.append(sub)
                fd = child
                continue
            if not names:
                break
            parent = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                return
    finally:
        os.close(fd)
    try:
        os.rmdir(top)
    except OSError:
        pass
