"""The Chicago "L" ridership project: a loader and a request model for prodguard."""
