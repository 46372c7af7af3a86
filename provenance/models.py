"""Pydantic models: the one source of truth for every schema (JSON Schemas in schemas/ are generated)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import canonical
from .digest import digest_bytes

HEX64 = r"^[0-9a-f]{64}$"
EVAL_RECORD_SCHEMA = "comma-lab/eval-record/v1"


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


class Upstream(Strict):
    commit: Optional[str] = None
    evaluate_sha256: Optional[str] = Field(default=None, pattern=HEX64)
    scorer_weights: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    videos_tree: Optional[TreeDigest] = None
    uncompressed_size: Optional[int] = Field(default=None, ge=0)


class Environment(Strict):
    device: Optional[str] = None
    gpu_model: Optional[str] = None
    driver: Optional[str] = None
    cuda: Optional[str] = None
    torch: Optional[str] = None
    python: Optional[str] = None
    platform: Optional[str] = None
    sandboxed: Optional[bool] = None


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


class CheckResult(Strict):
    name: str
    ok: bool
    detail: str
    severity: Literal["error", "flag"] = "error"


class EvalRecord(Strict):
    schema_id: Literal["comma-lab/eval-record/v1"] = Field(default=EVAL_RECORD_SCHEMA, alias="schema")
    profile: str
    source: Literal["replay", "imported-report", "legacy-import"]
    archive: BlobDigest
    runtime: Runtime = Field(default_factory=Runtime)
    upstream: Upstream = Field(default_factory=Upstream)
    environment: Environment = Field(default_factory=Environment)
    result: Result
    report: Optional[BlobDigest] = None
    inflated: Optional[TreeDigest] = None
    timings: dict[str, float] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)
    grade: Literal["A++", "A", "contest-CPU", "B", "external", "invalid"]
    axis: str
    allowed_use: str
    label: Optional[str] = None
    created_at: str

    @field_validator("created_at")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        from datetime import datetime
        datetime.fromisoformat(v.replace("Z", "+00:00"))
        return v

    def to_json_obj(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def canonical_bytes(self) -> bytes:
        return canonical.dumps(self.to_json_obj())

    def digest(self):
        return digest_bytes(self.canonical_bytes())


def load_record(data: bytes, where: str = "record") -> EvalRecord:
    from pydantic import ValidationError
    from .errors import ProvError
    obj = canonical.loads(data, where)
    try:
        return EvalRecord.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ProvError(f"{where}: not an {EVAL_RECORD_SCHEMA} record ({loc}: {first['msg']})") from None


SCHEMAS = {"eval-record.v1.json": EvalRecord}


def json_schemas() -> dict[str, dict]:
    return {name: model.model_json_schema(by_alias=True) for name, model in SCHEMAS.items()}


def write_schemas(out_dir) -> list[str]:
    import json
    from pathlib import Path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return sorted(json_schemas())


if __name__ == "__main__":  # python -m provenance.models schemas/
    import sys
    print("\n".join(write_schemas(sys.argv[1] if len(sys.argv) > 1 else "schemas")))
