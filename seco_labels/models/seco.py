"""The SeCo network: encoder, two max-pool classifiers, ASPP decoder, projection head, EMA local teacher,
key reservoir and class prototypes (docs/design.md §2-3). The training step that wires them is in ``train.py``."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..runtime.precision import autocast_off
from .backbone import ViTEncoder, load_vit_weights
from .heads import ASPPHead, ProjectionHead
from .memory import ClassPrototypes, KeyReservoir

__all__ = ["SeCoNet", "SeCoOutput", "build_seco"]


def _fp32_conv1x1(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) tokens, (C, D, 1, 1) classifier weight -> (B, C, h, w) fp32 scores, autocast or not.

    The CAMs feed the ROI thresholds, and :func:`~seco_labels.method.cams.multi_scale_cams` normalises them in their own
    dtype: in bf16 (8-bit mantissa) ``cam - min`` cancels most digits of a map whose range is small against its
    values. With bf16 CAMs, a bf16 step changed 1.2% of the ROI pixels against fp32 (tiny ViT after 4 steps, 64 px);
    with fp32 ones 0.44%, what the bf16 encoder alone changes. A 1x1 conv to K-1 channels costs nothing next to the
    encoder.
    """
    with autocast_off(tokens.device):
        return F.conv2d(tokens.float(), weight.float())


@dataclass
class SeCoOutput:
    """What one forward pass of the student on a batch of images gives (h = H / patch)."""

    cls_token: torch.Tensor  #: (B, D)
    tokens: torch.Tensor  #: (B, D, h, w) final normed patch tokens
    logits: torch.Tensor  #: (B, K-1) max-pool classifier on final tokens (fp32)
    aux_logits: torch.Tensor  #: (B, K-1) max-pool classifier on aux-layer tokens (fp32)
    seg: torch.Tensor  #: (B, K, h, w) decoder logits
    cam: torch.Tensor  #: (B, K-1, h, w) raw CAM, detached, fp32 under autocast too
    cam_aux: torch.Tensor  #: (B, K-1, h, w) raw aux CAM, detached, fp32 under autocast too
    extra_cls: torch.Tensor | None = None  #: (B', D) class tokens of ``extra`` images, if any


class SeCoNet(nn.Module):
    """Student network plus its EMA local teacher and memories.

    Args:
        backbone: timm ViT name; ``backbone_weights`` a local weights file or None (random init).
        num_classes: K, including background; classifiers have K-1 outputs, the decoder K.
        aux_layer: block feeding the auxiliary classifier (-3 = third from last).
        proj_hidden: hidden width of the projection head; its output width is the encoder width so that
            projected crops and class-token prototypes live in the same space, as in the published code.
    """

    def __init__(
        self,
        *,
        backbone: str,
        num_classes: int,
        aux_layer: int = -3,
        backbone_weights: str | None = None,
        backbone_kwargs: dict | None = None,
        proj_hidden: int = 2048,
        aspp_rates: Sequence[int] = (6, 12, 18, 24),
        ema_momentum: float = 0.999,
        reservoir_size: int = 4608,
        proto_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: need background plus at least one class")
        self.num_classes = num_classes
        self.encoder = ViTEncoder(backbone, aux_layer=aux_layer, weights=backbone_weights, **(backbone_kwargs or {}))
        dim = self.encoder.embed_dim
        self.classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.decoder = ASPPHead(dim, num_classes, aspp_rates)
        self.proj_head = ProjectionHead(dim, proj_hidden, dim)
        # The local teacher is an EMA copy of encoder + projection head, never trained by gradient.
        self.teacher = nn.ModuleDict({"encoder": copy.deepcopy(self.encoder),
                                      "proj_head": copy.deepcopy(self.proj_head)})
        self.teacher.requires_grad_(False)
        self.ema_momentum = ema_momentum
        self.reservoir = KeyReservoir(reservoir_size, dim)
        self.prototypes = ClassPrototypes(num_classes - 1, dim, proto_momentum)

    @torch.no_grad()
    def load_backbone(self, path: str | Path) -> None:
        """Load a ViT weights file into the student's encoder, strictly (:func:`~.backbone.load_vit_weights`), and
        make the local teacher's encoder its copy again, as when the teacher is copied from a loaded student."""
        load_vit_weights(self.encoder.vit, path, self.encoder.name)
        self.teacher["encoder"].load_state_dict(self.encoder.state_dict())

    # -- student -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> SeCoOutput:
        """x: (B, 3, H, W) normalised images.

        ``extra``: (B', 3, H, W) more images of the same size (the second global view) that only need their
        class token; they share x's encoder batch (one launch, same results, the heads run on x only).
        """
        b = x.shape[0]
        enc = self.encoder(x if extra is None else torch.cat([x, extra]))
        cls_token, tokens, aux_tokens = enc.cls_token[:b], enc.tokens[:b], enc.aux_tokens[:b]
        extra_cls = None if extra is None else enc.cls_token[b:]
        logits, aux_logits = self._pooled_logits(tokens, aux_tokens)
        with torch.no_grad():
            cam = _fp32_conv1x1(tokens.detach(), self.classifier.weight)
            cam_aux = _fp32_conv1x1(aux_tokens.detach(), self.aux_classifier.weight)
        return SeCoOutput(cls_token, tokens, logits, aux_logits, self.decoder(tokens), cam, cam_aux, extra_cls)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (logits, aux_logits), each (B, K-1), without the decoder (used to predict tags)."""
        _, tokens, aux_tokens = self.encoder(x)
        return self._pooled_logits(tokens, aux_tokens)

    def _pooled_logits(self, tokens: torch.Tensor, aux_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Global max pooling then the 1x1 conv equals max over the CAM only for the pooled logits (docs/design.md §2).
        # fp32 like the CAMs, so that a logit stays the max of its CAM under autocast.
        return (_fp32_conv1x1(F.adaptive_max_pool2d(tokens, 1), self.classifier.weight).flatten(1),
                _fp32_conv1x1(F.adaptive_max_pool2d(aux_tokens, 1), self.aux_classifier.weight).flatten(1))

    def cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw CAMs (cam, cam_aux), each (B, K-1, h, w) fp32 even under autocast; the ``cam_fn`` of
        :func:`seco_labels.method.cams.multi_scale_cams`."""
        _, tokens, aux_tokens = self.encoder(x)
        return _fp32_conv1x1(tokens, self.classifier.weight), _fp32_conv1x1(aux_tokens, self.aux_classifier.weight)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Student class tokens of x (N, 3, h, w) -> (N, D) encoder features (not projected)."""
        return self.encoder(x).cls_token

    # -- teacher -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA step of the local teacher toward the student (momentum ``ema_momentum``): two multi-tensor operations
        per module, no per-parameter ``detach`` (no_grad makes it unnecessary)."""
        m = self.ema_momentum
        for student, teacher in ((self.encoder, self.teacher["encoder"]), (self.proj_head, self.teacher["proj_head"])):
            t = list(teacher.parameters())
            torch._foreach_mul_(t, m)
            torch._foreach_add_(t, list(student.parameters()), alpha=1.0 - m)

    @torch.no_grad()
    def teacher_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher encoder class tokens (N, D) of x (N, 3, h, w)."""
        return self.teacher["encoder"](x).cls_token

    def teacher_project(self, feats: torch.Tensor) -> torch.Tensor:
        """Teacher projection head; gradients still flow to ``feats`` (the published code lets the student's
        global-view tokens reach the LIL keys through the frozen teacher head)."""
        return self.teacher["proj_head"](feats)

    # -- optimisation ------------------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: backbone, backbone norms, classifier/projection heads, decoder."""
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_norm": [], "heads": [], "decoder": []}
        for name, p in self.encoder.named_parameters():
            if p.requires_grad:
                groups["backbone_norm" if "norm" in name else "backbone"].append(p)
        groups["heads"] += [self.classifier.weight, self.aux_classifier.weight, *self.proj_head.parameters()]
        groups["decoder"] += list(self.decoder.parameters())
        return groups


def build_seco(cfg: ModelConfig, num_classes: int) -> SeCoNet:
    """Build :class:`SeCoNet` from the model section of the config, randomly initialised: a training run then loads
    its starting weights (``cfg.backbone_weights``, :meth:`SeCoNet.load_backbone`), a trained model its checkpoint."""
    return SeCoNet(
        backbone=cfg.backbone,
        num_classes=num_classes,
        aux_layer=cfg.aux_layer,
        backbone_kwargs=cfg.backbone_kwargs,
        proj_hidden=cfg.proj_hidden,
        aspp_rates=cfg.aspp_rates,
        ema_momentum=cfg.ema_momentum,
        reservoir_size=cfg.reservoir_size,
        proto_momentum=cfg.proto_momentum,
    )
