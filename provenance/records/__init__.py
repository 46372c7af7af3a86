"""Evaluation records: models and their JSON Schemas, adjudication, legacy import."""
