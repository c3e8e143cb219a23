"""What takes a trained checkpoint out of the training code: prediction files streamed to disk
(streamed_csv), and exports for runtimes without this project (exporting, model_card)."""
