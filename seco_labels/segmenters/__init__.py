"""smp adapter (docs/design.md §5): build any segmentation_models_pytorch architecture, train it on pseudo masks or GT,
score it with the metric code of ``seco evaluate``, and compare runs.

``segmentation_models_pytorch`` is imported only when a model is built, so importing this package is cheap.
"""

from .compare import RunScores, compare_runs, draw_bar_chart, load_run
from .config import SegDataConfig, SegmenterConfig, SegModelConfig, SegOptimConfig, SegTrainConfig, segmenter_config
from .data import LabelSet, SegTrainDataset, joint_augment, open_labels, open_val_reader
from .model import (
    UnknownNameError,
    architectures,
    build_segmenter,
    check_names,
    encoder_names,
    forward_logits,
    load_encoder_weights,
    predict_mask,
    preflight,
    round_up,
    size_multiple,
)
from .train import PredictedMasks, SegmenterTrainer, ce_loss

__all__ = [
    "SegmenterConfig",
    "SegDataConfig",
    "SegModelConfig",
    "SegOptimConfig",
    "SegTrainConfig",
    "segmenter_config",
    "LabelSet",
    "SegTrainDataset",
    "joint_augment",
    "open_labels",
    "open_val_reader",
    "UnknownNameError",
    "architectures",
    "encoder_names",
    "check_names",
    "build_segmenter",
    "load_encoder_weights",
    "size_multiple",
    "round_up",
    "forward_logits",
    "predict_mask",
    "preflight",
    "ce_loss",
    "PredictedMasks",
    "SegmenterTrainer",
    "RunScores",
    "load_run",
    "compare_runs",
    "draw_bar_chart",
]
