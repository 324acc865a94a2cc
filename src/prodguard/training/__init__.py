"""Training: point-in-time training frames, the model pipeline, evaluation, reference stats."""
