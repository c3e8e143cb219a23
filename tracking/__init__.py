"""Where a run's numbers go besides its folder: TensorBoard, CSV, MLflow and W&B (trackers).

trackers.py        Writer (what a run writes through) and open_trackers; parses --logger and --mlflow_uri
csv_tracker.py     metrics.csv
mlflow_tracker.py  an MLflow run
wandb_tracker.py   a W&B run
"""
