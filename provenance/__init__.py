"""comma-lab provenance: a content-addressed evidence store for the comma.ai compression challenge."""

__version__ = "0.1.0"
