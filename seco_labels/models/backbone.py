"""A timm ViT wrapped to return what SeCo needs: class token, final tokens, auxiliary-layer tokens
(docs/design.md §2), and the strict loading of a local ViT weights file (``--backbone-weights``)."""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from ..errors import ConfigError

__all__ = ["ViTEncoder", "EncoderOutput", "load_vit_weights"]

#: Keys of an ImageNet classifier that the encoder (built with ``num_classes=0``) has no place for: the 1000-class
#: ``head`` of timm and of the published code's ``jx_vit_base_p16_224-80ecf9dd.pth``, and the ``pre_logits``
#: layer of the original ImageNet-21k ViT checkpoints.
_CLASSIFIER_PREFIXES = ("head.", "pre_logits.")
#: Keys under which training scripts commonly wrap a state dict (``{"model": state_dict, "epoch": ...}``).
_WRAPPER_KEYS = ("model", "state_dict")
#: What torch.load raises on a file that is not a readable weights file: a foreign pickle, a
#: truncated or corrupt zip, a text file (KeyError from the pickle opcode table), an empty file.
_READ_ERRORS: tuple[type[Exception], ...] = (
    pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile,
)


def _unreadable(path: Path, e: Exception) -> ConfigError:
    """The error for a weights file that torch/safetensors cannot read; torch's own message can be a paragraph."""
    return ConfigError(
        f"backbone weights file {path} cannot be read as a state dict ({type(e).__name__}: {str(e)[:200]}); "
        "pass a .pth saved with torch.save(model.state_dict(), ...) or a .safetensors file"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a torch file (``torch.save``) of a state dict, bare or
    wrapped under ``model`` / ``state_dict``. Nothing but tensors and plain containers is unpickled."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError  # safetensors is a timm dependency
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise _unreadable(path, e) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except _READ_ERRORS as e:
            raise _unreadable(path, e) from None
    if isinstance(obj, dict):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if wrapped and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[wrapped[0]]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"backbone weights file {path} holds no state dict (a dict of tensors, bare or under 'model' or "
            "'state_dict'); pass a .pth saved with torch.save(model.state_dict(), ...) or a .safetensors file"
        )
    return obj


def _pos_prefix(vit: nn.Module) -> int:
    """How many prefix tokens (class, distillation, register) ``vit.pos_embed`` holds entries for, as timm's
    ``VisionTransformer._pos_embed`` counts them: none when ``no_embed_class`` (the embedding covers the patches
    only), else all of them."""
    return 0 if getattr(vit, "no_embed_class", False) else int(getattr(vit, "num_prefix_tokens", 1))


def _resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], prefix: int, path: Path) -> torch.Tensor:
    """(1, P + g*g, D) position embedding of ``prefix`` = P tokens and a square g x g grid -> (1, P + h*w, D) for
    the model's ``grid``, bicubic without antialiasing as the encoder resamples it at every input size."""
    n = pos_embed.shape[1] - prefix if pos_embed.dim() == 3 else -1
    g = math.isqrt(max(n, 0))
    if n < 1 or g * g != n:
        raise ConfigError(
            f"backbone weights file {path}: pos_embed has shape {tuple(pos_embed.shape)}, not (1, {prefix} + g*g, D) "
            f"of the model's {prefix} prefix token(s) and a square patch grid; pass the state dict of this "
            "architecture (model.backbone, model.backbone_kwargs)"
        )
    return resample_abs_pos_embed(pos_embed, new_size=grid, old_size=(g, g), num_prefix_tokens=prefix,
                                  antialias=False)


def _list(keys: list[str], most: int = 8) -> str:
    """``a, b, c and 5 more``: a long key list cut for a one-line message."""
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def load_vit_weights(vit: nn.Module, path: str | Path, name: str) -> None:
    """Load a local weights file into a timm ViT built with ``num_classes=0``, strictly.

    Accepted layouts: timm's current ``VisionTransformer.state_dict()`` and the published code's
    ``jx_vit_base_p16_224-80ecf9dd.pth`` (the original Google ViT-B/16, timm's
    ``vit_base_patch16_224.orig_in21k_ft_in1k``), which the published ``model/backbone/vit.py`` loads with a
    strict ``load_state_dict``: the same keys plus a 1000-class ``head``. Files: ``.pth``/``.pt`` (bare or under
    ``model``/``state_dict``) or ``.safetensors``.

    Conversion: classifier keys (``head.*``, ``pre_logits.*``) are dropped, the encoder has no classifier; a
    ``pos_embed`` of another grid (e.g. a 384 px checkpoint) is resampled to the model's grid, keeping the entries
    of the prefix tokens it covers (the class token; none for ``no_embed_class`` models). Every other key
    must match the model's keys and shapes exactly: nothing is silently left at random init.

    Raises:
        ConfigError: unreadable file, or keys missing, unexpected or of another shape (names them and the file).
    """
    path = Path(path)
    sd = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    own = vit.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = _resample_pos_embed(sd["pos_embed"], tuple(vit.patch_embed.grid_size), _pos_prefix(vit),
                                              path)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = ([f"missing {_list(missing)}"] if missing else []) + (
            [f"unexpected {_list(unexpected)}"] if unexpected else [])
        raise ConfigError(
            f"backbone weights file {path} does not fit {name} ({'; '.join(parts)}); pass the state dict of this "
            "architecture (model.backbone, model.backbone_kwargs)"
        )
    wrong = [f"{k} {tuple(sd[k].shape)} (model {tuple(v.shape)})" for k, v in own.items() if sd[k].shape != v.shape]
    if wrong:
        raise ConfigError(
            f"backbone weights file {path} does not fit {name}: shapes differ for {_list(wrong, 4)}; pass the state "
            "dict of this architecture (model.backbone, model.backbone_kwargs)"
        )
    vit.load_state_dict(sd, strict=True)


def _drop_noop_dropouts(vit: nn.Module) -> None:
    """Replace the ViT's ``p=0`` dropouts by identities: each is still one dispatched operation per block per
    pass (about 200 of a SeCo step's). ``attn_drop`` stays: timm's fused attention reads its ``p``."""
    for parent in vit.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout) and child.p == 0 and name != "attn_drop":
                setattr(parent, name, nn.Identity())


class EncoderOutput(tuple):
    """``(cls_token (B, D), tokens (B, D, h, w), aux_tokens (B, D, h, w))``; h = H // patch, w = W // patch."""

    __slots__ = ()

    def __new__(cls, cls_token: torch.Tensor, tokens: torch.Tensor, aux_tokens: torch.Tensor):
        return super().__new__(cls, (cls_token, tokens, aux_tokens))

    cls_token = property(lambda self: self[0])
    tokens = property(lambda self: self[1])
    aux_tokens = property(lambda self: self[2])


#: resampled positional embeddings :class:`ViTEncoder` keeps (grids a training step or an export asks for again)
POS_CACHE_SIZE = 8


class ViTEncoder(nn.Module):
    """Plain ViT from timm with a frozen positional embedding interpolated to the input grid.

    Args:
        name: any timm ViT with a class token and absolute positional embedding, of any patch size
            (``vit_base_patch16_224`` by default in the presets; DINOv2 ``vit_*_patch14_dinov2``, register-token
            ``vit_*_reg4_dinov2`` and distilled DeiT models too). Register and distillation tokens are run
            through the blocks as timm does, but are returned neither as the class token nor in the patch grids.
        aux_layer: index into the blocks whose output (not normed) feeds the auxiliary classifier;
            ``-3`` is the third block from the end as in the published code.
        weights: a local weights file loaded by :func:`load_vit_weights` (timm's layout or the published code's
            jx layout, ``.pth`` or ``.safetensors``); ``None`` means random init. Nothing is ever downloaded.
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
        if weights and not Path(weights).is_file():
            raise ConfigError(f"backbone weights file {weights} not found; pass an existing local file")
        try:
            vit = timm.create_model(name, num_classes=0, dynamic_img_size=True, **kwargs)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # timm's errors on bad model arguments
            raise ConfigError(f"could not build backbone {name!r} with {kwargs}: {e}") from None
        if weights:
            # Loaded here rather than by timm's pretrained=True: timm turns strict loading off when the classifier
            # is removed (num_classes=0), so a missing key would silently stay at random init.
            load_vit_weights(vit, weights, name)
        if getattr(vit, "cls_token", None) is None or getattr(vit, "pos_embed", None) is None:
            raise ConfigError(f"backbone {name!r} has no class token / absolute position embedding; SeCo needs both")
        # The prefix tokens in timm's order (VisionTransformer._pos_embed): class, distillation (DeiT), registers.
        prefix = tuple(k for k in ("cls_token", "dist_token", "reg_token") if getattr(vit, k, None) is not None)
        num_prefix = sum(getattr(vit, k).shape[1] for k in prefix)
        if num_prefix != getattr(vit, "num_prefix_tokens", num_prefix):
            raise ConfigError(
                f"backbone {name!r} has {vit.num_prefix_tokens} prefix tokens, not the {num_prefix} of its class, "
                "distillation and register tokens; use a timm VisionTransformer with a class token"
            )
        depth = len(vit.blocks)
        if not -depth <= aux_layer < depth:
            raise ConfigError(f"model.aux_layer={aux_layer} is out of range for {name} with {depth} blocks")
        # The positional embedding is interpolated, never learnt (docs/design.md §2).
        vit.pos_embed.requires_grad_(False)
        _drop_noop_dropouts(vit)
        self.vit = vit
        self.name = name
        self.aux_index = aux_layer % depth
        #: tokens before the patches (class token first, then any distillation / register tokens)
        self.num_prefix_tokens: int = num_prefix
        self._prefix_names: tuple[str, ...] = prefix
        #: the prefix tokens ``pos_embed`` has entries for: 0 when ``no_embed_class`` (DINOv2 with registers)
        self.pos_prefix_tokens: int = _pos_prefix(vit)
        self.embed_dim: int = vit.embed_dim
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.grid_size: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        # Resampled embeddings by grid and by the embedding's storage and version (see _pos_embed); not state
        self._pos_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        # the embedding the cache was resampled from, kept out of the module's parameters (see _pos_embed)
        object.__setattr__(self, "_pos_source", vit.pos_embed)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The positional embedding resampled to an h x w grid, (1, prefix + h * w, D) or (1, h * w, D).

        The embedding is frozen, so a resampled one is kept for the last :data:`POS_CACHE_SIZE` grids: a training
        step asks for the same few grids (the batch, the CAM scales, the local crops) at every step, and resampling
        is ~10 operations per encoder call. The key holds the embedding's storage and in-place version, and a replaced
        embedding empties the cache, so a moved, loaded, replaced or EMA-updated embedding is resampled anew (an
        in-place write through ``.data``, which bumps no version, is not seen)."""
        pos = self.vit.pos_embed
        if pos.requires_grad:  # unfrozen by a caller: resample in the autograd graph, every call
            return self._resample(pos, h, w)
        if self._pos_source is not pos:  # a replaced embedding: its storage may reuse the old one's address
            self._pos_cache.clear()
            object.__setattr__(self, "_pos_source", pos)  # not nn.Module's: it would register a Parameter
        key = (h, w, pos.data_ptr(), pos._version, pos.dtype, pos.device)
        cached = self._pos_cache.get(key)
        if cached is None:
            cached = self._pos_cache[key] = self._resample(pos, h, w)
            while len(self._pos_cache) > POS_CACHE_SIZE:
                self._pos_cache.popitem(last=False)
        else:
            self._pos_cache.move_to_end(key)
        return cached

    def _resample(self, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
        # Bicubic without antialiasing, as the published encoder does at every input size.
        return resample_abs_pos_embed(
            pos, new_size=(h, w), old_size=self.grid_size, num_prefix_tokens=self.pos_prefix_tokens, antialias=False,
        )

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x: (B, 3, H, W) normalised images, H and W at least one patch. Returns :class:`EncoderOutput` with
        h = H // patch, w = W // patch.

        Like the published patch embedding (a stride-``patch`` convolution), the last ``H % patch`` rows and
        ``W % patch`` columns, which fill no whole patch, are dropped: a 168 x 200 input gives a 10 x 12 grid.

        Raises:
            ValueError: H or W smaller than one patch (no token).
        """
        vit = self.vit
        ph, pw = vit.patch_embed.patch_size
        hh, ww = x.shape[-2:]
        if hh < ph or ww < pw:
            raise ValueError(f"input of {hh}x{ww} px is smaller than one {ph}x{pw} px patch of the backbone")
        # timm asserts whole patches; the convolution itself would ignore the remainder, so crop it off first.
        # Only when there is one: torch.compile then guards on whole patches instead of tracing the modulo into the
        # dynamic-shape graph (where inductor 2.x fails to order strides of ``3*B*(W - Mod(W, 16))``).
        if hh % ph or ww % pw:
            x = x[..., : hh - hh % ph, : ww - ww % pw]
        t = vit.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        b, h, w, d = t.shape
        t = t.reshape(b, h * w, d)
        # timm's VisionTransformer._pos_embed order: class token, then distillation / register tokens, then patches;
        # a no_embed_class embedding is added to the patches before the prefix is prepended, any other after.
        prefix = [getattr(vit, k).expand(b, -1, -1) for k in self._prefix_names]
        if self.pos_prefix_tokens == 0:  # no_embed_class (there is always a class token)
            t = torch.cat([*prefix, t + self._pos_embed(h, w)], dim=1)
        else:
            t = torch.cat([*prefix, t], dim=1) + self._pos_embed(h, w)
        t = vit.pos_drop(t)
        t = vit.norm_pre(t)
        aux = None
        for i, blk in enumerate(vit.blocks):
            t = blk(t)
            if i == self.aux_index:
                aux = t
        t = vit.norm(t)

        def grid(tokens: torch.Tensor) -> torch.Tensor:  # (B, prefix+hw, D) -> (B, D, h, w), patches only
            return tokens[:, self.num_prefix_tokens:].transpose(1, 2).reshape(b, d, h, w)

        return EncoderOutput(t[:, 0], grid(t), grid(aux))
