"""Data contracts: expectation suites (JSON), batch validation, schema fingerprints."""
