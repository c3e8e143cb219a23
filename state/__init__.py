"""Where a run's state lives: the progress of training (progress, early_stopping, metric_sums), the
checkpoint that holds it (checkpoint), and the run folder that holds every file of a run (run_folder)."""
