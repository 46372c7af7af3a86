"""The one trust model: a trust policy names keys and roles (release, log, root, witness), each with a
threshold (the witness role also with the age a cosignature may reach). Here it is created
(`trust_policy`), read and checked (`read_trust_doc`, `load_trust`), rotated and walked (`rotate`,
`walk_chain`), and published for stock tools (`allowed_signers`). The policy's schema comes from its pydantic model (records.models.TrustPolicy); verify appraises
releases against the `Trust` this module returns.

Rotation, the TUF way (python-tuf's root rotation: `Metadata.verify_delegate`,
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
import os
from datetime import datetime, timezone

from provenance.core import canonical, signing
from provenance.core.canonical import loads_tracking
from provenance.core.clock import now_rfc3339, parse_time
from provenance.core.errors import ProvError, VerificationFailed
from provenance.core.files import read_input
from provenance.records import jsonschema_lite

TYPE_CHECKING = False  # typing stays off the verify path
if TYPE_CHECKING:
    from provenance.records.models import TrustPolicy


class Trust:
    """What a verifier trusts (a plain class: the judge's path imports no dataclasses)."""

    def __init__(self, keys: dict[str, tuple[str, object]], release: set[str], threshold: int, log: set[str],
                 expires: datetime | None, source: str, log_required: bool = False,
                 no_log_key: str = "the trust policy names no log key", version: int = 1,
                 chain: list[int] | None = None, log_threshold: int = 1, witnesses: list | None = None,
                 witness_threshold: int = 0, witness_max_age: int | None = None,
                 log_origin: str | None = None) -> None:
        self.keys = keys  # keyid -> (name, public key)
        self.release, self.threshold, self.log = release, threshold, log
        self.expires, self.source, self.log_required = expires, source, log_required
        self.no_log_key = no_log_key  # why `log` is empty, for the failing check
        self.version = version
        self.chain = chain if chain is not None else []  # versions walked from the pinned one (--trust-chain)
        self.log_threshold = log_threshold  # distinct log keys a checkpoint needs
        self.witnesses = witnesses or []  # log.cosign.Witness: who may cosign the log's checkpoints
        self.witness_threshold, self.witness_max_age = witness_threshold, witness_max_age
        self.log_origin = log_origin  # the one log the log role signs for, where the policy pins it


def read_trust_doc(trust_path: str | os.PathLike) -> dict:
    doc, dupes = loads_tracking(read_input(trust_path), str(trust_path))
    errs = (["duplicate keys " + ", ".join(dupes)] if dupes else []) + jsonschema_lite.validate(doc, "trust-policy.v1.json")
    if errs:
        raise ProvError(f"{trust_path}: not a valid trust policy ({errs[0]})")
    return doc


def role_keys(doc: dict, r: str, where: str) -> tuple[dict[str, object], int]:
    """{keyid: public key} and threshold of a role; `root` defaults to the release role."""
    spec = doc["roles"].get(r) or (doc["roles"].get("release") if r == "root" else None)
    if spec is None:
        return {}, 0
    missing = [n for n in spec["keys"] if n not in doc["keys"]]
    if missing:
        raise ProvError(f"{where}: role {r} names unknown key(s) {missing}")
    out = {}
    for n in spec["keys"]:
        k = doc["keys"][n]
        pub = signing.load_public_pem(k["public_key"], f"{where}: key {n}")
        if signing.keyid(pub) != k["keyid"]:
            raise ProvError(f"{where}: key {n}: keyid does not match its public key")
        out[k["keyid"]] = pub
    if spec["threshold"] > len(out):
        raise ProvError(f"{where}: role {r} threshold {spec['threshold']} exceeds its {len(out)} key(s)")
    return out, spec["threshold"]


def trust_from_doc(doc: dict, trust_path: str) -> Trust:
    """A schema-valid policy document as the verifier uses it: every key checked against its keyid
    (and its note verifier), every role with its threshold."""
    keys = {}
    for name, k in doc["keys"].items():
        pub = signing.load_public_pem(k["public_key"], f"{trust_path}: key {name}")
        if signing.keyid(pub) != k["keyid"]:
            raise ProvError(f"{trust_path}: key {name}: keyid does not match its public key")
        if k.get("note_verifier") is not None and not _vkey_of(k["note_verifier"], signing.raw_public(pub)):
            raise ProvError(f"{trust_path}: key {name}: note_verifier does not match its public key")
        keys[k["keyid"]] = (name, pub)
    if "release" not in doc["roles"]:
        raise ProvError(f"{trust_path}: no release role")
    release, threshold = role_keys(doc, "release", trust_path)
    log, log_threshold = role_keys(doc, "log", trust_path)
    root, _ = role_keys(doc, "root", trust_path)  # a malformed root role makes the policy unreadable, used or not
    witnesses = _witnesses(doc, trust_path, set(release) | set(log))
    roles = doc["roles"]
    for r, spec in roles.items():
        if r != "witness" and spec.get("max_age") is not None or r != "log" and spec.get("origin") is not None:
            raise ProvError(f"{trust_path}: role {r}: max_age belongs to the witness role, origin to the log role")
    log_origin = roles.get("log", {}).get("origin")
    if witnesses:
        if not log or log_origin is None:
            raise ProvError(f"{trust_path}: a witness role needs a log role that names its origin (--log-origin): "
                            "witnesses vouch for one log")
        if "root" not in roles or set(root) & (set(release) | set(log)):
            raise ProvError(f"{trust_path}: a witness role needs a root role of its own (--root-key), apart from the "
                            "release and log keys: whoever holds those could otherwise rotate in witnesses of their own")
    spec = roles.get("witness") or {}
    return Trust(keys, set(release), threshold, set(log), parse_time(doc["expires"], f"{trust_path}: expires"),
                 str(trust_path), log_required=bool(log or witnesses), version=doc["version"],
                 log_threshold=max(log_threshold, 1), witnesses=witnesses,
                 witness_threshold=spec.get("threshold", 0), witness_max_age=spec.get("max_age"),
                 log_origin=log_origin)


def _vkey_of(nv: str, raw: bytes) -> bool:
    """Whether `nv` is this key's signed-note vkey: a log key's (type 0x01) or a witness's (0x04)."""
    from provenance.log.checkpoint import note_verifier
    name = nv.split("+", 1)[0]
    if note_verifier(name, raw) == nv:
        return True
    from provenance.log import cosign
    return cosign.vkey(name, raw) == nv


def _witnesses(doc: dict, where: str, others: set[str]) -> list:
    """The witness role's cosigners, each named by its vkey; none may hold a release or log key (a lab
    cannot witness its own log)."""
    spec = doc["roles"].get("witness")
    if spec is None:
        return []
    from provenance.log import cosign
    pubs, _ = role_keys(doc, "witness", where)
    out = []
    for n in spec["keys"]:
        k = doc["keys"][n]
        if k["keyid"] in others:
            raise ProvError(f"{where}: key {n} is a witness and also a release or log key: a lab cannot "
                            "witness its own log")
        if k.get("note_verifier") is None:
            raise ProvError(f"{where}: witness key {n} has no cosigner vkey (note_verifier) to name it")
        name, raw = cosign.parse_vkey(k["note_verifier"], f"{where}: key {n}")
        out.append(cosign.Witness(k["keyid"], name, pubs[k["keyid"]]))
    return out


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


def trust_policy(release_keys: list[str], threshold: int, log_keys: list[str], expires: str,
                 version: int = 1, root_keys: list[str] | None = None, root_threshold: int = 1,
                 witness_keys: list[str] | None = None, witness_threshold: int = 1,
                 witness_max_age: int | None = None, log_origin: str | None = None) -> TrustPolicy:
    from provenance.records.models import Role, TrustPolicy  # pydantic: creating, not verifying
    keys: dict[str, dict] = {}
    names = {role: _named_keys(paths, keys) for role, paths in
             (("release", release_keys), ("log", log_keys), ("root", root_keys or []))}
    _publish_note_verifiers(keys, names["log"])
    names["witness"] = _witness_keys(witness_keys or [], keys)
    if not names["release"]:
        raise ProvError("a trust policy needs at least one release key")
    if not 1 <= threshold <= len(names["release"]):
        raise ProvError(f"threshold {threshold} must be between 1 and {len(names['release'])}")
    parse_time(expires, "--expires")
    roles = {"release": Role(keys=names["release"], threshold=threshold)}
    if names["log"]:
        roles["log"] = Role(keys=names["log"], threshold=1, origin=log_origin)
    elif log_origin is not None:
        raise ProvError("--log-origin needs --log-key")
    if names["root"]:
        if not 1 <= root_threshold <= len(names["root"]):
            raise ProvError(f"root threshold {root_threshold} must be between 1 and {len(names['root'])}")
        roles["root"] = Role(keys=names["root"], threshold=root_threshold)
    if names["witness"]:
        roles["witness"] = _witness_role(names["witness"], witness_threshold, witness_max_age)
    elif witness_max_age is not None:
        raise ProvError("--witness-max-age needs --witness-key")
    policy = TrustPolicy(version=version, expires=expires, keys=keys, roles=roles, issued_at=now_rfc3339())
    trust_from_doc(policy.model_dump(mode="json", by_alias=True, exclude_none=True), "the new trust policy")
    return policy


def allowed_signers(trust_doc: dict) -> str:
    """OpenSSH allowed_signers for the release role of a trust policy (namespace comma-lab-release):
    tree_digest.py's, so a judge's stdlib run and prov print the same bytes."""
    from provenance.core.tree_digest import Refused, allowed_signers_of
    try:
        return allowed_signers_of(trust_doc)
    except (Refused, ValueError, KeyError) as e:
        raise ProvError(f"trust policy: {e}") from None


def note_verifiers(trust_doc: dict) -> list[str]:
    """The signed-note verifier keys of the policy's log role, as Go's note package reads them."""
    keys = trust_doc["keys"]
    return [keys[n]["note_verifier"] for n in trust_doc["roles"].get("log", {}).get("keys", [])
            if keys[n].get("note_verifier")]


# -- rotation ------------------------------------------------------------------------------------

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


def _named_keys(paths: list[str], keys: dict) -> list[str]:
    """Add public keys (PEM files) to `keys` under trust_policy's naming; return their names."""
    from provenance.records.models import TrustedKey
    names = []
    for p in paths:
        pub = signing.load_public(p)
        kid = signing.keyid(pub)
        name = next((n for n, k in keys.items() if k["keyid"] == kid), None)
        if name is None:
            name = f"{os.path.splitext(os.path.basename(p))[0].replace('.pub', '')}-{kid[:8]}"
            keys[name] = TrustedKey(keyid=kid, public_key=signing.public_pem(pub)).model_dump(exclude_none=True)
        names.append(name)
    return sorted(set(names))


def _witness_keys(paths: list[str], keys: dict) -> list[str]:
    """Add witness keys (a PEM public key, named by cosign.default_name, or the witness's vkey file) to
    `keys`, each with its cosigner vkey; refuse a key another role holds."""
    from provenance.log import cosign
    from provenance.records.models import TrustedKey
    names = []
    for p in paths:
        data = read_input(p)
        if data.lstrip().startswith(b"-----BEGIN"):
            pub = signing.load_public_pem(data, p)
            raw = signing.raw_public(pub)
            vk = cosign.vkey(cosign.default_name(raw), raw)
        else:
            try:
                vk = data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ProvError(f"{p}: neither a PEM public key nor a vkey") from None
            pub = signing.ed25519_public(cosign.parse_vkey(vk, p)[1])
        kid = signing.keyid(pub)
        if any(k["keyid"] == kid and k.get("note_verifier") != vk for k in keys.values()):
            raise ProvError(f"{p}: this key already holds another role: a witness must be independent of the lab")
        name = f"witness-{kid[:8]}"
        keys[name] = TrustedKey(keyid=kid, public_key=signing.public_pem(pub), note_verifier=vk).model_dump(
            exclude_none=True)
        names.append(name)
    return sorted(set(names))


def _witness_role(names: list[str], threshold: int, max_age: int | None):
    from provenance.records.models import Role
    if not 1 <= threshold <= len(names):
        raise ProvError(f"witness threshold {threshold} must be between 1 and {len(names)}")
    if max_age is not None and max_age < 1:
        raise ProvError("--witness-max-age must be at least 1 second")
    return Role(keys=names, threshold=threshold, max_age=max_age)


def _publish_note_verifiers(keys: dict, log_names: list[str]) -> None:
    """What Go's note package needs to check our checkpoints, on every log key."""
    from provenance.log.checkpoint import NOTE_KEY_NAME, note_verifier
    for n in log_names:
        pub = signing.load_public_pem(keys[n]["public_key"], n)
        keys[n]["note_verifier"] = note_verifier(NOTE_KEY_NAME, signing.raw_public(pub))


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
            names = _named_keys(paths, keys)
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
        names = _witness_keys(witness_keys, keys)
        roles["witness"] = _witness_role(  # what is not given again is carried over, never weakened by omission
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
    _publish_note_verifiers(keys, roles.get("log", {}).get("keys", []))
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


def check_trust_state(state: str, trust) -> None:
    """Refuse a trust chain older than one this verifier walked before; remember the newest."""
    from provenance.core.files import write_json
    from provenance.release.state import read_state
    doc = read_state(state)
    seen = doc.get("trust", {}).get("version", 0)
    if trust.version < seen:
        raise VerificationFailed(f"rollback: trust chain ends at v{trust.version}, but v{seen} was seen before")
    if trust.version > seen:
        doc["trust"] = {"version": trust.version}
        write_json(state, doc)
