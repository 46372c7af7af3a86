"""Never a traceback (issue 13, item 3): every kind of input a judge may hand `prov`, mutated by
hypothesis (byte edits, structural JSON edits, payloads re-signed by a trusted key so the deep
checks run), must end in a documented exit code with one line, never a traceback.

Valid inputs are made once per module; each case runs the real command in-process (click's
CliRunner), so thousands of cases per kind fit in CI. PROV_FUZZ_EXAMPLES overrides the count."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import rfc8785
from hypothesis import given, strategies as st

from fuzzkit import FUZZ, assert_clean, byte_mutant, cases, each, invoke, json_mutant, library_outcome, mutant
from provenance.core import signing
from conftest import report


class Case:
    """A scratch file per kind, rewritten for each example."""

    def __init__(self, world, name):
        self.path = world["fast"] / "cases" / name  # tmpfs where there is one: state files are fsynced
        self.path.parent.mkdir(exist_ok=True)

    def write(self, data: bytes) -> Path:
        self.path.write_bytes(data)
        return self.path


def run(world, args, allowed=(0, 1, 2, 3)):
    full = ["--store", world["store"], *args]
    res = invoke(full)
    assert_clean(res, full, allowed)
    return res


# -- the kinds ------------------------------------------------------------------------------------

def fuzz(strategy, one) -> None:
    """EXAMPLES cases of `strategy`, each run through `one`."""
    @FUZZ
    @given(cases(strategy))
    def check(batch):
        each(batch, one)
    check()


def test_fuzz_report(world):
    case = Case(world, "report.txt")
    base = report()
    fuzz(st.one_of(byte_mutant(base), st.text(max_size=40).map(
        lambda t: base.replace(b"0.38042614", t.encode("utf-8", "surrogatepass")))),
        lambda data: run(world, ["adjudicate", case.write(data), "--archive", world["archive"]]))


def test_fuzz_legacy_record(world):
    case = Case(world, "legacy.json")
    fuzz(mutant(world["legacy"]), lambda data: run(world, ["import-legacy", case.write(data)]))


def _resigned(world, stmt_bytes: bytes) -> dict:
    env = dict(world["env"])
    env["payload"] = base64.b64encode(stmt_bytes).decode()
    env["signatures"] = [signing.sign(world["key"], env["payloadType"], stmt_bytes)]
    return env


def test_fuzz_manifest(world):
    """The envelope as bytes and as JSON, and statements a trusted key signed (1e400, huge integers,
    wrong types: everything after the signature check is reached)."""
    case = Case(world, "manifest.json")
    stmt = world["statement"]
    signed = json_mutant(stmt).map(lambda b: json.dumps(_resigned(world, b)).encode())

    def canonical_signed(data: bytes) -> bytes:
        try:  # the same mutant in RFC 8785 form, so strict_json passes and the schema is next
            return json.dumps(_resigned(world, rfc8785.dumps(json.loads(data)))).encode()
        except Exception:
            return json.dumps(_resigned(world, data)).encode()
    fuzz(st.one_of(mutant(world["env"]), signed, json_mutant(stmt).map(canonical_signed)),
         lambda data: run(world, ["verify", "--no-files", case.write(data), "--trust", world["trust"], "--json"]))


def test_fuzz_trust_policy(world):
    case = Case(world, "trust.json")
    fuzz(mutant(json.loads(world["trust"].read_bytes())),
         lambda data: run(world, ["verify", "--no-files", world["manifest"], "--trust", case.write(data)]))


def test_fuzz_state_file(world):
    case = Case(world, "state.json")
    fuzz(mutant(json.loads(world["state"].read_bytes())),
         lambda data: run(world, ["verify", "--no-files", world["manifest"], "--trust", world["trust"], "--state", case.write(data)]))


def test_fuzz_checkpoint_note(world):
    case = Case(world, "cp.note")
    note = world["cp1"].read_bytes()
    lines = note.decode().split("\n")

    def with_line(i, text):
        out = list(lines)
        out[i % len(out)] = text
        return "\n".join(out).encode("utf-8", "surrogatepass")

    def one(data):  # the note as --since of a release, or as the old side of log consistency
        if len(data) % 2:
            run(world, ["verify", "--no-files", world["manifest"], "--trust", world["trust"], "--since", case.write(data)])
        else:
            run(world, ["log", "consistency", case.write(data), world["cp1"]])
    fuzz(st.one_of(byte_mutant(note), st.builds(with_line, st.integers(0, 5), st.one_of(
        st.text(max_size=30), st.sampled_from(["١٢", "٣", "²", "+1", "-1", "1e3", "99999999999999999999999"])))), one)


def test_fuzz_log_bundle(world):
    """The unsigned `log` field of a release: every field of the wrong type, bad proofs."""
    case = Case(world, "manifest-log.json")
    env = world["env"]

    def put(data: bytes) -> bytes:
        try:
            bundle = json.loads(data)
            return json.dumps({**env, "log": bundle}).encode()
        except (ValueError, RecursionError):
            return data
    fuzz(json_mutant(env["log"]).map(put),
         lambda data: run(world, ["verify", "--no-files", case.write(data), "--trust", world["trust"], "--since", world["cp1"]]))


def test_fuzz_site_bundle(world):
    man = world["site"] / "public_bundle_manifest.json"
    good = man.read_bytes()

    def one(data):
        man.write_bytes(data)
        run(world, ["site", "check", world["site"]])
    try:
        fuzz(mutant(world["site_manifest"]), one)
    finally:
        man.write_bytes(good)


def test_fuzz_arguments(world):
    """Arguments are input too: times, thresholds, digests, ref names."""
    tmp = world["tmp"]

    def one(pair):
        which, value = pair
        if "\x00" in value:
            return  # argv cannot carry NUL
        if which == "trust-expires":
            args = ["trust", "init", "--release-key", tmp / "a/key.pub.pem", "--expires", value,
                    "--out", world["fast"] / "cases" / "t.json"]
        elif which == "verify-at":
            args = ["verify", "--no-files", world["manifest"], "--trust", world["trust"], "--at", value]
        elif which == "cat":
            args = ["cat", value]
        elif which == "ref":
            args = ["ref", "get", value]
        else:
            args = ["log", "prove", world["manifest"].name, "--size", value]
        run(world, args)
    fuzz(st.tuples(st.sampled_from(["trust-expires", "verify-at", "cat", "ref", "prove-size"]), st.text(max_size=40)),
         one)


# -- zip intake (the lead rewrites intake.py for issue 11; these cases are for that code to pass) --

def _zip_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def test_fuzz_zip_intake(world):
    """Mutated archives through safe intake: refused with IntakeError (exit 2) or extracted, nothing else.
    LEAD: intake.py is yours (issue 11); re-run this after merging."""
    from provenance.replay import intake
    base = _zip_bytes([("a.raw", b"x" * 100), ("sub/b.bin", os.urandom(64)), ("c.txt", b"hello\n")])
    case = Case(world, "archive.zip")
    out = world["fast"] / "cases" / "unzipped"

    def one(data):
        shutil.rmtree(out, ignore_errors=True)
        library_outcome(intake.extract, case.write(data), out)
    fuzz(byte_mutant(base), one)
