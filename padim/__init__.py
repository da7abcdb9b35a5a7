"""padim: unsupervised visual inspection with PaDiM (fit on good images only)."""

__version__ = "0.1.0"
