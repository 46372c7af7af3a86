"""The evidence log: RFC 9162 Merkle proofs, its tables, signed checkpoints, release bundles."""
