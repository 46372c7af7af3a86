"""Releases: create (sign a statement), verify (authenticate, then appraise), the trust chain."""
