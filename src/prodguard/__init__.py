"""prodguard: keeps a machine learning model honest in production."""

__version__ = "0.1.0"
