"""Guarded rollout: rollback triggers, the guard that acts on them, standby retention."""
