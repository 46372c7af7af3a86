"""The one trust model: a trust policy names keys and roles (release, log, root, witness), each with a
threshold (the witness role also with the age a cosignature may reach). Here it is created
(`trust_policy`), read and checked (`read_trust_doc`, `trust_from_doc`), and published for stock tools
(`allowed_signers`, `note_verifiers`). The policy's schema comes from its pydantic model
(records.models.TrustPolicy); verify appraises releases against the `Trust` this module returns.

As python-tuf keeps `Metadata` apart from the trusted set it walks: the chain of versions and its
rotation are `release.chain`, the verifier's remembered versions `release.state`.
"""

from __future__ import annotations

import os

from provenance.core import signing
from provenance.core.canonical import loads_tracking
from provenance.core.clock import now_rfc3339, parse_time
from provenance.core.errors import ProvError
from provenance.core.files import read_input
from provenance.records import jsonschema_lite

TYPE_CHECKING = False  # typing stays off the verify path
if TYPE_CHECKING:
    from datetime import datetime

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


def trust_policy(release_keys: list[str], threshold: int, log_keys: list[str], expires: str,
                 version: int = 1, root_keys: list[str] | None = None, root_threshold: int = 1,
                 witness_keys: list[str] | None = None, witness_threshold: int = 1,
                 witness_max_age: int | None = None, log_origin: str | None = None) -> TrustPolicy:
    from provenance.records.models import Role, TrustPolicy  # pydantic: creating, not verifying
    keys: dict[str, dict] = {}
    names = {role: add_named_keys(paths, keys) for role, paths in
             (("release", release_keys), ("log", log_keys), ("root", root_keys or []))}
    publish_note_verifiers(keys, names["log"])
    names["witness"] = add_witness_keys(witness_keys or [], keys)
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
        roles["witness"] = witness_role(names["witness"], witness_threshold, witness_max_age)
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


def add_named_keys(paths: list[str], keys: dict) -> list[str]:
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


def add_witness_keys(paths: list[str], keys: dict) -> list[str]:
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


def witness_role(names: list[str], threshold: int, max_age: int | None):
    from provenance.records.models import Role
    if not 1 <= threshold <= len(names):
        raise ProvError(f"witness threshold {threshold} must be between 1 and {len(names)}")
    if max_age is not None and max_age < 1:
        raise ProvError("--witness-max-age must be at least 1 second")
    return Role(keys=names, threshold=threshold, max_age=max_age)


def publish_note_verifiers(keys: dict, log_names: list[str]) -> None:
    """What Go's note package needs to check our checkpoints, on every log key."""
    from provenance.log.checkpoint import NOTE_KEY_NAME, note_verifier
    for n in log_names:
        pub = signing.load_public_pem(keys[n]["public_key"], n)
        keys[n]["note_verifier"] = note_verifier(NOTE_KEY_NAME, signing.raw_public(pub))
