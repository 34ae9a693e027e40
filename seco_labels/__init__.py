"""seco_labels: dense pseudo labels from image-level tags with SeCo (CVPR 2024)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
