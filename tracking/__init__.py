"""Where a run's numbers go besides its folder: TensorBoard, CSV, MLflow and W&B (trackers)."""
