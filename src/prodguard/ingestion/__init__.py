"""Ingestion: validate every raw batch before it reaches the offline store."""
