"""The machinery of sweep.py, which keeps the command line and main():
space (the search space), task_script (the task's trainer and options, the space checked against
them), storage (where the study lives), study (sweep.json, the study, its pruner and sampler), claims
(which trial a worker runs next, through the storage), heartbeat (workers' beats, stale trials
retried), runner (the Sweep: launching trials and telling how they ended), locks (a trial's local
lock file), table and plots (the trial table, trials.csv, importances and plots), link and pruning
(the trial's side of a sweep)."""
