"""Pydantic models: the one source of truth for every schema (JSON Schemas in schemas/ are generated)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from provenance.core import canonical
from provenance.core.digest import digest_bytes
from provenance.core.errors import ProvError
from provenance.records.kinds import EVAL_RECORD_SCHEMA, STATEMENT_TYPE

HEX64 = r"^[0-9a-f]{64}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BlobDigest(Strict):
    sha256: str = Field(pattern=HEX64)
    blake3: Optional[str] = Field(default=None, pattern=HEX64)
    size: int = Field(ge=0)


class TreeDigest(Strict):
    """prov-tree-v1 digests (docs/FORMATS.md)."""
    sha256: str = Field(pattern=HEX64)
    blake3: str = Field(pattern=HEX64)
    size: int = Field(ge=0)


class Runtime(Strict):
    tree: Optional[TreeDigest] = None
    legacy_v1_sha256: Optional[str] = Field(default=None, pattern=HEX64,
                                            description="comma-lab v1 runtime_tree_sha256, when imported")
    legacy_content_sha256: Optional[str] = Field(default=None, pattern=HEX64)
    file_count: Optional[int] = Field(default=None, ge=0)
    information: Optional[int] = Field(default=None, ge=0,
                                       description="bytes of the pinned compressor over the canonical listing "
                                                   "and every file's bytes (custody)")
    information_compressor: Optional[str] = None


class Upstream(Strict):
    commit: Optional[str] = None
    evaluate_sha256: Optional[str] = Field(default=None, pattern=HEX64)
    scorer_weights: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    videos_tree: Optional[TreeDigest] = None
    uncompressed_size: Optional[int] = Field(default=None, ge=0)
    tree: Optional[TreeDigest] = Field(default=None, description="the stored upstream the replay exported")
    lfs: dict[str, str] = Field(default_factory=dict, description="path -> resolved | pointer only")
    ignored: list[str] = Field(default_factory=list,
                               description="files of the checkout no phase saw (and tracked files never stored)")


class Environment(Strict):
    device: Optional[str] = None
    gpu_model: Optional[str] = None
    driver: Optional[str] = None
    cuda: Optional[str] = None
    torch: Optional[str] = None
    python: Optional[str] = None
    interpreter: Optional[str] = Field(default=None, description="the Python inflate and evaluate ran: a venv or "
                                                                 "a base install; prov's own or given with --python")
    platform: Optional[str] = None
    sandboxed: Optional[bool] = None
    sandbox_env: Optional[dict[str, str]] = Field(default=None, description="the environment allow-list used")
    packages: Optional[dict[str, str]] = Field(default=None, description="the Python environment's distributions")
    env_sha256: Optional[str] = Field(default=None, pattern=HEX64,
                                      description="sha256 of the sorted [name, version, sha256 of RECORD] rows")
    env_foreign: Optional[list[str]] = Field(default=None,
                                             description="what of the lab (comma-lab) or start-up hooks (.pth) it holds")


class PhaseView(Strict):
    """What one sandboxed phase saw and could write, in symbolic paths (no machine paths)."""
    sees: list[str]
    writes: list[str]
    hidden: list[str] = Field(default_factory=list, description="absent from the phase, not merely unreadable")
    write_cap: Optional[int] = Field(default=None, description="bytes the phase could leave in what it writes")
    sees_sha256: Optional[str] = Field(default=None, pattern=HEX64,
                                       description="sha256 of the canonical list of [path, sha256] of the upstream "
                                                   "files the phase saw: two views of other bytes never match")


class SandboxRecord(Strict):
    phases: dict[str, PhaseView] = Field(default_factory=dict)
    limits: dict[str, int | float] = Field(default_factory=dict, description="whole-phase caps, bytes and seconds")
    no_new_user_namespaces: bool = False
    kept_by: dict[str, str] = Field(default_factory=dict,
                                    description="per phase, what kept its memory and process limits: cgroup-v1 or watchdog")


class Result(Strict):
    samples: int = Field(ge=0)
    posenet: float = Field(ge=0)
    segnet: float = Field(ge=0)
    rate: float = Field(ge=0)
    canonical_score: float
    printed_score: Optional[str] = None
    printed: dict[str, str] = Field(default_factory=dict, description="result values exactly as printed")
    archive_size_reported: Optional[int] = None
    uncompressed_size_reported: Optional[int] = None
    custody_adjusted_rate: Optional[float] = Field(
        default=None, ge=0, description="(archive + max(0, runtime information - free part)) / uncompressed size")


class CheckResult(Strict):
    name: str
    ok: bool
    detail: str
    severity: Literal["error", "flag", "not-checked"] = Field(
        default="error", description="error: contradicts the evidence; flag: a softer finding; "
                                     "not-checked: the check could not run (ok is then false), e.g. no archive given")


class EvalRecord(Strict):
    schema_id: Literal["comma-lab/eval-record/v1"] = Field(default=EVAL_RECORD_SCHEMA, alias="schema")
    profile: str
    source: Literal["replay", "imported-report", "legacy-import"]
    archive: Optional[BlobDigest] = Field(default=None, description=(
        "The archive.zip the result is bound to. Absent only in a claim not bound to an archive "
        "(`prov adjudicate REPORT` without --archive): such a record is an imported report graded "
        "external (or invalid), and its archive checks say 'not checked'."))
    runtime: Runtime = Field(default_factory=Runtime)
    upstream: Upstream = Field(default_factory=Upstream)
    environment: Environment = Field(default_factory=Environment)
    result: Result
    report: Optional[BlobDigest] = None
    inflated: Optional[TreeDigest] = None
    logs: dict[str, BlobDigest] = Field(default_factory=dict, description="phase output tails, by phase.stream")
    timings: dict[str, float] = Field(default_factory=dict)
    sandbox: Optional[SandboxRecord] = Field(default=None, description="each phase's view and the limits, for replays")
    frames: Optional[dict[str, BlobDigest]] = Field(
        default=None, description="PNG illustrations by <video>/<original|reconstruction>/<index>; never score authority")
    checks: list[CheckResult] = Field(default_factory=list)
    grade: Literal["A++", "A", "contest-CPU", "B", "external", "invalid"]
    axis: str
    allowed_use: str
    label: Optional[str] = None
    created_at: str

    # the schema states the rule for a claim without bytes, so readers need not find it in code
    model_config = ConfigDict(**Strict.model_config, json_schema_extra={
        "if": {"not": {"required": ["archive"]}},
        "then": {"properties": {"source": {"const": "imported-report"},
                                "grade": {"enum": ["external", "invalid"]}}},
    })

    @model_validator(mode="after")
    def _claim_without_bytes(self):
        if self.archive is None and (self.source != "imported-report" or self.grade not in ("external", "invalid")):
            raise ValueError("a record without an archive is an imported claim graded external or invalid")
        return self

    @field_validator("created_at")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        from provenance.core.clock import parse_time
        try:
            parse_time(v, "created_at")
        except ProvError as e:  # as a ValueError, so pydantic reports the field as invalid
            raise ValueError(str(e)) from None
        return v

    def to_json_obj(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def canonical_bytes(self) -> bytes:
        return canonical.dumps(self.to_json_obj())

    def digest(self):
        return digest_bytes(self.canonical_bytes())


# -- trust policy and release statements ---------------------------------------------------

TRUST_POLICY_SCHEMA = "comma-lab/trust-policy/v1"
RELEASE_PREDICATE = "https://comma-lab.dev/provenance/release/v1"
REF_SAFE = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"


class TrustedKey(Strict):
    keyid: str = Field(pattern=HEX64, description="hex SHA-256 of the raw 32-byte Ed25519 public key")
    public_key: str = Field(description="PEM SubjectPublicKeyInfo")
    note_verifier: Optional[str] = Field(default=None, description="log keys: C2SP signed-note verifier key "
                                         "(name+hash+base64(0x01 || key)), as golang.org/x/mod/sumdb/note reads "
                                         "it; witness keys: their cosigner vkey (type 0x04), which names them")


class Role(Strict):
    keys: list[str] = Field(min_length=1, description="names of keys in `keys`")
    threshold: int = Field(ge=1)
    max_age: Optional[int] = Field(default=None, ge=1, description="witness role: seconds a cosignature counts "
                                   "after its timestamp (none: no limit)")
    origin: Optional[str] = Field(default=None, min_length=1, description="log role: the origin line of the one "
                                  "log its keys sign for (required with a witness role: witnesses vouch for one log)")


class TrustSignature(Strict):
    keyid: str = Field(pattern=HEX64)
    sig: str


class TrustPolicy(Strict):
    """What a judge pins: which keys may sign releases (k of n) and log checkpoints."""
    schema_id: Literal["comma-lab/trust-policy/v1"] = Field(default=TRUST_POLICY_SCHEMA, alias="schema")
    version: int = Field(ge=1)
    expires: str
    issued_at: Optional[str] = Field(default=None, description="when this version was signed (rotation)")
    keys: dict[str, TrustedKey]
    roles: dict[Literal["release", "log", "root", "witness"], Role] = Field(
        description="root (default: the release role) signs the next version of this policy; witness: "
                    "cosigners of the log's checkpoints a release needs")
    signatures: Optional[list[TrustSignature]] = Field(
        default=None, description="Ed25519 over PAE(trust payload type, RFC 8785 of this object without "
                                  "signatures) by root keys of this and the previous version")


class DigestSet(Strict):
    sha256: str = Field(pattern=HEX64)
    blake3: str = Field(pattern=HEX64)


class TreeDigestSet(Strict):
    """A prov-tree-v1 digest: in-toto reserves `sha256` for a file's plain bytes, so the keys name our algorithm."""
    tree_sha256: str = Field(pattern=HEX64, alias="prov-tree-v1-sha256")
    tree_blake3: str = Field(pattern=HEX64, alias="prov-tree-v1-blake3")


class Subject(Strict):
    name: str
    digest: Union[DigestSet, TreeDigestSet]
    annotations: dict[str, str] = Field(default_factory=dict)


class Score(Strict):
    canonical: float
    posenet: float = Field(ge=0)
    segnet: float = Field(ge=0)
    rate: float = Field(ge=0)
    samples: int = Field(ge=0)


class RuntimeEntry(Strict):
    """One entry of the runtime tree as a release lists it (tree_digest.py reads the same)."""
    path: str = Field(min_length=1)
    type: Literal["file", "exec", "link", "tree"]
    size: Optional[int] = Field(default=None, ge=0)
    sha256: Optional[str] = Field(default=None, pattern=HEX64)
    blake3: Optional[str] = Field(default=None, pattern=HEX64)
    target: Optional[str] = None


class ReleasePredicate(Strict):
    name: str = Field(pattern=REF_SAFE)
    version: int = Field(ge=1, description="monotonic per release name")
    previous: Optional[str] = Field(default=None, pattern=HEX64,
                                    description="sha256 of the previous statement of this name")
    issued_at: str
    expires: Optional[str] = None
    profile: str
    score: Score
    archive_size: int = Field(ge=0)
    grade: Literal["A++", "A", "contest-CPU", "B", "external", "invalid"]
    axis: str
    record: DigestSet
    upstream: Upstream
    log: Optional[dict[str, str]] = Field(default=None, description="where the evidence is logged (origin)")
    runtime_listing: Optional[list[RuntimeEntry]] = Field(
        default=None, description="every entry of runtime/ (prov-tree-v1 order); it reproduces the runtime subject")


class Statement(Strict):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(default=STATEMENT_TYPE, alias="_type")
    subject: list[Subject] = Field(min_length=2, max_length=2)
    predicateType: Literal["https://comma-lab.dev/provenance/release/v1"] = RELEASE_PREDICATE
    predicate: ReleasePredicate

    def to_json_obj(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def load_record(data: bytes, where: str = "record") -> EvalRecord:
    from pydantic import ValidationError
    from provenance.core.errors import ProvError
    obj = canonical.loads(data, where)
    try:
        return EvalRecord.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ProvError(f"{where}: not an {EVAL_RECORD_SCHEMA} record ({loc}: {first['msg']})") from None


SCHEMAS = {"eval-record.v1.json": EvalRecord, "trust-policy.v1.json": TrustPolicy,
           "release-statement.v1.json": Statement}
SCHEMA_DIR = __import__("pathlib").Path(__file__).parent / "schemas"


def json_schemas() -> dict[str, dict]:
    return {name: {"$schema": "https://json-schema.org/draft/2020-12/schema",
                   "$id": f"https://comma-lab.dev/schemas/{name}", **model.model_json_schema(by_alias=True)}
            for name, model in SCHEMAS.items()}


def write_schemas(out_dir) -> list[str]:
    import json
    from pathlib import Path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return sorted(json_schemas())


if __name__ == "__main__":  # python -m provenance.records.models: regenerate provenance/records/schemas/
    print("\n".join(write_schemas(SCHEMA_DIR)))
