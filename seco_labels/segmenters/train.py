"""``seco fit-segmenter``: train an smp model on pseudo masks (or GT), checkpoint, resume, score on GT.

Reads top-down: :func:`ce_loss` -> :class:`PredictedMasks` (the model as a ``seco evaluate`` mask source) ->
:class:`SegmenterTrainer` (its step, validation and final report). The training loop, the run folder (lock, log,
checkpoints), resume, the starting weights and the loss checks (the parts of :mod:`seco_labels.training`), device,
AMP, the batch sampler, the lr schedule and the metrics are those of ``seco train`` / ``seco evaluate``.

Files written in ``RUN_DIR``: ``config.yaml`` (resolved config), ``last.pt`` (training checkpoint with optimiser,
every ``ckpt_every`` steps and at the end), ``metrics.jsonl`` (a record per step and per validation),
``model/`` (``save_pretrained``: reload with ``smp.from_pretrained(RUN_DIR / "model")``), ``metrics.json`` and
``per_class.csv`` (the final validation, via :func:`seco_labels.evaluation.evaluate.write_reports`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config_io import config_to_dict
from ..data.readers import SegmentationReader
from ..errors import CheckpointError
from ..evaluation.evaluate import EvalResult, evaluate_masks, write_reports
from ..io import atomic_write_text, disk_full_guard
from ..runtime.checkpoint import ConfigChange, latest_checkpoint, require_kind
from ..runtime.device import StepBatchSampler, leave_signals_to_main, resolve_device
from ..runtime.distributed import DistContext
from ..runtime.precision import autocast_context, grad_scaler, resolve_amp
from ..runtime.pretrained import Weights
from ..training.loop import opened_run, run_loop
from ..training.loss_monitor import LossMonitor
from ..training.resume import ResumeKeys, restore_training_state, resume_run, training_state
from ..training.run_folder import RunFolder
from ..training.schedule import lr_multiplier
from ..training.sinks import image_count
from ..training.start_weights import StartWeights
from .config import RETIRED_KEYS, SegmenterConfig
from .data import SegTrainDataset, open_labels, open_val_reader
from .model import (
    build_segmenter,
    check_names,
    forward_logits,
    load_encoder_weights,
    model_kwargs,
    predict_mask,
    preflight,
    round_up,
    size_multiple,
)
from .weights import encoder_weights_name, resolve_encoder_weights

__all__ = ["ce_loss", "PredictedMasks", "SegmenterTrainer", "MODEL_KEYS"]

#: the saved model is only the same network if these config keys agree
MODEL_KEYS = (("model", "arch"), ("model", "encoder"), ("model", "kwargs"), ("data", "num_classes"))


def ce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel cross-entropy, mean over labelled pixels; ``ignore_index`` pixels (padding, uncertain) are skipped.

    logits (B, K, H, W) float, target (B, H, W) int64. Returns 0 (still attached to the graph), not NaN, when no
    pixel of the batch is labelled. (smp's own losses default to no ignore index, hence plain torch here.)
    """
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


class PredictedMasks:
    """A :class:`seco_labels.evaluation.evaluate.MaskSource` that runs the model on each image when its mask is asked for.

    Images are predicted at their own size (bounded to ``max_side`` as the model was trained, the prediction brought
    back to the image's size), padded to ``multiple`` (see :func:`predict_mask`), so the scores are those
    ``seco evaluate`` would give to the saved predictions.
    """

    def __init__(self, model: nn.Module, reader: SegmentationReader, *, multiple: int, device: torch.device,
                 autocast: Callable[[], ContextManager[Any]] | None = None, name: str = "segmenter",
                 max_side: int = 0) -> None:
        self.model = model
        self.max_side = max_side
        self.reader = reader
        self.multiple = multiple
        self.device = device
        self.autocast = autocast
        self.name = name

    def ids(self) -> set[str]:
        return set(self.reader.ids)

    def load_mask(self, image_id: str) -> np.ndarray:
        image = self.reader.load_image(image_id)
        return predict_mask(self.model, image, multiple=self.multiple, device=self.device, autocast=self.autocast,
                            max_side=self.max_side)


class SegmenterTrainer:
    """Owns a run folder: checks the labels, builds the smp model, trains, checkpoints, resumes, scores on GT.

    Construction does every check that needs no training (names, labels, val split, crop size vs the model) and
    fills the config's derived values (data root/layout/classes from the export, crop rounded up to the model's
    size multiple); ``self.notes`` says what was changed.

    Encoder weights (``model.encoder_weights``, :mod:`seco_labels.segmenters.weights`): the model is built with random
    init; a fresh run loads, records and announces them when it starts, a resumed one only checks that they are its
    checkpoint's (``start_weights``: :class:`~seco_labels.training.start_weights.StartWeights`).

    Resuming with other settings: the ``MODEL_KEYS`` and the weights cannot change; ``RESUME_KEYS.allowed`` may
    (recorded in ``RUN_DIR/config_changes.jsonl``); any other change (lr, labels, crops, seed...) needs
    ``allow_changes``.

    The run's parts are those of ``seco train``'s :class:`~seco_labels.training.trainer.Trainer`: ``folder``,
    ``start_weights``, ``losses``, and the loop and resume of :mod:`seco_labels.training`.
    """

    #: config keys on resume: the smp model cannot change; where the run goes and how verbosely may
    RESUME_KEYS: ClassVar[ResumeKeys] = ResumeKeys(
        arch=tuple(f"{s}.{k}" for s, k in MODEL_KEYS),
        # RETIRED_KEYS: recorded by older runs, read by none
        silent=("train.device", "data.num_workers", "train.log_every", "train.ckpt_every", "train.log",
                *RETIRED_KEYS),
    )

    def __init__(self, cfg: SegmenterConfig, run_dir: str | Path, *, quiet: bool = False,
                 weights: Weights | None = None) -> None:
        """``weights``: ``model.encoder_weights`` already resolved (:func:`~seco_labels.segmenters.weights.
        resolve_encoder_weights`; the CLI does so before the data is read); None resolves them when a fresh run
        starts."""
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.notes: list[str] = []
        d, m, t = cfg.data, cfg.model, cfg.train
        check_names(m.arch, m.encoder)
        m.arch = m.arch.lower()
        m.encoder_weights = weights.spec if weights is not None else encoder_weights_name(m.encoder_weights, m.encoder)
        self.device = resolve_device(t.device)
        self.dist = DistContext(device=self.device)  # one process: fit-segmenter does not run under torchrun
        self.amp_dtype = resolve_amp(t.amp, self.device)
        #: ``torch.autocast`` in ``amp_dtype`` (a no-op context for fp32), for the step and validation
        self.autocast = functools.partial(autocast_context, self.device, self.amp_dtype)
        self.folder = RunFolder(self.run_dir, dist=self.dist)
        self.start_weights = StartWeights(
            name_key="model.encoder_weights", sha_key="model.encoder_weights_sha256", option="--encoder-weights",
            target_key="model.encoder", resolve=self._resolve_weights, load=self._load_weights, weights=weights,
            announce=not quiet,
        )
        self.losses = LossMonitor(self.run_dir, lr_hint="--lr")
        #: set by :meth:`resume`: the checkpoint loaded (None: starting at step 0) and the recorded config changes
        self.resumed_from: Path | None = None
        self.config_changes: list[ConfigChange] = []
        #: set by :meth:`fit`: the run had already finished when it was called (nothing was trained or scored)
        self.already_finished = False
        self.labels, pseudo = open_labels(d)
        if self.labels.selection:  # --min-confidence / --keep-share
            self.notes.append(self.labels.selection)
        self.val_reader = open_val_reader(d)
        torch.manual_seed(t.seed)
        self.model = build_segmenter(m.arch, encoder=m.encoder, classes=d.num_classes,
                                     **m.kwargs).to(self.device)  # random init: the weights load when the run starts
        self.multiple = size_multiple(self.model)
        crop = round_up(d.crop_size, self.multiple)
        if crop != d.crop_size:
            self.notes.append(f"crop size {d.crop_size} rounded up to {crop}, a multiple of {self.multiple} "
                              f"({m.arch}/{m.encoder} needs input sizes divisible by {self.multiple})")
            d.crop_size = crop
        preflight(self.model, batch_size=d.batch_size, crop_size=d.crop_size, device=self.device,
                  what=f"{m.arch} with encoder {m.encoder}")
        self.dataset = SegTrainDataset(self.labels, pseudo, crop_size=d.crop_size, scale_range=d.scale_range,
                                       flip_p=d.flip_p, seed=t.seed)
        o = cfg.optim
        enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
        enc_ids = {id(p) for p in enc}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in enc_ids]
        groups = [{"params": enc, "lr": o.lr, "name": "encoder"},
                  {"params": rest, "lr": o.lr * o.head_lr_mult, "name": "decoder"}]
        if o.name == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                                                                    weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        self.step = 0
        self.last_result: EvalResult | None = None  #: the final validation of :meth:`fit`

    # -- starting weights (self.start_weights) -----------------------------------------------------------------
    def _resolve_weights(self) -> Weights:
        m = self.cfg.model
        return resolve_encoder_weights(m.encoder_weights, m.encoder)

    def _load_weights(self, weights: Weights) -> None:
        m = self.cfg.model
        load_encoder_weights(self.model, weights.path, arch=m.arch, encoder=m.encoder, classes=self.cfg.data.num_classes,
                             kwargs=model_kwargs(m.arch, m.kwargs))

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"kind": "segmenter", **training_state(self)}

    def load_state_dict(self, ckpt: dict[str, Any], source: str | Path) -> None:
        require_kind(ckpt, "segmenter", source)
        mine = config_to_dict(self.cfg)
        theirs = ckpt.get("config", {})
        diffs = [f"{s}.{k}: checkpoint {theirs.get(s, {}).get(k)!r} vs requested {mine[s][k]!r}"
                 for s, k in MODEL_KEYS if theirs.get(s, {}).get(k) != mine[s][k]]
        if diffs:
            raise CheckpointError(f"checkpoint {source} was trained with another model ({'; '.join(diffs)}); pass "
                                  "the same --arch/--encoder/--model-kwargs/--num-classes or choose another --out")
        restore_training_state(self, ckpt, source)

    def resume(self, spec: str | None, *, allow_changes: bool = False, keep: Iterable[str] = ()) -> bool:
        """``None``: fresh run (refuses to overwrite an existing one); ``auto``: continue ``last.pt`` if present;
        a path: continue from that checkpoint, with the config-change check (:func:`resume_run`). Sets
        ``resumed_from`` and ``config_changes``; returns whether a checkpoint was loaded."""
        self.resumed_from, self.config_changes = resume_run(self, spec, allow_changes=allow_changes, keep=keep)
        return self.resumed_from is not None

    def save(self) -> Path:
        """Write ``RUN_DIR/last.pt``."""
        return self.folder.save_checkpoint(self.state_dict)

    def checkpoint(self) -> Path:
        """The periodic checkpoint of :func:`run_loop`: :meth:`save`."""
        return self.save()

    def save_model(self, metrics: dict[str, Any] | None = None) -> Path:
        """``RUN_DIR/model/`` in smp's ``save_pretrained`` format, replaced as a whole (temp folder + rename)."""
        final = self.run_dir / "model"
        tmp = self.run_dir / ".model.tmp"
        old = self.run_dir / ".model.old"
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        d = self.cfg.data
        try:
            with disk_full_guard(final):  # a full disk: DiskFullError, and model/ stays the previous one
                self.model.save_pretrained(tmp, metrics=metrics, dataset=f"{d.layout} {d.root}, split {d.split}, "
                                                                         f"labels {d.labels}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():  # hub writers may leave 0600 files; outputs get the usual permissions
            f.chmod(mode)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    # -- loop ----------------------------------------------------------------------------------------------

    def train_loader(self) -> DataLoader:
        """The training batches from ``self.step`` on (step-indexed: a resumed run draws what an uninterrupted one
        would have)."""
        d = self.cfg.data
        sampler = StepBatchSampler(len(self.dataset), d.batch_size, self.cfg.train.seed, start_step=self.step)
        return DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=d.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=d.num_workers > 0, worker_init_fn=leave_signals_to_main,
            generator=torch.Generator().manual_seed(self.cfg.train.seed),  # keeps the global RNG for the model
        )

    def train_step(self, batch: dict[str, Any]) -> float:
        """One optimiser step at ``self.step`` (lr set from the schedule first); returns the loss."""
        mult = lr_multiplier(self.step, self.cfg.optim, self.cfg.train.iters)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * mult
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True)
        with self.autocast():
            logits = forward_logits(self.model, x)  # (B, K, S, S)
        loss = ce_loss(logits.float(), y, self.cfg.data.ignore_index)
        self.losses.check(float(loss.detach()), step=self.step, lr=self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def validate(self) -> EvalResult | None:
        """Score the model on the val split's GT masks (all of them, or ``train.val_max_images``)."""
        reader = self.val_reader
        if reader is None:
            return None
        t, m = self.cfg.train, self.cfg.model
        ids = reader.ids[: t.val_max_images] if t.val_max_images else None
        source = PredictedMasks(self.model, reader, multiple=self.multiple, device=self.device,
                                autocast=self.autocast if self.amp_dtype else None,
                                name=f"{m.arch}/{m.encoder} ({self.run_dir}, step {self.step})",
                                max_side=self.cfg.data.max_side or 0)
        was_training = self.model.training
        self.model.eval()
        try:
            result = evaluate_masks(source, reader, ignore_index=self.cfg.data.ignore_index, ids=ids,
                                    progress=not self.quiet and sys.stderr.isatty())
        finally:
            self.model.train(was_training)
        d = self.cfg.data
        result.info = {"arch": m.arch, "encoder": m.encoder, "labels": d.labels, "train_split": d.split,
                       "iters": self.step, "crop_size": d.crop_size, "size_multiple": self.multiple}
        return result

    def validation_images(self) -> list[tuple[str, np.ndarray]]:
        """``(tag, strip)`` of the first val images for the log sink: the image, the model's mask, the GT and the
        errors (:func:`seco_labels.evaluation.show.panels_for`), as ``seco evaluate`` would score that mask."""
        from ..evaluation.show import draw_strip, panels_for

        reader = self.val_reader
        if reader is None:
            return []
        strips = []
        was_training = self.model.training
        self.model.eval()
        try:
            for i, image_id in enumerate(reader.ids[: image_count(self.cfg.train.val_max_images)]):
                image = reader.load_image(image_id)
                pred = predict_mask(self.model, image, multiple=self.multiple, device=self.device,
                                    autocast=self.autocast if self.amp_dtype else None,
                                    max_side=self.cfg.data.max_side or 0)
                panels = panels_for(image, pred, reader.class_names, gt=reader.load_mask(image_id, image.shape[:2]),
                                    ignore_index=self.cfg.data.ignore_index)
                panels[1].caption, panels[1].legend = "prediction", ()  # panels_for draws a pseudo mask's
                strips.append((f"val_images/{i}_{image_id}", np.asarray(draw_strip(panels, title=image_id))))
        finally:
            self.model.train(was_training)
        return strips

    def fit(self) -> dict[str, Any]:
        """Train from ``self.step`` to ``train.iters``, save ``last.pt`` and ``model/``, then score the val split
        and write ``metrics.json`` + ``per_class.csv``. Returns the last step's record and the val mIoU.

        A run that had already finished (``model/`` saved, and the reports when there is a val split) trains and
        scores nothing (``already_finished``) and returns its last logged step and val mIoU. Records of steps >=
        ``self.step`` are dropped from the log first (they are re-run), so each step is logged once.

        Runs holding ``RUN_DIR/.lock`` (:func:`~seco_labels.training.loop.opened_run`).

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM arrived; the step under way was finished and checkpointed first.
            FolderBusyError: another process is writing ``RUN_DIR``.
            DiskFullError: a checkpoint, log or model write did not fit; the previous files are kept.
        """
        with opened_run(self):
            if self.step >= self.cfg.train.iters and self._finished():
                self.already_finished = True
                return self._logged_summary()
            last = run_loop(self, self.train_loader, lambda batch: {"loss": self.train_step(batch)},
                            self._validation_entry, desc="fit-segmenter", validate_last_step=False)
            if latest_checkpoint(self.run_dir) is None:  # resumed a finished run from another path
                self.save()
            result = self.last_result = self.validate()
            summary: dict[str, Any] = {**(last or self.folder.last_logged()), "steps": self.step}
            if result is not None:
                miou = _num(result.confusion.miou())
                self._drop_final_validation()
                self.folder.log({"step": self.step - 1, "split": self.cfg.data.val_split, "miou": miou})
                self.folder.log_images(self.step - 1, self.validation_images)
                write_reports(result, self.run_dir)
                summary["val_miou"] = miou
            self.save_model({"val_miou": summary.get("val_miou"), "val_split": self.cfg.data.val_split or None,
                             "steps": self.step})
            return summary

    def _validation_entry(self) -> tuple[dict[str, Any], str] | None:
        """:meth:`validate` during training, as :func:`run_loop` logs and shows it (None: no val split)."""
        result = self.validate()
        if result is None:
            return None
        miou = result.confusion.miou()
        return {"miou": _num(miou)}, f"val mIoU {100 * miou:.2f}"

    def _finished(self) -> bool:
        """Whether the final phase of :meth:`fit` (model saved, val reports written) completed."""
        reports_done = not self.cfg.data.val_split or (self.run_dir / "metrics.json").is_file()
        return (self.run_dir / "model").is_dir() and reports_done

    def _logged_summary(self) -> dict[str, Any]:
        """:meth:`fit`'s summary of a finished run, from ``metrics.jsonl``: last step record, ``steps``,
        ``val_miou`` (the final validation)."""
        summary = {**self.folder.last_logged(), "steps": self.step}
        summary.pop("split", None)
        if "miou" in summary:
            summary["val_miou"] = summary.pop("miou")
        return summary

    def _drop_final_validation(self) -> None:
        """Remove a final validation record already logged at this step (a final phase cut short and re-run), so
        the log holds it once."""
        log_path = self.folder.log_path
        if not log_path.exists():
            return
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if not ((r := json.loads(ln)).get("split") is not None
                                           and r["step"] == self.step - 1 and "loss" not in r)]
        if len(kept) != len(lines):
            atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
