"""The chain of trust policy versions, the TUF way (python-tuf's root rotation:
`Metadata.verify_delegate`, `TrustedMetadataSet.update_root`): walked from a pinned version
(`walk_chain`, `load_trust`), and extended by rotation (`rotate`, `sign_policy`).

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
import os
from datetime import datetime, timezone

from provenance.core import canonical, signing
from provenance.core.clock import now_rfc3339, parse_time
from provenance.core.errors import ProvError, VerificationFailed
from provenance.release.trust import (Trust, add_named_keys, add_witness_keys, publish_note_verifiers,
                                      read_trust_doc, role_keys, trust_from_doc, witness_role)

PAYLOAD_TYPE = "application/vnd.comma-lab.trust-policy+json"
CHAIN_SUFFIX = ".trust.json"


def _named_version(name: str) -> int | None:
    """N of a file named N.trust.json (ASCII digits), else None."""
    stem = name[:-len(CHAIN_SUFFIX)] if name.endswith(CHAIN_SUFFIX) else ""
    return int(stem) if stem.isascii() and stem.isdigit() else None


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


def chain_files(chain_dir: str | os.PathLike) -> list[str]:
    """The policy versions a chain folder holds, in order: files named N.trust.json, and nothing
    else (a manifest or a note beside them is not read as a policy)."""
    try:
        named = [(v, n) for n in os.listdir(chain_dir) if (v := _named_version(n)) is not None]
    except OSError:
        return []
    return [os.path.join(chain_dir, n) for _, n in sorted(named)]


def walk_chain(pinned: dict, chain_dir: str | os.PathLike, pinned_where: str) -> tuple[dict, list[int]]:
    """(newest trusted policy, versions walked) from the pinned policy through CHAIN_DIR/N.trust.json."""
    if not os.path.isdir(chain_dir):
        raise ProvError(f"{chain_dir}: not a directory of trust policy versions")
    seen: dict[int, tuple[str, dict, str]] = {pinned["version"]: (_id(pinned), pinned, pinned_where)}
    for p in chain_files(chain_dir):
        doc = read_trust_doc(p)
        v = doc["version"]
        named = _named_version(os.path.basename(p))
        if named != v:
            raise VerificationFailed(f"{p}: named v{named} but holds v{v}: rollback or mislabel refused")
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



def load_trust(trust_path: str | None, key_path: str | None, log_key_path: str | None = None,
               chain_dir: str | None = None, key_signs_log: bool = False) -> Trust:
    if key_path:  # one release key (threshold 1); the log role only by --log-key or --key-signs-log
        if log_key_path and key_signs_log:
            raise ProvError("give --log-key or --key-signs-log, not both")
        pub = signing.load_public(key_path)
        kid = signing.keyid(pub)
        keys = {kid: (os.path.basename(key_path), pub)}
        # roles stay apart: a release key is never taken for the log's unless the judge says so
        log = {kid} if key_signs_log else set()
        if log_key_path:
            lpub = signing.load_public(log_key_path)
            log = {signing.keyid(lpub)}
            keys[signing.keyid(lpub)] = (os.path.basename(log_key_path), lpub)
        return Trust(keys, {kid}, 1, log, None, str(key_path), log_required=bool(log_key_path or key_signs_log),
                     no_log_key="--key pins the release key only: give --log-key LOG.pub, or --key-signs-log "
                                "if the release key also signs the log")
    if not trust_path:
        raise ProvError("give --trust trust.json or --key pub.pem: whom do you trust?")
    doc = read_trust_doc(trust_path)
    chain = []
    if chain_dir is not None:
        doc, chain = walk_chain(doc, chain_dir, trust_path)
        trust_path = f"{chain_dir} (v{doc['version']})"
    t = trust_from_doc(doc, str(trust_path))
    t.chain = chain
    return t


def rotate(current: str | os.PathLike, signing_keys: list[str], expires: str, release_keys: list[str] | None = None,
           threshold: int | None = None, log_keys: list[str] | None = None, root_keys: list[str] | None = None,
           root_threshold: int | None = None, passphrase_file=None, allow_expired: bool = False,
           witness_keys: list[str] | None = None, witness_threshold: int | None = None,
           witness_max_age: int | None = None, log_origin: str | None = None) -> dict:
    """Version N+1 of a trust policy, signed by `signing_keys` (they must reach the root thresholds of
    both version N and N+1). Roles not given are carried over; a key no role names is dropped (revoked).
    From a policy already expired it refuses unless `allow_expired`: verifiers refuse that link."""
    from provenance.core.clock import format_time
    from provenance.records.models import TrustPolicy
    old = read_trust_doc(current)
    parse_time(expires, "--expires")
    old_expiry = parse_time(old["expires"], f"{current}: expires")
    if old_expiry <= datetime.now(timezone.utc) and not allow_expired:
        raise ProvError(f"{current}: trust policy v{old['version']} expired at {format_time(old_expiry)}: it has no "
                        "authority left to sign v{0}, and verifiers refuse a version issued after its predecessor "
                        "expired; --allow-expired to write it anyway".format(old["version"] + 1))
    keys = {n: dict(k) for n, k in old["keys"].items()}
    roles = {r: dict(spec) for r, spec in old["roles"].items()}
    if "root" not in roles:  # make the implicit root explicit, so later release changes do not move it
        roles["root"] = dict(roles["release"])
    for role, paths, thr in (("release", release_keys, threshold), ("log", log_keys, 1),
                             ("root", root_keys, root_threshold)):
        if paths:
            names = add_named_keys(paths, keys)
            roles[role] = {"keys": names, "threshold": thr if thr is not None else 1,
                           **({"origin": roles[role]["origin"]} if roles.get(role, {}).get("origin") else {})}
        elif thr is not None and role in roles:
            roles[role]["threshold"] = thr
    if log_origin is not None:
        if "log" not in roles:
            raise ProvError("--log-origin needs a log role: give --log-key")
        roles["log"]["origin"] = log_origin
    if witness_keys:
        old_role = roles.pop("witness", {})  # old witnesses not named again are revoked (their keys dropped below)
        names = add_witness_keys(witness_keys, keys)
        roles["witness"] = witness_role(  # what is not given again is carried over, never weakened by omission
            names, witness_threshold if witness_threshold is not None else old_role.get("threshold", 1),
            witness_max_age if witness_max_age is not None else old_role.get("max_age")).model_dump(exclude_none=True)
    elif "witness" in roles:
        if witness_threshold is not None:
            roles["witness"]["threshold"] = witness_threshold
        if witness_max_age is not None:
            roles["witness"]["max_age"] = witness_max_age
    elif witness_threshold is not None or witness_max_age is not None:
        raise ProvError("--witness-threshold and --witness-max-age need a witness role: give --witness-key")
    for r, spec in roles.items():
        if not 1 <= spec["threshold"] <= len(spec["keys"]):
            raise ProvError(f"role {r}: threshold {spec['threshold']} must be between 1 and {len(spec['keys'])}")
    used = {n for spec in roles.values() for n in spec["keys"]}
    keys = {n: k for n, k in keys.items() if n in used}
    publish_note_verifiers(keys, roles.get("log", {}).get("keys", []))
    doc = TrustPolicy.model_validate({
        "schema": old.get("schema", "comma-lab/trust-policy/v1"), "version": old["version"] + 1,
        "expires": expires, "issued_at": now_rfc3339(),
        "keys": keys, "roles": roles}).model_dump(mode="json", by_alias=True, exclude_none=True)
    trust_from_doc(doc, f"trust policy v{doc['version']}")  # roles that cannot be read are never signed
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
