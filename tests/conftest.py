"""Fixtures used across the test files: the real images bundled in the repository, and offline settings.

Every test runs from a fresh clone alone: the data below ships with the repository (a few MB); nothing outside the
repository is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from skip_policy import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401

# Any accidental hub access must fail fast instead of hanging (no network here).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TESTS = Path(__file__).resolve().parent
#: The demo set doubles as the VOC-layout test set (its README says where every image comes from).
VOC_DEMO = TESTS.parent / "seco_labels" / "demo_data" / "voc-demo"
#: Small subsets of real COCO images and official VOC 2012 GT masks (tests/data/README.md).
TEST_DATA = TESTS / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The extended fuzzing runs when markers are chosen (``pytest -m slow``), not in a plain ``pytest -q``."""
    if config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="extended fuzzing: run it with pytest -m slow")
    for item in items:
        if "fuzz_extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def voc_root() -> Path:
    """44 real images in VOC layout, 21 classes (train 32, val 12): the bundled demo set."""
    return VOC_DEMO


@pytest.fixture(scope="session")
def coco_root() -> Path:
    """22 real COCO images, 81 classes (train 14, val 8)."""
    return TEST_DATA / "coco-mini"


@pytest.fixture(scope="session")
def voc_gt_root() -> Path:
    """50 official VOC 2012 val GT masks, no images."""
    return TEST_DATA / "voc2012-gt"


@pytest.fixture(scope="session")
def tiny_checkpoint(voc_root, tmp_path_factory) -> Path:
    """``last.pt`` of 4 steps of the tiny test config on voc-mini: what export, segment and show tests read."""
    from test_train import tiny_config  # tests/ is on sys.path (pytest prepend mode)

    from seco_labels.training.trainer import Trainer

    run = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(voc_root, iters=4)
    cfg.train.val_every = 0
    Trainer(cfg, run, quiet=True).fit()
    return run / "last.pt"


def make_folder_dataset(voc_root: Path, dst: Path, *, with_classes: bool = True, with_masks: bool = True,
                        split: str = "train") -> Path:
    """The demo images of ``split`` in the folder layout: ``images/`` (half of them under ``images/sub/``),
    ``tags.csv`` with the VOC names of each image's classes, and optionally ``classes.txt`` (the 21 VOC classes, so
    the GT masks keep their values) and ``masks/``."""
    import csv
    import shutil

    from seco_labels.data import VOC_CLASSES, build_reader

    reader = build_reader("voc", voc_root, split)
    rows = []
    for n, image_id in enumerate(reader.ids):
        rel = f"sub/{image_id}" if n % 2 else image_id
        for kind, src, suffix in (("images", reader.image_path(image_id), ".jpg"),
                                  ("masks", reader.mask_path(image_id), ".png")):
            if kind == "masks" and not with_masks:
                continue
            (dst / kind / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst / kind / f"{rel}{suffix}")
        names = [VOC_CLASSES[k + 1] for k in reader.tags(image_id).nonzero()[0]]
        rows.append((f"{rel}.jpg", ";".join(names)))
    with open(dst / "tags.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "tags"), *rows])
    if with_classes:
        (dst / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    return dst


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache in ``tmp_path/hf-cache`` (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``), laid out as
    huggingface_hub writes it: ``models--ORG--NAME/refs/main`` holds a commit hash, ``snapshots/<hash>/`` the files.
    Returns ``add(repo_id, files, revision=None) -> snapshot folder``: ``files`` maps a file name to its bytes;
    ``revision`` (a commit hash, as smp pins them) is the snapshot's name, else one is made from the repo id."""
    import hashlib

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def add(repo_id: str, files: dict[str, bytes], revision: str | None = None) -> Path:
        commit = revision or hashlib.sha1(repo_id.encode()).hexdigest()
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name, data in files.items():
            (snapshot / name).write_bytes(data)
        if revision is None:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / "main").write_text(commit)
        return snapshot

    add.cache = cache  # type: ignore[attr-defined]
    return add


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: the small segmenter models train faster on one thread than on two on
    the shared 2-core test machine (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
