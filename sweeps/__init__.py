"""The machinery of sweep.py, which keeps the command line and main():
space (the search space), task_script (the task's trainer and options, the space checked against
them), study (sweep.json, the Optuna storage, study and sampler), runner (the Sweep: claiming,
launching, pruning and telling trials), locks (the file locks between sweep processes), table
(the trial table and trials.csv), and link (the trial's side of a sweep)."""
