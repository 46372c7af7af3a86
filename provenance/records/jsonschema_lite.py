"""Validate JSON against the schemas pydantic generates, without importing pydantic.

`prov verify` must start fast on a bare install; building the pydantic models costs more
than the rest of verification. The models stay the single source of truth: their
generated schemas (provenance/records/schemas/) are what this checks against, and a test feeds
both the same documents. Supports the subset pydantic emits: $ref, anyOf, const, enum,
type, properties, required, additionalProperties, propertyNames, items, min/maxItems,
minLength, pattern, minimum, maximum.
"""

from __future__ import annotations

import os

SCHEMA_DIR = os.path.join(os.path.dirname(__file__), "schemas")
_TYPES = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


_LOADED: dict[str, dict] = {}


def load(name: str) -> dict:
    if name not in _LOADED:
        from provenance.core.canonical import load_file
        _LOADED[name] = load_file(os.path.join(SCHEMA_DIR, name))
    return _LOADED[name]


_HEX = frozenset("0123456789abcdef")
_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# The patterns the schemas carry, each matched by a plain function (a test holds each equal to `re`
# on crafted and random strings): importing re costs the verify path more than verifying does.
# Any other pattern goes to re.
PLAIN = {
    "^[0-9a-f]{64}$": lambda v: len(v) == 64 and _HEX.issuperset(v),
    "^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$": lambda v: all(p and _NAME.issuperset(p) for p in v.split("/")),
}


def matches(pattern: str, value: str) -> bool:
    """JSON Schema's `pattern`: a search, anchored only where the pattern anchors itself."""
    plain = PLAIN.get(pattern)
    if plain is not None:
        return plain(value)
    import re
    return re.search(pattern, value) is not None


def errors(value, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return errors(value, root["$defs"][ref[8:]], root, path)
    if "anyOf" in schema:
        if any(not errors(value, s, root, path) for s in schema["anyOf"]):
            return []
        return [f"{path}: matches none of the allowed forms"]
    out: list[str] = []
    t = schema.get("type")
    if t is not None and not _TYPES[t](value):
        return [f"{path}: expected {t}"]
    if "const" in schema and value != schema["const"]:
        return [f"{path}: must be {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: must be one of {schema['enum']}"]
    if isinstance(value, str):
        if "pattern" in schema and not matches(schema["pattern"], value):
            out.append(f"{path}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            out.append(f"{path}: too short")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            out.append(f"{path}: wrong number of items ({len(value)})")
        if "items" in schema:
            for i, item in enumerate(value):
                out += errors(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                out.append(f"{path}: missing {k!r}")
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if "propertyNames" in schema:
                out += errors(k, schema["propertyNames"], root, f"{path}.{k}(name)")
            if k in props:
                out += errors(v, props[k], root, f"{path}.{k}")
            elif extra is False:
                out.append(f"{path}: unexpected field {k!r}")
            elif isinstance(extra, dict):
                out += errors(v, extra, root, f"{path}.{k}")
    return out


def validate(value, schema_name: str) -> list[str]:
    return errors(value, load(schema_name))
