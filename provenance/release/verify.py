"""Offline verification of a release manifest. Imports nothing heavy: no pydantic, torch, av, dvc.

Mechanism first, then policy (after sigstore's Verifier/Policy split): the signatures over
the PAE, the payload type and strict parsing gate everything else; nothing in the payload
is believed before enough trusted keys have signed exactly those bytes.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

from provenance.records import jsonschema_lite
from provenance.records.envelope import payload_of, read_envelope, subject_digests
from provenance.core import signing
from provenance.core.canonical import loads_tracking
from provenance.core.checks import Check
from provenance.core.clock import format_time, parse_time
from provenance.core.errors import ProvError
from provenance.core.files import read_bytes, read_input
from provenance.release.chain import load_trust
from provenance.release.state import check_trust, read_state, remember
from provenance.release.trust import Trust


class Outcome:
    """The checklist so far. Plain classes here, not dataclasses: the judge's path imports neither
    inspect nor ast (a test lists what it may import)."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.statement: dict | None = None
        self.not_checked: list[str] = []  # file checks the caller did not ask for

    @property
    def files_checked(self) -> bool:
        return not self.not_checked

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def verify_manifest(manifest: str | os.PathLike, trust: Trust, archive: str | None = None, runtime: str | None = None,
                    record: str | None = None, at: datetime | None = None, state: str | None = None,
                    since: str | None = None) -> Outcome:
    """The judge's checklist: authenticate the envelope against the release keys, then appraise
    what it says against the trust policy and the files."""
    out = Outcome()
    env, env_dupes = read_envelope(manifest)
    verified = authenticate(env, trust, out, env_dupes, judge_dir=os.path.dirname(os.fspath(manifest)) or ".",
                            where=str(manifest))
    if verified is not None:
        appraise(verified, trust, out, archive=archive, runtime=runtime, record=record, at=at, state=state,
                 since=since)
        if out.ok and state is not None:  # what this verifier saw: the caller's to save, not the policy's
            remember(state, out.statement["predicate"], hashlib.sha256(verified.payload).hexdigest())
    return out


def verify_release(manifest, trust_path=None, key_path=None, log_key_path=None, archive=None, runtime=None,
                   record=None, at_time=None, state=None, since_path=None, no_files=False, chain_dir=None,
                   key_signs_log=False) -> tuple[Outcome, Trust]:
    """`prov verify` as one library call: its options checked together (ProvError, exit 2, for a
    contradiction or an unreadable input), the trust policy loaded (and its chain walked), the
    release verified. (the Outcome, the Trust it was judged under)."""
    if no_files and (archive or runtime):
        raise ProvError("--no-files contradicts --archive/--runtime: drop one")
    if not no_files and not (archive and runtime):
        raise ProvError("give --archive archive.zip and --runtime DIR: the release binds both "
                        "(or --no-files to check signatures and score only)")
    for p in (manifest, archive, record, since_path):
        if p and not os.path.exists(p):
            raise ProvError(f"{p}: no such file")
    if (log_key_path or key_signs_log) and not key_path:
        raise ProvError("--log-key and --key-signs-log go with --key (a trust policy names its own log keys)")
    if chain_dir and not trust_path:
        raise ProvError("--trust-chain walks from a pinned --trust trust.json")
    trust_ = load_trust(trust_path, key_path, log_key_path, chain_dir, key_signs_log)
    if state and trust_.chain:
        check_trust(state, trust_)
    at = parse_time(at_time, "--at") if at_time else None
    since = None
    if since_path:  # unreadable or not a checkpoint is bad input (2); a bad signature on one is a failed check
        from provenance.log.logbook import read_since
        since = read_since(since_path)
    return verify_manifest(manifest, trust_, archive, runtime, record, at, state, since), trust_


class Verified:
    """What authentication established: these payload bytes, signed by these trusted release keys,
    parse strictly into a statement of the release schema."""

    def __init__(self, envelope: dict, payload: bytes, statement: dict, signers: set[str]) -> None:
        self.envelope, self.payload, self.statement, self.signers = envelope, payload, statement, signers


def authenticate(env: dict, trust: Trust, out: Outcome, env_dupes: list[str] = (), judge_dir: str | None = None,
                 where: str = "manifest") -> Verified | None:
    """Mechanism (sigstore's Verifier): signatures over the PAE by the release role's keys, its
    threshold of distinct keys, the payload type, strict canonical JSON, the statement schema, and
    the OpenSSH signatures and judge's files agreeing with DSSE. Nothing in the payload is read
    before a trusted key has signed exactly those bytes. None when the payload cannot be trusted
    to say anything; otherwise the statement, with every check in `out`."""
    env_dupes = list(env_dupes)
    payload = payload_of(env, f"{where}: payload")
    ptype = env["payloadType"]
    # 1. signatures over the PAE, by keys we trust, before anything in the payload is read
    release_keys = {k: trust.keys[k][1] for k in trust.release}
    good = signing.verified_keys(ptype, payload, env["signatures"], release_keys)
    names = ", ".join(sorted(trust.keys[k][0] for k in good))
    if not out.add("signatures", bool(good),
                   f"{len(good)} trusted key(s) signed the payload ({names})" if good
                   else f"no valid signature by a trusted key among {len(env['signatures'])} signature(s)"
                   + (f" (trust policy v{trust.version})" if trust.chain else "")):
        return None
    # 2. payload type
    if not out.add("payload_type", ptype == signing.IN_TOTO, f"{ptype}"):
        return None
    # 3. strict parsing
    stmt, dupes = loads_tracking(payload, "payload")
    from provenance.core.canonical import dumps
    canonical_ok = not dupes and isinstance(stmt, dict) and dumps(stmt) == payload
    if not out.add("strict_json", canonical_ok and not env_dupes,
                   "payload is RFC 8785 canonical JSON, no duplicate keys" if canonical_ok and not env_dupes
                   else f"duplicate key(s) {sorted(set(dupes + env_dupes))}" if dupes or env_dupes
                   else "payload is not RFC 8785 canonical JSON"):
        return None
    # 4. threshold of distinct trusted keys (a shortfall fails the outcome; the rest is still shown)
    out.add("threshold", len(good) >= trust.threshold,
            f"{len(good)} of {trust.threshold} required distinct release key(s)")
    # 5. statement schema
    errs = jsonschema_lite.validate(stmt, "release-statement.v1.json")
    if not out.add("statement_schema", not errs, "in-toto Statement v1, comma-lab release predicate"
                   if not errs else errs[0]):
        return None
    out.statement = stmt
    if "ssh" in env:  # the same keys' OpenSSH signatures over the same bytes must tell the same story
        out.checks.append(_check_ssh(env["ssh"], payload, release_keys, good, trust))
    judge = os.path.join(judge_dir, "statement.json") if judge_dir is not None else None
    if judge is not None and os.path.isfile(judge):
        out.checks.append(_check_judge_files(judge, payload, release_keys, good))
    return Verified(env, payload, stmt, good)


def appraise(v: Verified, trust: Trust, out: Outcome, archive: str | None = None, runtime: str | None = None,
             record: str | None = None, at: datetime | None = None, state: str | None = None,
             since: str | None = None) -> None:
    """Policy (sigstore's Policy): what an authenticated statement says, held against the files the
    judge has, the contest's score formula, the record, time, the evidence log and what this
    verifier saw before. It reads the state file and writes nothing."""
    env, payload, stmt = v.envelope, v.payload, v.statement
    pred = stmt["predicate"]
    subjects = subject_digests(stmt)
    # 6. the bytes the judge holds
    if archive is None:
        out.not_checked.append("archive_digest")
    if runtime is None:
        out.not_checked.append("runtime_tree")
    if archive is not None:
        from provenance.core.digest import hash_file
        from provenance.contest.profiles import lfs_pointer
        try:
            with open(archive, "rb") as f:
                pointer = lfs_pointer(f.read(1025))
            d = None if pointer else hash_file(archive)
        except OSError as e:
            raise ProvError(f"{archive}: {e.strerror}") from None
        want = subjects.get("archive.zip", (None, None))
        if pointer:  # a git-LFS pointer binds the release to a repository's commit without the bytes
            sha, size = pointer
            out.add("archive_pointer", sha == want[0] and size == pred["archive_size"],
                    f"git-LFS pointer: oid sha256 {sha[:16]}.. {'matches' if sha == want[0] else 'differs from'} "
                    f"the release ({str(want[0])[:16]}..), size {size:,} "
                    f"{'matches' if size == pred['archive_size'] else 'differs from'} {pred['archive_size']:,}")
            out.not_checked.append("archive_bytes")
        else:
            out.add("archive_digest", (d.sha256, d.blake3) == want and d.size == pred["archive_size"],
                    f"sha256 {d.sha256[:16]}.. {'matches' if d.sha256 == want[0] else 'differs from'} "
                    f"the release ({str(want[0])[:16]}..), {d.size:,} bytes")
    listing = pred.get("runtime_listing")
    if listing is not None:  # the signed listing must describe the signed tree, or it could name anything
        from provenance.core.tree import listing_digest
        from provenance.core.tree_digest import Refused
        want = subjects.get("runtime/", (None, None))
        try:
            same, why = listing_digest(listing) == want, "does not reproduce"
        except Refused as e:
            same, why = False, str(e)
        out.add("runtime_listing", same, f"{len(listing)} entries reproduce the runtime tree digest" if same
                else f"the statement's runtime listing {why} its runtime tree digest")
    if runtime is not None:
        from provenance.core import tree as treemod
        from provenance.core.digest import hash_file
        if not os.path.isdir(runtime):
            raise ProvError(f"{runtime}: not a directory")
        try:
            t = treemod.walk(runtime, lambda p, s: hash_file(p))
            want = subjects.get("runtime/", (None, None))
            same = (t.sha256, t.blake3) == want
            detail = (f"prov-tree-v1 {t.sha256[:16]}.. {'matches' if same else 'differs from'}"
                      f" the release ({str(want[0])[:16]}..)")
            if not same and listing is not None:
                detail += "; " + _tree_differences(listing, runtime)
            out.add("runtime_tree", same, detail)
        except treemod.TreeError as e:
            out.add("runtime_tree", False, str(e))
    # 7. the score follows from its components under the record's profile
    from provenance import contest
    sc = pred["score"]
    try:
        profile = contest.get_profile(pred["profile"])
        again = profile.score(sc["posenet"], sc["segnet"], sc["rate"])
        if profile.stand_ins:
            raise ProvError(f"profile {profile.name}: replayed against labelled stand-ins for "
                            f"{', '.join(profile.stand_ins)}: never a score")
        out.add("score_recomputes", again == sc["canonical"] and sc["samples"] == profile.samples,
                f"{again!r} from components under {profile.name}; statement says {sc['canonical']!r}, "
                f"{sc['samples']} samples" + ("" if sc["samples"] == profile.samples else
                                              f" (the profile's evaluation has {profile.samples}: not its score)"))
    except ProvError as e:
        out.add("score_recomputes", False, str(e))
    # 8. the record behind it
    if record is not None:
        out.checks.append(_check_record(record, pred))
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
            out.checks += check_release_log(env.get("log"), payload, {k: trust.keys[k][1] for k in trust.log},
                                            since, trust.log_threshold, trust.witnesses, trust.witness_threshold,
                                            trust.witness_max_age, int(now.timestamp()),
                                            (trust.log_origin, (pred.get("log") or {}).get("origin")))
    # 11. rollback
    digest = hashlib.sha256(payload).hexdigest()
    if state is not None:
        out.checks.append(_check_state(state, pred, digest))


def _tree_differences(listing: list, runtime: str, most: int = 20) -> str:
    """The paths that differ, as tree_digest.py --check prints them."""
    from provenance.core.tree_digest import differences, tree_sha256
    here: list = []
    tree_sha256(os.fsencode(runtime), listing=here)
    lines = differences(listing, here) or ["no path differs in type, mode, target or content"]
    return "; ".join(lines[:most]) + (f"; and {len(lines) - most} more" if len(lines) > most else "")


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


def _check_ssh(ssh, payload: bytes, release_keys: dict, dsse_good: set[str], trust: Trust) -> Check:
    sigs = [s.get("sshsig") if isinstance(s, dict) else None for s in ssh] if isinstance(ssh, list) else [None]
    good, bad = _ssh_signers(sigs, payload, release_keys)
    if good == dsse_good and not bad:
        return Check("ssh_signatures", True, f"{len(good)} SSHSIG(s) (namespace comma-lab-release) by the same key(s) as DSSE")
    name = lambda ks: ", ".join(sorted(trust.keys[k][0] for k in ks)) or "none"  # noqa: E731
    return Check("ssh_signatures", False, (f"DSSE and SSH signatures disagree: DSSE only {name(dsse_good - good)}; "
                                           f"SSH only {name(good - dsse_good)}; {bad} invalid or untrusted SSHSIG(s)"))


def _sig_texts(folder: str, prefix: str) -> list[str]:
    """The armored signatures in PREFIX*.sig files of a folder."""
    names = sorted(n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".sig"))
    return [read_bytes(os.path.join(folder, n)).decode("utf-8", "replace") for n in names]


def _check_judge_files(statement: str, payload: bytes, release_keys: dict, dsse_good: set[str]) -> Check:
    """The files a judge checks with stock tools, when they lie beside the manifest: the statement,
    its .sig files and, for a release whose checksums are signed, SHA256SUMS, its .sig files and B3SUMS."""
    folder = os.path.dirname(statement)
    if read_bytes(statement) != payload:
        return Check("judge_files", False, f"{statement} is not the signed statement bytes")
    sig_files = _sig_texts(folder, "statement.json")
    good, bad = _ssh_signers(sig_files, payload, release_keys)
    if bad or good != dsse_good:
        return Check("judge_files", False, f"statement.json is the signed payload but {bad} .sig file(s) do not "
                                           "verify or their signers differ from DSSE's")
    said = f"statement.json is the signed payload; {len(sig_files)} .sig file(s) verify by the DSSE signers"
    sums_path = os.path.join(folder, "SHA256SUMS")
    if not os.path.isfile(sums_path):
        return Check("judge_files", True, said)
    from provenance.release.packet import B3SUMS, TOOL, judge_sums
    try:
        tool = read_bytes(os.path.join(folder, TOOL))
        want = judge_sums(payload, tool)
        sums, b3 = read_bytes(sums_path), read_bytes(os.path.join(folder, B3SUMS))
    except OSError as e:
        return Check("judge_files", False, f"{said}; but {e.filename}: {e.strerror}")
    except (KeyError, TypeError, ValueError, StopIteration) as e:  # a signed listing without what sums need
        return Check("judge_files", False, f"{said}; but its checksums cannot be made from the statement ({e!r})")
    if want is None:
        return Check("judge_files", True, said + "; SHA256SUMS unsigned (a release from before signed checksums)")
    sgood, sbad = _ssh_signers(_sig_texts(folder, "SHA256SUMS"), sums, release_keys)
    problems = ([] if sums == want[0] else ["SHA256SUMS is not the checksums of this statement and tree_digest.py"]) \
        + ([] if b3 == want[1] else ["B3SUMS is not the checksums of this statement"]) \
        + ([] if not sbad and sgood == dsse_good else
           [f"{sbad} SHA256SUMS .sig file(s) do not verify or their signers differ from DSSE's"])
    return Check("judge_files", not problems,
                 "; ".join([said, *problems]) if problems else f"{said}; SHA256SUMS, signed by the same keys, "
                 "names it, the archive, every runtime file, B3SUMS and tree_digest.py")


def _check_record(record: str, pred: dict) -> Check:
    from blake3 import blake3
    data = read_input(record)
    sha, b3 = hashlib.sha256(data).hexdigest(), blake3(data).hexdigest()
    if (sha, b3) != (pred["record"]["sha256"], pred["record"]["blake3"]):
        return Check("record_digest", False, f"record file sha256 {sha[:16]}.. is not the released {pred['record']['sha256'][:16]}..")
    rec, _ = loads_tracking(data, record)
    r = rec.get("result", {}) if isinstance(rec, dict) else {}
    same = (r.get("canonical_score") == pred["score"]["canonical"] and r.get("samples") == pred["score"]["samples"]
            and rec.get("grade") == pred["grade"])
    return Check("record_digest", same, ("record bytes match; score, samples and grade agree" if same
                                         else "record bytes match but its result disagrees with the statement"))


def _check_state(state: str, pred: dict, digest: str) -> Check:
    seen = read_state(state).get("releases", {}).get(pred["name"])
    if not seen:
        return Check("rollback", True, f"first sight of {pred['name']} (v{pred['version']}); remembered in {state}")
    v = pred["version"]
    if v < seen["version"]:
        return Check("rollback", False, f"version {v} is older than v{seen['version']} seen before: rollback")
    if v == seen["version"] and digest != seen["statement_sha256"]:
        return Check("rollback", False, f"a different statement for v{v} was seen before: fork")
    return Check("rollback", True, f"v{v} >= v{seen['version']} seen before")
