"""Runs on disk and as processes: run folder, event stream, history, launching, workers, Slurm."""
