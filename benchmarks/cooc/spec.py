"""The settings of one co-occurrence benchmark: what :func:`~benchmarks.cooc.runs.run` and
:func:`~benchmarks.cooc.runs.ablate` share over seeds and variants."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: stage 1's ViT when none is given: vit_tiny_patch16_224's timm arguments for 8 px patches and 6 blocks
DEFAULT_BACKBONE_KWARGS = {"patch_size": 8, "depth": 6}
#: the settings of ``generate`` a run does not expose: the share of A's train images with B, the smallest photo
#: instance (source pixels) and the visible pixels that tag a pasted class
RUN_COOC, RUN_MIN_AREA, RUN_MIN_VISIBLE = 0.85, 200, 40
#: images per stage 1 step (each k x k mosaic takes k * k of them)
STAGE1_IMAGES = 32


@dataclass(frozen=True)
class RunSpec:
    """One benchmark's settings, grouped by stage; the defaults are the command line's.

    The seed and the ablation variant are not here: :func:`run` takes them, and :func:`ablate` loops over them.
    """

    sources: tuple[Path, ...]  #: VOC- or COCO-layout sets with GT masks: the cut-outs and backgrounds
    # -- the dataset (generate; one per seed, drawn from the seed)
    pairs: tuple[tuple[str, str], ...] = (("dog", "person"),)  #: co-occurring pairs A:B
    num_classes: int = 5  #: foreground classes (each pair's included)
    n_train: int = 2000  #: train images
    n_val: int = 300  #: val images
    size: int = 128  #: image side, pixels
    digits: bool = False  #: objects: the bundled handwritten digits; the sources give only backgrounds
    background_blur: float = 0.0  #: Gaussian blur radius of the backgrounds, pixels
    scale: tuple[float, float] = (0.35, 0.75)  #: an object's longest side, as shares of the image side
    colours: str = "random"  #: the digits' colours: ``random`` or ``class`` (a hue per class, shared by a pair)
    #: the context class: on green backgrounds only in train, on any in val (None: no context class)
    context: str | None = None
    data: Path | None = None  #: a dataset already generated, used instead of ``OUT/data``
    # -- stage 1 (pretrain)
    backbone_kwargs: dict = field(default_factory=lambda: dict(DEFAULT_BACKBONE_KWARGS))  #: timm ViT arguments
    pretrain_steps: int = 2000
    pretrain_lr: float = 1e-3
    mosaic: int = 1  #: stage 1 on k x k mosaics (1: whole images)
    # -- SeCo (seco train, then export-masks and evaluate of the train split)
    iters: int = 300  #: SeCo steps
    extra_sets: tuple[str, ...] = ()  #: further ``KEY=VALUE`` overrides of seco train
    # -- the segmenter step (seco fit-segmenter on the pseudo masks and on the GT)
    seg_iters: int = 0  #: segmenter steps; 0 leaves the step out
    # -- where it runs
    threads: int = 2  #: torch threads of each seco command
    device: str = "cpu"

    def __post_init__(self) -> None:
        # lists from a caller become tuples: the spec is a value, equal to any spec with the same settings
        object.__setattr__(self, "sources", tuple(Path(s) for s in self.sources))
        object.__setattr__(self, "pairs", tuple((a, b) for a, b in self.pairs))
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "extra_sets", tuple(self.extra_sets))
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
        if not self.sources:
            raise ValueError("RunSpec needs at least one source (--source)")
        if self.colours not in ("random", "class"):
            raise ValueError(f"colours is 'random' or 'class', got {self.colours!r}")
        if not 1 <= self.mosaic * self.mosaic <= STAGE1_IMAGES:
            raise ValueError(f"mosaic {self.mosaic}: stage 1's {STAGE1_IMAGES} images per step need 1 <= k * k <= "
                             f"{STAGE1_IMAGES}")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale {self.scale}: need 0 < MIN <= MAX <= 1 (shares of the image side)")

    def generate_kwargs(self, seed: int) -> dict:
        """The keyword arguments of :func:`~benchmarks.cooc.dataset.generate` for a run's dataset of ``seed``."""
        return dict(seed=seed, pairs=list(self.pairs), classes=None, num_classes=self.num_classes,
                    n_train=self.n_train, n_val=self.n_val, size=self.size, cooc=RUN_COOC, context=self.context,
                    min_area=RUN_MIN_AREA, min_visible=RUN_MIN_VISIBLE, digits=self.digits,
                    background_blur=self.background_blur, scale=self.scale, colours=self.colours)
