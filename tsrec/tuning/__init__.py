"""Tuning (above model and baselines, below reporting and commands): the Optuna study of the sweep (``study``: its
config, storage, sampler, pruner and trial loop) and its summary files (``summary``)."""
