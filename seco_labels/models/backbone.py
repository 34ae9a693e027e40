"""A timm ViT wrapped to return what SeCo needs: class token, final tokens, auxiliary-layer tokens
(docs/design.md §2)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from ..errors import ConfigError

__all__ = ["ViTEncoder", "EncoderOutput"]


class EncoderOutput(tuple):
    """``(cls_token (B, D), tokens (B, D, h, w), aux_tokens (B, D, h, w))``; h = H / patch, w = W / patch."""

    __slots__ = ()

    def __new__(cls, cls_token: torch.Tensor, tokens: torch.Tensor, aux_tokens: torch.Tensor):
        return super().__new__(cls, (cls_token, tokens, aux_tokens))

    cls_token = property(lambda self: self[0])
    tokens = property(lambda self: self[1])
    aux_tokens = property(lambda self: self[2])


class ViTEncoder(nn.Module):
    """Plain ViT from timm with a frozen positional embedding interpolated to the input grid.

    Args:
        name: any timm ViT with a class token and absolute positional embedding
            (``vit_base_patch16_224`` by default in the presets).
        aux_layer: index into the blocks whose output (not normed) feeds the auxiliary classifier;
            ``-3`` is the third block from the end as in the published code.
        weights: a local weights file; ``None`` means random init. Nothing is ever downloaded.
        **kwargs: extra ``timm.create_model`` arguments (``depth=4`` for tiny test models).

    Raises:
        ConfigError: unknown model name, a model without class token, a weights file that is missing
            or does not match the architecture, or ``aux_layer`` out of range.
    """

    def __init__(self, name: str, *, aux_layer: int = -3, weights: str | None = None, **kwargs) -> None:
        super().__init__()
        if name not in timm.list_models():
            vits = ", ".join(m for m in timm.list_models("vit_*patch16_224")[:8])
            raise ConfigError(f"unknown backbone {name!r}; use a timm ViT name, e.g. {vits}")
        create_kwargs = dict(num_classes=0, dynamic_img_size=True, **kwargs)
        if weights:
            path = Path(weights)
            if not path.is_file():
                raise ConfigError(f"backbone weights file {path} not found; pass an existing local file")
            create_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        try:
            vit = timm.create_model(name, **create_kwargs)
        except (RuntimeError, KeyError, ValueError) as e:  # timm raises these on a mismatching state dict
            raise ConfigError(f"could not build backbone {name!r} from {weights or 'random init'}: {e}") from None
        if getattr(vit, "cls_token", None) is None or getattr(vit, "pos_embed", None) is None:
            raise ConfigError(f"backbone {name!r} has no class token / absolute position embedding; SeCo needs both")
        if getattr(vit, "no_embed_class", False) or getattr(vit, "reg_token", None) is not None:
            raise ConfigError(f"backbone {name!r} uses register tokens or a class-free position embedding; unsupported")
        depth = len(vit.blocks)
        if not -depth <= aux_layer < depth:
            raise ConfigError(f"model.aux_layer={aux_layer} is out of range for {name} with {depth} blocks")
        # The positional embedding is interpolated, never learnt (docs/design.md §2).
        vit.pos_embed.requires_grad_(False)
        self.vit = vit
        self.aux_index = aux_layer % depth
        self.embed_dim: int = vit.embed_dim
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.grid_size: tuple[int, int] = tuple(vit.patch_embed.grid_size)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        # Bicubic without antialiasing, as the published encoder does at every input size.
        return resample_abs_pos_embed(
            self.vit.pos_embed, new_size=(h, w), old_size=self.grid_size, num_prefix_tokens=1, antialias=False
        )

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x: (B, 3, H, W) normalised images. Returns :class:`EncoderOutput`."""
        vit = self.vit
        t = vit.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        b, h, w, d = t.shape
        t = torch.cat([vit.cls_token.expand(b, -1, -1), t.reshape(b, h * w, d)], dim=1)
        t = vit.pos_drop(t + self._pos_embed(h, w))
        t = vit.norm_pre(t)
        aux = None
        for i, blk in enumerate(vit.blocks):
            t = blk(t)
            if i == self.aux_index:
                aux = t
        t = vit.norm(t)

        def grid(tokens: torch.Tensor) -> torch.Tensor:  # (B, 1+hw, D) -> (B, D, h, w)
            return tokens[:, 1:].transpose(1, 2).reshape(b, d, h, w)

        return EncoderOutput(t[:, 0], grid(t), grid(aux))
