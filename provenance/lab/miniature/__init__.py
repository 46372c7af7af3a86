"""Generates the miniature contest (upstream checkout, videos, weights, samples)."""
