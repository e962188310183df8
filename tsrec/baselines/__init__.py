"""The baseline models (one class per model) and their shared trainer; the baseline stage is ``tsrec/commands/baseline.py``."""
