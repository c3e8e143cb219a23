"""What changes the weights: the optimizer step with its schedule, scaler and clipping (optimization,
optimizers, schedules, clipping), the weight average (ema), the lr range test (lr_finder), and the
callbacks that attach features to the loop (callbacks)."""
