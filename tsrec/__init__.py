"""tsrec: a reproducibility harness for TS-Rec (arXiv 2602.22632)."""

__version__ = "0.1.0"
