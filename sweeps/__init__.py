"""The machinery of sweep.py: the search space (space) and the trial's side of a sweep (link)."""
