"""Feature store: the Feast adapter (apply, materialize, online lookup, historical retrieval)."""
