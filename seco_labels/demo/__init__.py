"""The whole pipeline on the bundled demo images (``seco demo``)."""

from .pipeline import run_demo

__all__ = ["run_demo"]
