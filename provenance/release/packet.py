"""The judge's packet: a release folder that stands alone.

It holds the signed statement, one SSHSIG per signing key, the checksum files and
`tree_digest.py` (bound to the signature: SHA256SUMS names every other file, statement.json
included, and each release key signs SHA256SUMS in the same namespace, as distributions sign
theirs), the trust policy it was signed under with its chain, `allowed_signers`, the log's
note verifier key, and a README naming the commands in order with this release's identities.

SHA256SUMS and B3SUMS follow from the statement alone (its runtime listing) and the bytes
of `tree_digest.py`, so the signer signs them when it signs the statement, and an export
later writes exactly the bytes that were signed, or refuses.
"""

from __future__ import annotations

import hashlib
import os

from provenance.core.errors import ProvError, VerificationFailed

TOOL = "tree_digest.py"
SUMS, B3SUMS, README = "SHA256SUMS", "B3SUMS", "README"
# what a packet holds beside archive.zip and runtime/; the site publishes the same files
FILES = ("README", "manifest.json", "statement.json", "SHA256SUMS", "B3SUMS", TOOL, "allowed_signers",
         "trust.json", "log.vkey")


def tool_bytes() -> bytes:
    from provenance.core import tree_digest
    from provenance.core.files import read_bytes
    return read_bytes(tree_digest.__file__)


def judge_sums(payload: bytes, tool: bytes | None = None) -> tuple[bytes, bytes] | None:
    """(SHA256SUMS, B3SUMS) of a packet, from the statement's bytes and tree_digest.py's; None for a
    statement made before releases listed their runtime (its checksums cannot be signed)."""
    from blake3 import blake3
    from provenance.core.canonical import loads
    stmt = loads(payload, "statement")
    listing = stmt["predicate"].get("runtime_listing")
    if listing is None:
        return None
    tool = tool_bytes() if tool is None else tool
    archive = next(s["digest"] for s in stmt["subject"] if s["name"] == "archive.zip")
    files = [(e["path"], e["sha256"], e["blake3"]) for e in listing if e["type"] in ("file", "exec")]
    sha = [(archive["sha256"], "archive.zip"), *((s, f"runtime/{p}") for p, s, _ in files),
           (hashlib.sha256(payload).hexdigest(), "statement.json"), (hashlib.sha256(tool).hexdigest(), TOOL)]
    b3 = [(archive["blake3"], "archive.zip"), *((b, f"runtime/{p}") for p, _, b in files),
          (blake3(payload).hexdigest(), "statement.json"), (blake3(tool).hexdigest(), TOOL)]
    b3sums = "".join(f"{d}  {n}\n" for d, n in b3).encode()
    sha.append((hashlib.sha256(b3sums).hexdigest(), B3SUMS))
    return "".join(f"{d}  {n}\n" for d, n in sha).encode(), b3sums


def sig_name(file: str, identity: str) -> str:
    """A signature file's name: what the signer's identity signed, as the README's commands name it."""
    return f"{file}.{identity}.sig"


def export_checksums(manifest: dict, runtime: str | os.PathLike, out_dir: str | os.PathLike,
                     archive: str | os.PathLike | None = None) -> list:
    """SHA256SUMS and B3SUMS naming `archive.zip` and `runtime/...` as they sit in a judge's folder,
    after checking the files given are the released ones."""
    from pathlib import Path  # the writing side only: verify imports judge_sums and no pathlib
    from provenance.core import tree as treemod
    from provenance.core.digest import hash_file
    from provenance.core.files import write_atomic
    from provenance.records.envelope import payload_of, statement_of, subject_digests
    subjects = subject_digests(statement_of(manifest))
    if "archive.zip" not in subjects or "runtime/" not in subjects:
        raise ProvError("manifest: statement lacks the archive.zip and runtime/ subjects")
    if archive is not None and hash_file(archive).sha256 != subjects["archive.zip"][0]:
        raise VerificationFailed(f"{archive}: is not the released archive.zip")
    rt = treemod.walk(runtime, lambda p, s: hash_file(p))
    if rt.sha256 != subjects["runtime/"][0]:
        raise VerificationFailed(f"{runtime}: tree {rt.sha256} is not the released runtime "
                                 f"{subjects['runtime/'][0]}")
    out = Path(out_dir)
    sums = judge_sums(payload_of(manifest))
    if sums is None:  # an older statement: checksums of the files themselves, unsigned
        sha_lines = [f"{subjects['archive.zip'][0]}  archive.zip"]
        b3_lines = [f"{subjects['archive.zip'][1]}  archive.zip"]
        for rel, full in treemod.iter_files(os.fsencode(runtime)):
            d = hash_file(full)
            sha_lines.append(f"{d.sha256}  runtime/{rel}")
            b3_lines.append(f"{d.blake3}  runtime/{rel}")
        sums = (("\n".join(sha_lines) + "\n").encode(), ("\n".join(b3_lines) + "\n").encode())
    files = [out / SUMS, out / B3SUMS]
    write_atomic(files[0], sums[0])
    write_atomic(files[1], sums[1])
    return files


def write_packet(manifest: dict, runtime: str | os.PathLike, out_dir: str | os.PathLike, archive: str | os.PathLike | None = None,
                 trust: str | os.PathLike | None = None, chain_dir: str | os.PathLike | None = None) -> list:
    """Everything a judge needs beside archive.zip and runtime/, and nothing else. Everything is read
    and checked before the first byte is written: a refused export leaves the folder as it was."""
    from pathlib import Path
    from provenance.core import sshsig
    from provenance.core.files import write_atomic, write_json
    from provenance.records.envelope import payload_of, statement_of
    out = Path(out_dir)
    payload = payload_of(manifest)
    stmt = statement_of(manifest)
    signers: dict[str, dict] = {}  # distinct keys, in signing order
    for s in manifest.get("ssh", []):
        signers.setdefault(s["keyid"], s)
    tool = tool_bytes()
    sums = judge_sums(payload, tool)
    for kid, s in signers.items():  # each key's own signature over exactly these checksums
        raw = sshsig.verify(s.get("sums_sshsig") or "", sums[0]) if sums is not None else b""
        if sums is not None and (raw is None or hashlib.sha256(raw).hexdigest() != kid):
            raise VerificationFailed(
                f"manifest: key {sshsig.identity(kid)} has no SSHSIG over the SHA256SUMS made here (none, or made "
                f"with another prov's {TOOL}): the export would publish checksums nobody signed")
    tdoc = policy = None
    chain: list[tuple[str, bytes]] = []
    log_keys: list[str] = []
    trust_bytes = b""
    if trust is not None:
        from provenance.release.chain import chain_files, walk_chain
        from provenance.release.trust import note_verifiers, read_trust_doc, role_keys
        tdoc = policy = read_trust_doc(trust)
        trust_bytes = Path(trust).read_bytes()
        if chain_dir is not None:
            policy, _ = walk_chain(tdoc, chain_dir, str(trust))
            chain = [(Path(p).name, Path(p).read_bytes()) for p in chain_files(chain_dir)]  # read before any write
        release, threshold = role_keys(policy, "release", str(trust))
        have = len(release.keys() & signers.keys())
        if have < threshold:
            raise VerificationFailed(f"manifest: SSH-signed by {have} of the {threshold} release keys "
                                     f"the trust policy (v{policy['version']}) requires: a judge's stock tools "
                                     "would not see the shortfall")
        log_keys = note_verifiers(policy)
    files = export_checksums(manifest, runtime, out, archive)  # checks archive and runtime, then writes the sums
    write_json(out / "manifest.json", manifest)
    files.append(out / "manifest.json")
    ids = {kid: sshsig.identity(kid) for kid in signers}
    keep = {sig_name(f, i) for i in ids.values() for f in ("statement.json", SUMS)}
    for stale in [*out.glob("statement.json*.sig"), *out.glob(f"{SUMS}*.sig")]:
        if stale.name not in keep:  # a signer of an earlier export must not linger
            stale.unlink()
    write_atomic(out / "statement.json", payload)
    files.append(out / "statement.json")
    for kid, s in signers.items():
        write_atomic(out / sig_name("statement.json", ids[kid]), s["sshsig"].encode())
        files.append(out / sig_name("statement.json", ids[kid]))
        if sums is not None:
            write_atomic(out / sig_name(SUMS, ids[kid]), s["sums_sshsig"].encode())
            files.append(out / sig_name(SUMS, ids[kid]))
    write_atomic(out / TOOL, tool)
    files.append(out / TOOL)
    if tdoc is not None:
        from provenance.release.trust import allowed_signers
        write_atomic(out / "trust.json", trust_bytes)
        files.append(out / "trust.json")
        for name, data in chain:
            write_atomic(out / "trust-chain" / name, data)
            files.append(out / "trust-chain" / name)
        write_atomic(out / "allowed_signers", allowed_signers(policy).encode())
        files.append(out / "allowed_signers")
        if log_keys:
            write_atomic(out / "log.vkey", ("\n".join(log_keys) + "\n").encode())
            files.append(out / "log.vkey")
    trust_sha = hashlib.sha256(trust_bytes).hexdigest() if tdoc is not None else None
    text = readme(stmt, payload, list(ids.values()), sums is not None, tdoc, trust_sha, policy, bool(chain),
                  log_keys, has_record=(out / "record.json").is_file(), tool_sha=hashlib.sha256(tool).hexdigest())
    write_atomic(out / README, text.encode())
    files.append(out / README)
    return files


def stock_commands(identities: list[str], sums_signed: bool = True) -> list[str]:
    """The stock-tool checks in the order a judge runs them (the README's and the site's)."""
    cmds = [f"python3 -I {TOOL} --allowed-signers trust.json | cmp - allowed_signers   # the keys are trust.json's"]
    for ident in identities if sums_signed else []:
        cmds.append(f"ssh-keygen -Y verify -f allowed_signers -I {ident} -n comma-lab-release "
                    f"-s {sig_name(SUMS, ident)} < {SUMS}")
    for ident in identities:
        cmds.append(f"ssh-keygen -Y verify -f allowed_signers -I {ident} -n comma-lab-release "
                    f"-s {sig_name('statement.json', ident)} < statement.json")
    cmds += [f"sha256sum -c {SUMS}" + ("   # statement.json, archive.zip, every runtime/ file, B3SUMS, "
                                       "tree_digest.py" if sums_signed else "   # archive.zip, every runtime/ file"),
             f"b3sum -c {B3SUMS}",
             f"python3 -I {TOOL} --check statement.json   # the runtime/ tree (links, exec bits, empty "
             "directories) and the score against the statement; names each path that differs"]
    return cmds


def readme(stmt: dict, payload: bytes, ids: list[str], sums_signed: bool, tdoc: dict | None,
           trust_sha: str | None, policy: dict | None, chained: bool, log_keys: list[str], has_record: bool,
           tool_sha: str) -> str:
    pred = stmt["predicate"]
    sc = pred["score"]
    subj = {s["name"]: s["digest"] for s in stmt["subject"]}
    tree = subj["runtime/"].get("prov-tree-v1-sha256") or subj["runtime/"].get("sha256")
    lines = [
        f"Release {pred['name']} v{pred['version']}: the judge's packet (comma-lab provenance)",
        "",
        f"score           {sc['canonical']!r} = 100*segnet + sqrt(10*posenet) + 25*rate "
        f"(segnet {sc['segnet']!r}, posenet {sc['posenet']!r}, rate {sc['rate']!r}; {sc['samples']} samples)",
        f"profile, grade  {pred['profile']}, {pred['grade']}",
        f"archive.zip     sha256 {subj['archive.zip']['sha256']}  ({pred['archive_size']:,} bytes)",
        f"runtime/        prov-tree-v1 sha256 {tree}",
        f"statement.json  sha256 {hashlib.sha256(payload).hexdigest()}",
        f"signed by       {', '.join(ids) or 'no SSH signature'}",
    ]
    if policy is not None:
        rel = policy["roles"]["release"]
        lines.append(f"required        {rel['threshold']} of the {len(rel['keys'])} release key(s) of trust policy "
                     f"v{policy['version']}: check every identity above")
    if tdoc is not None:
        lines.append(f"trust policy    trust.json v{tdoc['version']}, sha256 {trust_sha}; "
                     + (f"walked to v{policy['version']} by trust-chain/ (stock tools cannot walk a chain: "
                        "prov verify --trust-chain does); " if chained else "")
                     + "compare it with the policy the lab published before you trust this folder")
    lines += ["", "Put archive.zip and runtime/ beside these files, then, with stock tools only (OpenSSH, coreutils,",
              f"b3sum, any Python 3 run with -I; {TOOL} is stdlib only: read it once, its sha256 is "
              f"{tool_sha}):", ""]
    lines += [f"  {c}" for c in stock_commands(ids, sums_signed)]
    if not sums_signed:
        lines += ["", "This release predates signed checksums: SHA256SUMS and B3SUMS are not signed, so they only",
                  "show the files are intact; tree_digest.py --check and prov verify tie them to the statement."]
    if tdoc is None:
        lines += ["", "This folder was exported without the trust policy: get allowed_signers and trust.json from",
                  "the lab (prov trust allowed-signers trust.json --out allowed_signers)."]
    verify = ("prov verify manifest.json --trust trust.json" + (" --trust-chain trust-chain/" if chained else "")
              + " --archive archive.zip --runtime runtime/" + (" --record record.json" if has_record else ""))
    lines += ["", "Or with prov (pip install comma_lab-*.whl), which also checks the log and the record:", "",
              f"  {verify}"]
    if log_keys:
        lines += ["", "The evidence log's checkpoints (manifest.json, field log) are C2SP signed notes; Go's",
                  "golang.org/x/mod/sumdb/note reads them with the verifier key in log.vkey."]
    return "\n".join(lines) + "\n"
