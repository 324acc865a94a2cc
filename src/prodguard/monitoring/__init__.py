"""Monitoring: PSI core (``from prodguard.monitoring import psi``)."""
