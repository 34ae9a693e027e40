"""Dataset readers, training views and torch Datasets (docs/design.md §3, §5)."""

from .classes import COCO_CLASSES, VOC_CLASSES, check_class_names, read_class_names, voc_palette
from .datasets import EvalDataset, TrainDataset, collate_eval, single_label_index
from .images import check_image_id, id_problem, image_to_rgb
from .readers import READERS, SegmentationReader, build_reader, check_class_count, dataset_classes
from .folder import FolderReader, write_folder_splits  # registers the folder layout in READERS
from .tags import load_tags_file, tags_from_mask
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainViews,
    colour_jitter,
    denormalize,
    normalize,
    random_crop_with_box,
    random_gaussian_blur,
    random_grayscale,
    random_hflip,
    random_rescale,
    random_resized_crop,
    random_solarize,
)

__all__ = [
    "VOC_CLASSES",
    "COCO_CLASSES",
    "voc_palette",
    "read_class_names",
    "check_class_names",
    "READERS",
    "SegmentationReader",
    "build_reader",
    "dataset_classes",
    "FolderReader",
    "write_folder_splits",
    "load_tags_file",
    "tags_from_mask",
    "check_image_id",
    "id_problem",
    "image_to_rgb",
    "check_class_count",
    "TrainViews",
    "TrainDataset",
    "EvalDataset",
    "collate_eval",
    "single_label_index",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
    "denormalize",
    "random_rescale",
    "random_hflip",
    "random_crop_with_box",
    "random_resized_crop",
    "colour_jitter",
    "random_grayscale",
    "random_gaussian_blur",
    "random_solarize",
]
