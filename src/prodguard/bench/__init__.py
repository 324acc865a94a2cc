"""End-to-end latency benchmark: the guarded service against a bare model endpoint."""
