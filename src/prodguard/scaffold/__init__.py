"""``prodguard init``: a new project drafted from a team's data files."""
