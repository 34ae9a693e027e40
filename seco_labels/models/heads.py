"""Heads on top of the encoder: ASPP decoder and projection MLP (docs/design.md §2)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ASPPHead", "ProjectionHead"]


class ASPPHead(nn.Module):
    """Four parallel 3x3 convs at the given dilations, summed: (B, D, h, w) -> (B, K, h, w) logits."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        if not rates:
            raise ValueError("ASPPHead needs at least one dilation rate")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


class ProjectionHead(nn.Module):
    """MLP in -> hidden -> hidden -> out with GELU, output L2-normalised: (N, in) -> (N, out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 768) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 unit vectors under autocast too: LIL/LIG divide their cosines by tau = 0.08
        return F.normalize(self.mlp(x).float(), dim=-1)
