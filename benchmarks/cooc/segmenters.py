"""The segmenter step: what a segmenter trained on the pseudo masks (or on the GT) scores on val."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.commands import run_logged, seco_command

from .dataset import load_split
from .scores import pair_confusion


def fit_segmenter(data: Path, labels: str, out: Path, *, pairs: list[tuple[str, str]], iters: int, crop: int,
                  threads: int, device: str) -> dict:
    """The segmenter step: ``seco fit-segmenter`` (DeepLabV3+/ResNet-18, random init) on ``labels`` (an export
    folder, or ``gt``) of the train split, scored on val's GT, then ``seco predict`` of val for the co-occurrence
    confusion there. Resumable (each command continues its folder). Returns val mIoU and confusion.

    Raises:
        RuntimeError: a ``seco`` command failed (the message names the log, ``OUT.log``).
    """
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "metrics.json").is_file():
        run_logged(seco_command(
            "fit-segmenter", "--arch", "deeplabv3plus", "--encoder", "resnet18", "--encoder-weights", "random",
            "--labels", labels,
            "--data-root", str(data), "--classes", str(data / "classes.txt"), "--split", "train", "--val-split", "val",
            "--out", str(out), "--iters", str(iters), "--batch-size", "8", "--crop-size", str(crop),
            "--num-workers", "0", "--device", device, "--resume", "auto", "--quiet"), threads, log)
    pred = out / "pred_val"
    run_logged(seco_command("predict", "--model", str(out), "--split", "val", "--out", str(pred),
                            "--device", device, "--quiet"), threads, log)
    ids, _, _, masks = load_split(data, "val")
    names = ["background", *json.loads((data / "cooc.json").read_text())["classes"]]
    preds = (np.asarray(Image.open(pred / f"{i}.png")) for i in ids)
    return {"val_miou": json.loads((out / "metrics.json").read_text())["miou"],
            **pair_confusion(masks.numpy(), preds, names, pairs)}
