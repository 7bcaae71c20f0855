"""r2ec: a reproducible pipeline for R2ec (NeurIPS 2025) and its baselines."""

__version__ = "0.1.0"
