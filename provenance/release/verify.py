"""Offline verification of a release manifest. Imports nothing heavy: no pydantic, torch, av, dvc.

Mechanism first, then policy (after sigstore's Verifier/Policy split): the signatures over
the PAE, the payload type and strict parsing gate everything else; nothing in the payload
is believed before enough trusted keys have signed exactly those bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from provenance.records import jsonschema_lite
from provenance.core import signing
from provenance.core.canonical import loads_tracking
from provenance.core.files import write_json
from provenance.core.clock import format_time, parse_time
from provenance.core.errors import ProvError


@dataclass
class Outcome:
    checks: list[dict] = field(default_factory=list)
    statement: dict | None = None
    not_checked: list[str] = field(default_factory=list)  # file checks the caller did not ask for

    @property
    def files_checked(self) -> bool:
        return not self.not_checked

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)


@dataclass
class Trust:
    keys: dict[str, tuple[str, object]]  # keyid -> (name, public key)
    release: set[str]
    threshold: int
    log: set[str]
    expires: datetime | None
    source: str
    log_required: bool = False
    no_log_key: str = "the trust policy names no log key"  # why `log` is empty, for the failing check
    version: int = 1
    chain: list[int] = field(default_factory=list)  # versions walked from the pinned one (--trust-chain)


def subject_digests(stmt: dict) -> dict[str, tuple[str | None, str | None]]:
    """{subject name: (sha256, blake3)}; a tree's digest is read under its own algorithm's keys
    (`prov-tree-v1-sha256`) or, for releases made before those keys, under plain `sha256`."""
    out = {}
    for s in stmt.get("subject", []):
        d = s.get("digest", {})
        out[s.get("name")] = (d.get("prov-tree-v1-sha256", d.get("sha256")),
                              d.get("prov-tree-v1-blake3", d.get("blake3")))
    return out


def load_trust(trust_path: str | None, key_path: str | None, log_key_path: str | None = None,
               chain_dir: str | None = None, key_signs_log: bool = False) -> Trust:
    if key_path:  # one release key (threshold 1); the log role only by --log-key or --key-signs-log
        if log_key_path and key_signs_log:
            raise ProvError("give --log-key or --key-signs-log, not both")
        pub = signing.load_public(key_path)
        kid = signing.keyid(pub)
        keys = {kid: (Path(key_path).name, pub)}
        # roles stay apart: a release key is never taken for the log's unless the judge says so
        log = {kid} if key_signs_log else set()
        if log_key_path:
            lpub = signing.load_public(log_key_path)
            log = {signing.keyid(lpub)}
            keys[signing.keyid(lpub)] = (Path(log_key_path).name, lpub)
        return Trust(keys, {kid}, 1, log, None, str(key_path), log_required=bool(log_key_path or key_signs_log),
                     no_log_key="--key pins the release key only: give --log-key LOG.pub, or --key-signs-log "
                                "if the release key also signs the log")
    if not trust_path:
        raise ProvError("give --trust trust.json or --key pub.pem: whom do you trust?")
    doc = read_trust_doc(trust_path)
    chain = []
    if chain_dir is not None:
        from provenance.release.trustchain import walk_chain
        doc, chain = walk_chain(doc, chain_dir, trust_path)
        trust_path = f"{chain_dir} (v{doc['version']})"
    t = trust_from_doc(doc, str(trust_path))
    t.chain = chain
    return t


def read_trust_doc(trust_path: str | Path) -> dict:
    try:
        data = Path(trust_path).read_bytes()
    except OSError as e:
        raise ProvError(f"{trust_path}: {e.strerror}") from None
    doc, dupes = loads_tracking(data, str(trust_path))
    errs = (["duplicate keys " + ", ".join(dupes)] if dupes else []) + jsonschema_lite.validate(doc, "trust-policy.v1.json")
    if errs:
        raise ProvError(f"{trust_path}: not a valid trust policy ({errs[0]})")
    return doc


def role_keys(doc: dict, r: str, where: str) -> tuple[dict[str, object], int]:
    """{keyid: public key} and threshold of a role; `root` defaults to the release role."""
    spec = doc["roles"].get(r) or (doc["roles"].get("release") if r == "root" else None)
    if spec is None:
        return {}, 0
    out = {}
    for n in spec["keys"]:
        k = doc["keys"].get(n)
        if k is None:
            raise ProvError(f"{where}: role {r} names unknown key {n!r}")
        pub = signing.load_public_pem(k["public_key"], f"{where}: key {n}")
        if signing.keyid(pub) != k["keyid"]:
            raise ProvError(f"{where}: key {n}: keyid does not match its public key")
        out[k["keyid"]] = pub
    if spec["threshold"] > len(out):
        raise ProvError(f"{where}: role {r} threshold {spec['threshold']} exceeds its {len(out)} key(s)")
    return out, spec["threshold"]


def trust_from_doc(doc: dict, trust_path: str) -> Trust:
    keys = {}
    by_name = {}
    for name, k in doc["keys"].items():
        pub = signing.load_public_pem(k["public_key"], f"{trust_path}: key {name}")
        if signing.keyid(pub) != k["keyid"]:
            raise ProvError(f"{trust_path}: key {name}: keyid does not match its public key")
        if k.get("note_verifier") is not None:
            from provenance.log.translog import note_verifier
            nv = k["note_verifier"]
            if note_verifier(nv.split("+", 1)[0], signing.raw_public(pub)) != nv:
                raise ProvError(f"{trust_path}: key {name}: note_verifier does not match its public key")
        keys[k["keyid"]] = (name, pub)
        by_name[name] = k["keyid"]

    def role(r: str) -> tuple[set[str], int]:
        spec = doc["roles"].get(r)
        if spec is None:
            return set(), 0
        missing = [n for n in spec["keys"] if n not in by_name]
        if missing:
            raise ProvError(f"{trust_path}: role {r} names unknown key(s) {missing}")
        ids = {by_name[n] for n in spec["keys"]}
        if spec["threshold"] > len(ids):
            raise ProvError(f"{trust_path}: role {r} threshold {spec['threshold']} exceeds its {len(ids)} key(s)")
        return ids, spec["threshold"]
    release, threshold = role("release")
    if not release:
        raise ProvError(f"{trust_path}: no release role")
    log, _ = role("log")
    role("root")  # a malformed root role makes the policy unreadable, used or not
    return Trust(keys, release, threshold, log, parse_time(doc["expires"], f"{trust_path}: expires"),
                 str(trust_path), log_required=bool(log), version=doc["version"])


def read_envelope(path: str | Path) -> tuple[dict, list[str]]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProvError(f"{path}: {e.strerror}") from None
    env, dupes = loads_tracking(data, str(path))
    if not isinstance(env, dict) or not isinstance(env.get("payload"), str) \
            or not isinstance(env.get("payloadType"), str) or not isinstance(env.get("signatures"), list):
        raise ProvError(f"{path}: not a DSSE envelope (needs payload, payloadType, signatures)")
    return env, dupes


def verify_manifest(manifest: str | Path, trust: Trust, archive: str | None = None, runtime: str | None = None,
                    record: str | None = None, at: datetime | None = None, state: str | None = None,
                    since: str | None = None) -> Outcome:
    out = Outcome()
    env, env_dupes = read_envelope(manifest)
    payload = signing.b64d(env["payload"], f"{manifest}: payload")
    ptype = env["payloadType"]

    # 1. signatures over the PAE, by keys we trust, before anything in the payload is read
    release_keys = {k: trust.keys[k][1] for k in trust.release}
    good = signing.verified_keys(ptype, payload, env["signatures"], release_keys)
    names = ", ".join(sorted(trust.keys[k][0] for k in good))
    if not out.add("signatures", bool(good),
                   f"{len(good)} trusted key(s) signed the payload ({names})" if good
                   else f"no valid signature by a trusted key among {len(env['signatures'])} signature(s)"
                   + (f" (trust policy v{trust.version})" if trust.chain else "")):
        return out
    # 2. payload type
    if not out.add("payload_type", ptype == signing.IN_TOTO, f"{ptype}"):
        return out
    # 3. strict parsing
    stmt, dupes = loads_tracking(payload, "payload")
    from provenance.core.canonical import dumps
    canonical_ok = not dupes and isinstance(stmt, dict) and dumps(stmt) == payload
    if not out.add("strict_json", canonical_ok and not env_dupes,
                   "payload is RFC 8785 canonical JSON, no duplicate keys" if canonical_ok and not env_dupes
                   else f"duplicate key(s) {sorted(set(dupes + env_dupes))}" if dupes or env_dupes
                   else "payload is not RFC 8785 canonical JSON"):
        return out
    # 4. threshold of distinct trusted keys
    out.add("threshold", len(good) >= trust.threshold,
            f"{len(good)} of {trust.threshold} required distinct release key(s)")
    # 5. statement schema
    errs = jsonschema_lite.validate(stmt, "release-statement.v1.json")
    if not out.add("statement_schema", not errs, "in-toto Statement v1, comma-lab release predicate"
                   if not errs else errs[0]):
        return out
    out.statement = stmt
    if "ssh" in env:  # the same keys' OpenSSH signatures over the same bytes must tell the same story
        out.add(*_check_ssh(env["ssh"], payload, release_keys, good, trust))
    judge = Path(manifest).parent / "statement.json"
    if judge.is_file():
        out.add(*_check_judge_files(judge, payload, release_keys, good))
    pred = stmt["predicate"]
    subjects = subject_digests(stmt)
    # 6. the bytes the judge holds
    if archive is None:
        out.not_checked.append("archive_digest")
    if runtime is None:
        out.not_checked.append("runtime_tree")
    if archive is not None:
        from provenance.core.digest import hash_file
        try:
            d = hash_file(archive)
        except OSError as e:
            raise ProvError(f"{archive}: {e.strerror}") from None
        want = subjects.get("archive.zip", (None, None))
        out.add("archive_digest", (d.sha256, d.blake3) == want and d.size == pred["archive_size"],
                f"sha256 {d.sha256[:16]}.. {'matches' if d.sha256 == want[0] else 'differs from'} "
                f"the release ({str(want[0])[:16]}..), {d.size:,} bytes")
    if runtime is not None:
        from provenance.core import tree as treemod
        from provenance.core.digest import hash_file
        if not os.path.isdir(runtime):
            raise ProvError(f"{runtime}: not a directory")
        try:
            t = treemod.walk(runtime, lambda p, s: hash_file(p))
            want = subjects.get("runtime/", (None, None))
            out.add("runtime_tree", (t.sha256, t.blake3) == want,
                    f"prov-tree-v1 {t.sha256[:16]}.. {'matches' if t.sha256 == want[0] else 'differs from'}"
                    f" the release ({str(want[0])[:16]}..)")
        except treemod.TreeError as e:
            out.add("runtime_tree", False, str(e))
    # 7. the score follows from its components under the record's profile
    from provenance import contest
    sc = pred["score"]
    try:
        profile = contest.get_profile(pred["profile"])
        again = profile.score(sc["posenet"], sc["segnet"], sc["rate"])
        out.add("score_recomputes", again == sc["canonical"] and sc["samples"] == profile.samples,
                f"{again!r} from components under {profile.name}; statement says {sc['canonical']!r}, "
                f"{sc['samples']} samples")
    except ProvError as e:
        out.add("score_recomputes", False, str(e))
    # 8. the record behind it
    if record is not None:
        out.add(*_check_record(record, pred))
    # 9. time
    now = at or datetime.now(timezone.utc)
    problems = []
    if pred.get("expires") and parse_time(pred["expires"], "statement expires") <= now:
        problems.append(f"release expired at {pred['expires']}")
    if trust.expires and trust.expires <= now:
        problems.append(f"trust policy expired at {trust.expires.isoformat()}")
    if parse_time(pred["issued_at"], "statement issued_at") > now:
        problems.append(f"issued in the future ({pred['issued_at']})")
    out.add("not_expired", not problems, "; ".join(problems) or f"valid at {format_time(now)}")
    # 10. the evidence log: required when the trust policy names log keys, or with --since
    if "log" in env or trust.log_required or since is not None:
        from provenance.log.logbook import check_release_log
        if not trust.log:
            out.add("log_checkpoint", False, trust.no_log_key)
        else:
            for name, ok, detail in check_release_log(env.get("log"), payload,
                                                      {k: trust.keys[k][1] for k in trust.log}, since):
                out.add(name, ok, detail)
    # 11. rollback
    digest = hashlib.sha256(payload).hexdigest()
    if state is not None:
        out.add(*_check_state(state, pred, digest))
    if out.ok and state is not None:
        _remember(state, pred, digest)
    return out


def _ssh_signers(sigs: list[str], payload: bytes, release_keys: dict) -> tuple[set[str], int]:
    from provenance.core import sshsig
    by_raw = {signing.raw_public(pub): kid for kid, pub in release_keys.items()}
    good, bad = set(), 0
    for armored in sigs:
        raw = sshsig.verify(armored, payload) if isinstance(armored, str) else None
        if raw in by_raw:
            good.add(by_raw[raw])
        else:
            bad += 1
    return good, bad


def _check_ssh(ssh, payload: bytes, release_keys: dict, dsse_good: set[str], trust: Trust) -> tuple[str, bool, str]:
    sigs = [s.get("sshsig") if isinstance(s, dict) else None for s in ssh] if isinstance(ssh, list) else [None]
    good, bad = _ssh_signers(sigs, payload, release_keys)
    if good == dsse_good and not bad:
        return "ssh_signatures", True, f"{len(good)} SSHSIG(s) (namespace comma-lab-release) by the same key(s) as DSSE"
    name = lambda ks: ", ".join(sorted(trust.keys[k][0] for k in ks)) or "none"  # noqa: E731
    return "ssh_signatures", False, (f"DSSE and SSH signatures disagree: DSSE only {name(dsse_good - good)}; "
                                     f"SSH only {name(good - dsse_good)}; {bad} invalid or untrusted SSHSIG(s)")


def _check_judge_files(statement: Path, payload: bytes, release_keys: dict, dsse_good: set[str]):
    """The files a judge checks with stock tools, when they lie beside the manifest."""
    if statement.read_bytes() != payload:
        return "judge_files", False, f"{statement} is not the signed statement bytes"
    sig_files = sorted(statement.parent.glob("statement.json*.sig"))
    good, bad = _ssh_signers([p.read_text(errors="replace") for p in sig_files], payload, release_keys)
    ok = not bad and good == dsse_good
    return "judge_files", ok, (f"statement.json is the signed payload; {len(sig_files)} .sig file(s) verify "
                               "by the DSSE signers" if ok else
                               f"statement.json is the signed payload but {bad} .sig file(s) do not verify "
                               "or their signers differ from DSSE's")


def _check_record(record: str, pred: dict) -> tuple[str, bool, str]:
    from blake3 import blake3
    try:
        data = Path(record).read_bytes()
    except OSError as e:
        raise ProvError(f"{record}: {e.strerror}") from None
    sha, b3 = hashlib.sha256(data).hexdigest(), blake3(data).hexdigest()
    if (sha, b3) != (pred["record"]["sha256"], pred["record"]["blake3"]):
        return "record_digest", False, f"record file sha256 {sha[:16]}.. is not the released {pred['record']['sha256'][:16]}.."
    rec, _ = loads_tracking(data, record)
    r = rec.get("result", {}) if isinstance(rec, dict) else {}
    same = (r.get("canonical_score") == pred["score"]["canonical"] and r.get("samples") == pred["score"]["samples"]
            and rec.get("grade") == pred["grade"])
    return "record_digest", same, ("record bytes match; score, samples and grade agree" if same
                                   else "record bytes match but its result disagrees with the statement")


def _check_state(state: str, pred: dict, digest: str) -> tuple[str, bool, str]:
    seen = _read_state(state).get("releases", {}).get(pred["name"])
    if not seen:
        return "rollback", True, f"first sight of {pred['name']} (v{pred['version']}); remembered in {state}"
    v = pred["version"]
    if v < seen["version"]:
        return "rollback", False, f"version {v} is older than v{seen['version']} seen before: rollback"
    if v == seen["version"] and digest != seen["statement_sha256"]:
        return "rollback", False, f"a different statement for v{v} was seen before: fork"
    return "rollback", True, f"v{v} >= v{seen['version']} seen before"


def _read_state(state: str) -> dict:
    if not os.path.exists(state):
        return {}
    try:
        doc = json.loads(Path(state).read_bytes())
    except (OSError, ValueError) as e:
        raise ProvError(f"{state}: unreadable verifier state ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("releases", {}), dict) or not all(
            isinstance(v, dict) and type(v.get("version")) is int and isinstance(v.get("statement_sha256"), str)
            for v in doc.get("releases", {}).values()):
        raise ProvError(f"{state}: not a verifier state file (releases: name -> version, statement_sha256)")
    return doc


def _remember(state: str, pred: dict, digest: str) -> None:
    doc = _read_state(state)
    rel = doc.setdefault("releases", {})
    cur = rel.get(pred["name"])
    if not cur or pred["version"] >= cur["version"]:
        rel[pred["name"]] = {"version": pred["version"], "statement_sha256": digest}
    write_json(state, doc)
