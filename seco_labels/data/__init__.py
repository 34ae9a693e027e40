"""Dataset readers, training views and torch Datasets."""

from .classes import COCO_CLASSES, VOC_CLASSES, voc_palette
from .datasets import EvalDataset, TrainDataset, single_label_index
from .readers import READERS, SegmentationReader, build_reader, load_tags_file
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TrainViews, denormalize, normalize

__all__ = [
    "VOC_CLASSES", "COCO_CLASSES", "voc_palette", "READERS", "SegmentationReader", "build_reader", "load_tags_file",
    "TrainViews", "TrainDataset", "EvalDataset", "single_label_index", "normalize", "denormalize",
    "IMAGENET_MEAN", "IMAGENET_STD",
]
