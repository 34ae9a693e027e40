"""The whole pipeline on the bundled demo images (``seco demo``), as a library function.

:func:`run_demo` trains SeCo, exports pseudo masks of the train split, scores them (and draws four), trains a
segmenter on them and one on the ground truth, and compares the two on the val split. Every stage resumes in its
own folder under ``out_dir``, so calling it again continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import SecoConfig

__all__ = ["run_demo", "DEMO_STAGES", "SEG_ITERS"]

#: train, export, evaluate, fit-segmenter (pseudo masks and GT), compare
DEMO_STAGES = 5
#: iterations of each demo segmenter (``seco demo --seg-iters``)
SEG_ITERS = 80


def _num(x: float | None, scale: float = 1.0) -> str:
    return "-" if x is None or x != x else f"{scale * x:.2f}"


def run_demo(
    cfg: SecoConfig,
    out_dir: str | Path,
    *,
    seg_iters: int = SEG_ITERS,
    quiet: bool = False,
    allow_changes: bool = False,
    echo: Callable[[str], None] = print,
    on_resume: Callable[[Any, Path], None] | None = None,
    keep: Iterable[str] = (),
) -> dict[str, Any]:
    """Run (or continue) the demo pipeline of ``cfg`` into ``out_dir``; returns what each stage produced.

    Args:
        cfg: the SeCo config (the ``demo`` preset, possibly overridden); its data section is the demo dataset.
        out_dir: holds ``train/``, ``artifacts/``, ``segmenter-pseudo/``, ``segmenter-gt/`` and ``compare.*``.
        seg_iters: iterations of each segmenter (DeepLabV3+ / ResNet-18).
        quiet: no progress bars.
        allow_changes: resume the stages even where the config changed since their checkpoints.
        echo: where the one-line stage reports go.
        on_resume: called as ``on_resume(trainer, run_dir)`` after each trainer's ``resume("auto")``.
        keep: config keys a resumed SeCo run takes from its checkpoint (:meth:`Trainer.resume`; the CLI passes the
            schedule keys the user did not set, so a re-run with more ``--iters`` keeps the schedule under way).

    Returns:
        ``{"train": summary, "export": export summary, "masks": EvalResult, "cams": threshold sweep,
        "segmenters": [compare runs], "compare": {"md", "csv", "png"} paths}``.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM during a training stage (its checkpoint is saved; call again to go on).
    """
    from ..artifacts import open_split, show_dir
    from ..evaluation.evaluate import evaluate_masks, open_ground_truth, sweep_cam_threshold, write_reports
    from ..evaluation.show import write_strips
    from ..inference.export import ExportOptions, export_split
    from ..segmenters.compare import compare_runs, load_run
    from ..segmenters.config import segmenter_config
    from ..segmenters.train import SegmenterTrainer
    from ..training.trainer import Trainer

    out_dir = Path(out_dir)
    run_dir = out_dir / "train"
    trainer = Trainer(cfg, run_dir, quiet=quiet)
    trainer.resume("auto", allow_changes=allow_changes, keep=keep)
    if on_resume is not None:
        on_resume(trainer, run_dir)
    result = trainer.fit()
    done = " (already finished; nothing to do)" if trainer.already_finished else ""
    echo(f"[1/{DEMO_STAGES}] train: {trainer.step} steps in {run_dir}{done}")
    for key in ("loss_cls", "loss_lil", "loss_lig", "loss_seg", "cam_miou", "cam_aux_miou", "seg_miou"):
        if result.get(key) is not None:
            echo(f"  {key:>14}: {result[key]:.4f}")
    echo(f"  checkpoint: {run_dir / 'last.pt'}  metrics: {run_dir / 'metrics.jsonl'}")

    split, art = cfg.data.train_split, out_dir / "artifacts"
    exported = export_split(run_dir / "last.pt", split, art, options=ExportOptions(device=cfg.train.device),
                            quiet=quiet)
    echo(f"[2/{DEMO_STAGES}] export-masks: {exported['exported']} image(s) of {split} "
         f"({exported['skipped_done']} already done) in {exported['seconds']['total']:.1f} s -> {art}")

    reader = open_ground_truth(cfg.data.root, split, layout=cfg.data.layout, num_classes=cfg.data.num_classes,
                               class_names=cfg.data.class_names or None)
    pseudo = open_split(art, split)
    masks = evaluate_masks(pseudo.masks, reader)
    cams = sweep_cam_threshold(pseudo.require_cams(), reader)
    masks_report, _ = write_reports(masks, art, split_in_name=True)
    cams_report, _ = write_reports(cams.best, art, prefix="cams_", split_in_name=True)
    m = masks.summary()
    echo(f"[3/{DEMO_STAGES}] evaluate on {split}: pseudo masks mIoU {_num(m['miou'], 100)}, precision "
         f"{_num(m['mean_precision'], 100)}, recall {_num(m['mean_recall'], 100)}, FP/TP {_num(m['fp_tp'])}; "
         f"raw CAMs mIoU {_num(cams.best_miou, 100)} at background threshold {cams.best_threshold:.2f}")
    shown = write_strips(reader.ids[:4], reader, pseudo.masks, show_dir(art, split), cams=pseudo.cams,
                         split=split)
    echo(f"  reports: {masks_report}, {cams_report}; pictures: {shown[0].parent}")

    seg_runs = []
    for labels, name in ((str(art), "pseudo"), ("gt", "gt")):
        seg_dir = out_dir / f"segmenter-{name}"
        seg_cfg = segmenter_config(**{
            "model.arch": "deeplabv3plus", "model.encoder": "resnet18", "model.encoder_weights": "random",
            "data.labels": labels,
            "data.root": cfg.data.root, "data.layout": cfg.data.layout, "data.num_classes": cfg.data.num_classes,
            "data.split": split, "data.val_split": cfg.data.val_split, "data.crop_size": cfg.data.crop_size,
            "data.batch_size": 4, "data.num_workers": 2, "train.iters": seg_iters, "train.seed": cfg.train.seed,
            "train.device": cfg.train.device,
        })
        seg = SegmenterTrainer(seg_cfg, seg_dir, quiet=quiet)
        seg.resume("auto", allow_changes=allow_changes)
        summary = seg.fit()
        seg_runs.append(load_run(seg_dir, f"deeplabv3plus ({name})"))
        echo(f"[4/{DEMO_STAGES}] fit-segmenter on {'pseudo masks' if name == 'pseudo' else 'GT masks'}: "
             f"{seg.step} steps, val mIoU {_num(summary.get('val_miou'), 100)} -> {seg_dir}")
    paths = compare_runs(seg_runs, out_dir, stem="compare", title="demo: pseudo masks vs GT (val IoU %)")
    echo(f"[5/{DEMO_STAGES}] compare: {paths['md']}, {paths['csv']}, {paths['png']}")
    return {"train": result, "export": exported, "masks": masks, "cams": cams, "segmenters": seg_runs,
            "compare": paths}
