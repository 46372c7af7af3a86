"""The public lab notebook: a static, offline bundle generated from the evidence, sanitized last."""
