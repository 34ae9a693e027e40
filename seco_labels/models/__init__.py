"""Backbone wrapper, heads, memories and the SeCo network."""

from .backbone import EncoderOutput, ViTEncoder
from .heads import ASPPHead, ProjectionHead
from .memory import ClassPrototypes, KeyReservoir
from .seco import SeCoNet, SeCoOutput, build_seco

__all__ = [
    "ViTEncoder",
    "EncoderOutput",
    "ASPPHead",
    "ProjectionHead",
    "KeyReservoir",
    "ClassPrototypes",
    "SeCoNet",
    "SeCoOutput",
    "build_seco",
]
