"""params.yaml: what the pipeline runs (its submissions) and how the sweep annotates them. Below
the pipeline and the sweep, which both read it."""

from __future__ import annotations

import json
from pathlib import Path

from provenance.core.errors import ProvError


def load_params(params: Path):
    """params.yaml as read with ruamel.yaml (which DVC brings); JSON also works."""
    text = params.read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            from ruamel.yaml import YAML
        except ImportError:
            raise ProvError(f"{params}: YAML needs ruamel.yaml (installed with dvc), or write it as JSON") from None
        doc = YAML(typ="safe").load(text)
    return doc


def submissions_param(params: Path) -> list[str]:
    """The `submissions` list of params.yaml."""
    doc = load_params(params)
    names = doc.get("submissions") if isinstance(doc, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ProvError(f"{params}: 'submissions' must be a non-empty list of names")
    return names
