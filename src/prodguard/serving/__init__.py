"""Serving: per-request feature assembly, the prediction log, model following, the service."""
