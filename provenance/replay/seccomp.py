"""No new user namespaces inside the sandbox: a classic-BPF seccomp filter for bwrap --seccomp."""

from __future__ import annotations

_ARCH = {  # AUDIT_ARCH and syscall numbers of unshare, clone, clone3, setns
    "x86_64": (0xC000003E, 272, 56, 435, 308),
    "aarch64": (0xC00000B7, 97, 220, 435, 268),
}
CLONE_NEWUSER = 0x10000000


def seccomp_program() -> bytes | None:
    """unshare/clone with CLONE_NEWUSER and setns fail with EPERM; clone3 with ENOSYS (its flags sit
    in memory a filter cannot read, and libc then falls back to clone); foreign ABIs fail."""
    import platform
    import struct
    spec = _ARCH.get(platform.machine())
    if spec is None:
        return None
    audit, unshare, clone, clone3, setns = spec
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog = [
        (ld, 0, 0, 4),             # 0: arch
        (jeq, 1, 0, audit),        # 1: native ABI -> 3
        (ret, 0, 0, eperm),        # 2
        (ld, 0, 0, 0),             # 3: syscall number
        (jge, 0, 1, 0x40000000),   # 4: x32 ABI -> 5, else 6
        (ret, 0, 0, eperm),        # 5
        (jeq, 0, 1, clone3),       # 6
        (ret, 0, 0, enosys),       # 7
        (jeq, 0, 1, setns),        # 8
        (ret, 0, 0, eperm),        # 9
        (jeq, 1, 0, unshare),      # 10: -> 12
        (jeq, 0, 3, clone),        # 11: neither -> 15
        (ld, 0, 0, 16),            # 12: low word of the first argument (the flags)
        (jset, 0, 1, CLONE_NEWUSER),  # 13
        (ret, 0, 0, eperm),        # 14
        (ret, 0, 0, allow),        # 15
    ]
    return b"".join(struct.pack("<HBBI", *i) for i in prog)
