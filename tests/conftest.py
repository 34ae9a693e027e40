"""Shared fixtures: the real images in ../shared/data and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Any accidental hub access must fail fast instead of hanging (no network here).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("SECO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.fail(f"test data folder {path} is missing; set SECO_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def voc_root() -> Path:
    """81 real images in VOC layout (train 61, val 20)."""
    return _need(SHARED_DATA / "voc-mini")


@pytest.fixture(scope="session")
def coco_root() -> Path:
    """106 real COCO images, 81 classes (train 79, val 27)."""
    return _need(SHARED_DATA / "coco-mini")


@pytest.fixture(scope="session")
def voc_gt_root() -> Path:
    """2913 official VOC2012 GT masks, no images."""
    return _need(SHARED_DATA / "voc2012-gt")


@pytest.fixture(scope="session")
def tiny_checkpoint(voc_root, tmp_path_factory) -> Path:
    """``last.pt`` of 4 steps of the tiny test config on voc-mini: what export, segment and show tests read."""
    from seco_labels.train import Trainer
    from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)

    run = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(voc_root, iters=4)
    cfg.train.val_every = 0
    Trainer(cfg, run, quiet=True).fit()
    return run / "last.pt"
