"""Trust policy rotation, the TUF way (python-tuf's root rotation: `Metadata.verify_delegate`,
`TrustedMetadataSet.update_root`).

A judge pins version 1 of the trust policy. Version N+1 is trusted only when it carries
valid signatures by a threshold of version N's root keys *and* a threshold of its own root
keys (so new keys cannot be named without their holders agreeing). The walk goes one
version at a time from the pinned one to the newest: no version may be skipped; two
different documents claiming one version are a fork; a version issued after its predecessor
expired is an expired link (the old keys had no authority left to sign it). Intermediate
versions may have expired since: only the newest one must be valid now (as in TUF).
Dropping a key from a role revokes it: a release signed only by that key then fails.

Signatures cover PAE("application/vnd.comma-lab.trust-policy+json", RFC 8785 bytes of the
policy without its `signatures` field), the same DSSE pre-authentication encoding releases use.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path

from provenance.core import canonical, signing
from provenance.core.errors import ProvError, VerificationFailed
from provenance.core.clock import format_time, parse_time
from provenance.release.verify import read_trust_doc, role_keys

PAYLOAD_TYPE = "application/vnd.comma-lab.trust-policy+json"
_NAMED = re.compile(r"^(\d+)\.trust\.json$")


def signed_bytes(doc: dict) -> bytes:
    return canonical.dumps({k: v for k, v in doc.items() if k != "signatures"})


def verify_delegate(delegator: dict, delegated: dict, where: str) -> set[str]:
    """Distinct root keys of `delegator` that signed `delegated`; raise unless they reach its threshold."""
    keys, threshold = role_keys(delegator, "root", where)
    good = signing.verified_keys(PAYLOAD_TYPE, signed_bytes(delegated), delegated.get("signatures") or [], keys)
    if len(good) < threshold:
        raise VerificationFailed(f"{where}: signed by {len(good)} of the {threshold} required root key(s) "
                                 f"of trust policy v{delegator['version']}")
    return good


def walk_chain(pinned: dict, chain_dir: str | Path, pinned_where: str) -> tuple[dict, list[int]]:
    """(newest trusted policy, versions walked) from the pinned policy through CHAIN_DIR/*.json."""
    d = Path(chain_dir)
    if not d.is_dir():
        raise ProvError(f"{chain_dir}: not a directory of trust policy versions")
    seen: dict[int, tuple[str, dict, Path | str]] = {pinned["version"]: (_id(pinned), pinned, pinned_where)}
    for p in sorted(d.glob("*.json")):
        doc = read_trust_doc(p)
        v = doc["version"]
        m = _NAMED.match(p.name)
        if m and int(m.group(1)) != v:
            raise VerificationFailed(f"{p}: named v{m.group(1)} but holds v{v}: rollback or mislabel refused")
        if v in seen and seen[v][0] != _id(doc):
            raise VerificationFailed(f"fork: {p} and {seen[v][2]} are two different trust policies v{v}")
        seen.setdefault(v, (_id(doc), doc, p))
    trusted, walked = pinned, [pinned["version"]]
    while trusted["version"] + 1 in seen:
        _, nxt, where = seen[trusted["version"] + 1]
        where = str(where)
        verify_delegate(trusted, nxt, where)  # the previous version's root threshold ...
        verify_delegate(nxt, nxt, where)      # ... and its own (TUF: both)
        issued = nxt.get("issued_at")
        if not issued:
            raise VerificationFailed(f"{where}: v{nxt['version']} has no issued_at: cannot check the link")
        t_issued = parse_time(issued, f"{where}: issued_at")
        if t_issued > parse_time(trusted["expires"], "expires"):
            raise VerificationFailed(f"expired link: v{nxt['version']} was issued at {issued}, after "
                                     f"v{trusted['version']} expired at {trusted['expires']}")
        if trusted.get("issued_at") and t_issued < parse_time(trusted["issued_at"], "issued_at"):
            raise VerificationFailed(f"rollback: v{nxt['version']} claims to be issued ({issued}) before "
                                     f"v{trusted['version']} ({trusted['issued_at']})")
        trusted = nxt
        walked.append(nxt["version"])
    beyond = sorted(v for v in seen if v > trusted["version"])
    if beyond:
        raise VerificationFailed(f"trust policy v{beyond[0]} cannot be reached: v{trusted['version'] + 1} "
                                 "is missing from the chain (versions cannot be skipped)")
    return trusted, walked


def _id(doc: dict) -> str:
    return hashlib.sha256(signed_bytes(doc)).hexdigest()


def _named_keys(paths: list[str], keys: dict) -> list[str]:
    """Add public keys (PEM files) to `keys` under trust_policy's naming; return their names."""
    from provenance.records.models import TrustedKey
    names = []
    for p in paths:
        pub = signing.load_public(p)
        kid = signing.keyid(pub)
        name = next((n for n, k in keys.items() if k["keyid"] == kid), None)
        if name is None:
            name = f"{Path(p).stem.replace('.pub', '')}-{kid[:8]}"
            keys[name] = TrustedKey(keyid=kid, public_key=signing.public_pem(pub)).model_dump(exclude_none=True)
        names.append(name)
    return sorted(set(names))


def rotate(current: str | Path, signing_keys: list[str], expires: str, release_keys: list[str] | None = None,
           threshold: int | None = None, log_keys: list[str] | None = None, root_keys: list[str] | None = None,
           root_threshold: int | None = None, passphrase_file=None) -> dict:
    """Version N+1 of a trust policy, signed by `signing_keys` (they must reach the root thresholds of
    both version N and N+1). Roles not given are carried over; a key no role names is dropped (revoked)."""
    from provenance.records.models import TrustPolicy
    from provenance.log.translog import NOTE_KEY_NAME, note_verifier
    old = read_trust_doc(current)
    parse_time(expires, "--expires")
    keys = {n: dict(k) for n, k in old["keys"].items()}
    roles = {r: dict(spec) for r, spec in old["roles"].items()}
    if "root" not in roles:  # make the implicit root explicit, so later release changes do not move it
        roles["root"] = dict(roles["release"])
    for role, paths, thr in (("release", release_keys, threshold), ("log", log_keys, 1),
                             ("root", root_keys, root_threshold)):
        if paths:
            names = _named_keys(paths, keys)
            roles[role] = {"keys": names, "threshold": thr if thr is not None else 1}
        elif thr is not None and role in roles:
            roles[role]["threshold"] = thr
    for r, spec in roles.items():
        if not 1 <= spec["threshold"] <= len(spec["keys"]):
            raise ProvError(f"role {r}: threshold {spec['threshold']} must be between 1 and {len(spec['keys'])}")
    used = {n for spec in roles.values() for n in spec["keys"]}
    keys = {n: k for n, k in keys.items() if n in used}
    for n in roles.get("log", {}).get("keys", []):
        pub = signing.load_public_pem(keys[n]["public_key"], n)
        keys[n]["note_verifier"] = note_verifier(NOTE_KEY_NAME, signing.raw_public(pub))
    doc = TrustPolicy.model_validate({
        "schema": old.get("schema", "comma-lab/trust-policy/v1"), "version": old["version"] + 1,
        "expires": expires, "issued_at": format_time(datetime.now(timezone.utc)),
        "keys": keys, "roles": roles}).model_dump(mode="json", by_alias=True, exclude_none=True)
    return sign_policy(doc, signing_keys, passphrase_file, previous=old)


def sign_policy(doc: dict, key_paths: list[str], passphrase_file=None, previous: dict | None = None) -> dict:
    """Add signatures; refuse (exit 1) unless the result verifies against `previous` and itself."""
    payload = signed_bytes(doc)
    sigs = list(doc.get("signatures") or [])
    for p in key_paths:
        key = signing.load_private(p, passphrase_file)
        if not signing.verified_keys(PAYLOAD_TYPE, payload, sigs, {signing.keyid(key.public_key()): key.public_key()}):
            sigs.append(signing.sign(key, PAYLOAD_TYPE, payload))
    out = {**doc, "signatures": sigs}
    if previous is not None:
        verify_delegate(previous, out, f"trust policy v{doc['version']}")
    verify_delegate(out, out, f"trust policy v{doc['version']}")
    return out


def check_trust_state(state: str, trust) -> None:
    """Refuse a trust chain older than one this verifier walked before; remember the newest."""
    from provenance.core.files import write_json
    from provenance.release.verify import _read_state
    doc = _read_state(state)
    seen = doc.get("trust", {}).get("version", 0)
    if trust.version < seen:
        raise VerificationFailed(f"rollback: trust chain ends at v{trust.version}, but v{seen} was seen before")
    if trust.version > seen:
        doc["trust"] = {"version": trust.version}
        write_json(state, doc)
