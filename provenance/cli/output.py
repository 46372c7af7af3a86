"""What commands print that has to be printed without click: `prov verify`'s checklist (the click
command, `prov release`'s module and the fast entry point all run `run`) and the digest lines of
`prov add` and `prov hash`. Below every command module, so none of them imports another."""

from __future__ import annotations

NOT_CHECKED_WHY = {"archive_bytes": "--archive is a git-LFS pointer: its oid and size were compared, not the bytes"}


def run(manifest, trust_path=None, key_path=None, log_key_path=None, archive=None, runtime=None, record=None,
        at_time=None, state=None, since_path=None, no_files=False, chain_dir=None, as_json=False,
        key_signs_log=False) -> int:
    """Verify, print the checklist (or JSON); the exit code. Raises ProvError on bad input."""
    from provenance.release.verify import verify_release
    out, trust_ = verify_release(manifest, trust_path, key_path, log_key_path, archive, runtime, record, at_time,
                                 state, since_path, no_files, chain_dir, key_signs_log)
    if as_json:
        import json
        print(json.dumps({"ok": out.ok, "checks": [c.brief() for c in out.checks], "files_checked": out.files_checked,
                          "not_checked": out.not_checked, "trust_version": trust_.version,
                          "trust_chain": trust_.chain}, indent=2, sort_keys=True))
        return 0 if out.ok else 1
    lines = [f"{'✓' if c.ok else '✗'} {c.name}: {c.detail}" for c in out.checks]
    lines += [f"- {n}: not checked ({NOT_CHECKED_WHY.get(n, '--no-files')})" for n in out.not_checked]
    if out.ok and out.statement:
        p = out.statement["predicate"]
        what = "" if out.files_checked else (
            " (the archive's bytes NOT checked: a git-LFS pointer gave its digest and size)"
            if out.not_checked == ["archive_bytes"] else " (signatures and score only: archive and runtime NOT checked)")
        lines.append(f"VERIFIED{what}: release {p['name']} v{p['version']}: score {p['score']['canonical']!r} "
                     f"({p['grade']}, {p['profile']})")
    else:
        failed = [c.name for c in out.checks if not c.ok]
        lines.append(f"FAILED: {', '.join(failed)}" if failed else "FAILED: no check could run")
        hint = chain_hint(out, trust_, manifest, trust_path)
        if hint:
            lines.insert(-1, hint)
    print("\n".join(lines))
    return 0 if out.ok else 1


def chain_hint(out, trust_, manifest, trust_path) -> str | None:
    """When no trusted key signed and later policy versions lie beside the manifest or the pinned
    policy, say where: a release signed by a rotated-in key needs --trust-chain."""
    if trust_.chain or not trust_path or not any(c.name == "signatures" and not c.ok for c in out.checks):
        return None
    from pathlib import Path
    from provenance.release.chain import chain_files
    for base in dict.fromkeys((Path(manifest).parent, Path(trust_path).parent)):
        for d in [base, *sorted(p for p in base.iterdir() if p.is_dir())]:
            if chain_files(d):
                return (f"hint: no key of the pinned policy (v{trust_.version}) signed it; later policy versions "
                        f"lie in {d}: add --trust-chain {d}")
    return None


def digest_out(kind: str, sha256: str, blake3: str, size: int) -> dict:
    """What `prov add` and `prov hash` print with --json."""
    return {"kind": kind, "sha256": sha256, "blake3": blake3, "size": size}


def print_digest(path, out: dict) -> str:
    return f"{out['kind']}  {path}\n  sha256 {out['sha256']}\n  blake3 {out['blake3']}\n  size   {out['size']}"
