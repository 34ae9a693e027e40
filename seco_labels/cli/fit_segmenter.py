"""``seco fit-segmenter``: train any smp architecture on pseudo masks (or GT) and score it on the val split."""

from __future__ import annotations

import click
import yaml

from . import cli
from .options import (
    allow_changes_option,
    classes_option,
    config_key_option,
    config_options,
    config_values,
    iters_option,
    lock_out,
    log_option,
    out_option,
    resume_option,
    segmenter_configs,
    starts_fresh,
    val_split_option,
)
from .run_output import exit_interrupted, report_finished, report_resume


class SmpArchChoice(click.Choice):
    """``--arch`` choices read from smp's registry ``smp.MODEL_ARCHITECTURES_MAPPING``, on first use: importing smp
    takes seconds, which every other ``seco`` command would pay otherwise."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=False)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from ..segmenters.model import architectures

        return tuple(architectures())

    @choices.setter
    def choices(self, value) -> None:  # click's __init__ assigns; the registry is the source of truth
        pass


def _yaml_mapping(ctx: click.Context, param: click.Parameter, value: str | None) -> dict | None:
    """``--model-kwargs`` callback: a YAML/JSON mapping."""
    if value is None:
        return None
    try:
        mapping = yaml.safe_load(value) or {}
    except yaml.YAMLError:
        mapping = None
    if not isinstance(mapping, dict):
        raise click.BadParameter(f"{value!r} is not a YAML mapping; e.g. '{{encoder_depth: 3}}'", ctx=ctx, param=param)
    return mapping


@cli.command("fit-segmenter")
@config_key_option("model.arch", "--arch", type=SmpArchChoice(), configs=segmenter_configs,
                   help="smp architecture (model.arch).")
@config_key_option("model.encoder", "--encoder", configs=segmenter_configs,
                   help="smp encoder name or tu-<timm model>, e.g. resnet50, mit_b0, tu-convnext_tiny (model.encoder).")
@config_key_option("model.encoder_weights", "--encoder-weights", metavar="NAME|FILE|random", configs=segmenter_configs,
                   help="The encoder's starting weights (model.encoder_weights): smp's names for the encoder "
                        "(imagenet, ssl, swsl, ...); for tu- encoders a timm pretrained tag, hf-hub:ORG/NAME, or "
                        "imagenet (the tag timm loads by default); a local weights file; or random. Names come from "
                        "the Hugging Face cache (HF_HUB_CACHE) and download once; HF_HUB_OFFLINE=1 never downloads. "
                        "The run records the name and the file's sha256.")
@config_key_option("model.kwargs", "--model-kwargs", metavar="YAML", callback=_yaml_mapping,
                   help="Extra smp.create_model arguments as a YAML/JSON mapping, e.g. '{encoder_depth: 3, "
                        "decoder_channels: [64, 32, 16]}' (model.kwargs).")
@config_key_option("data.labels", "--labels", metavar="ART_DIR|gt",
                   help="Export folder of seco export-masks (cams_<split>.h5 or masks_<split>/), or 'gt' for the "
                        "split's ground-truth masks (data.labels).")
@config_key_option("data.root", "--data-root", type=click.Path(file_okay=False),
                   help="Dataset root (data.root; default: the export's dataset_root).")
@config_key_option("data.layout", "--layout",
                   help="Dataset layout voc | coco | coco-seco | folder (data.layout; default: the export's, else "
                        "voc).")
@config_key_option("data.num_classes", "--num-classes", type=int,
                   help="K, background included (data.num_classes; default: the layout's; must match the export's).")
@classes_option
@config_key_option("data.split", "--split", configs=segmenter_configs, help="Training split (data.split).")
@config_key_option("data.min_confidence", "--min-confidence", type=click.FloatRange(0, 1), metavar="X",
                   help="Train only on the pseudo masks whose export confidence is at least X (data.min_confidence; "
                        "docs/export.md 'Confidence'). Not with --labels gt.")
@config_key_option("data.keep_share", "--keep-share", type=click.FloatRange(0, 1, min_open=True), metavar="F",
                   help="Train only on the share F of the pseudo masks with the highest export confidence "
                        "(data.keep_share). Not with --labels gt, nor with --min-confidence.")
@val_split_option(segmenter_configs)
@out_option("--out", "run_dir", required=True, help="Run folder SEG_DIR.")
@iters_option(segmenter_configs)
@config_key_option("data.batch_size", "--batch-size", type=int, configs=segmenter_configs,
                   help="Images per step (data.batch_size).")
@config_key_option("data.crop_size", "--crop-size", type=int, configs=segmenter_configs,
                   help="Training crop side (data.crop_size), rounded up to the model's size multiple.")
@config_key_option("optim.lr", "--lr", type=float, configs=segmenter_configs, help="Base learning rate (optim.lr).")
@config_key_option("optim.name", "--optimizer", type=click.Choice(["sgd", "adamw"]), configs=segmenter_configs,
                   help="Optimizer (optim.name).")
@config_key_option("train.amp", "--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), configs=segmenter_configs,
                   help="Mixed precision (train.amp; auto: bf16/fp16 on CUDA, fp32 on CPU).")
@config_key_option("data.num_workers", "--num-workers", type=int, configs=segmenter_configs,
                   help="DataLoader workers (data.num_workers).")
@config_key_option("train.val_every", "--val-every", type=int, configs=segmenter_configs,
                   help="Validate every N steps (train.val_every; 0 = only at the end).")
@config_key_option("train.ckpt_every", "--ckpt-every", type=int, configs=segmenter_configs,
                   help="Write last.pt every N steps (train.ckpt_every).")
@config_key_option("train.val_max_images", "--val-max-images", type=int, configs=segmenter_configs,
                   help="Score only the first N val images (train.val_max_images; 0 = all).")
@log_option(segmenter_configs)
@resume_option
@allow_changes_option
@config_options(segmenter_configs, quiet="No progress bar and no per-class table.")
def fit_segmenter_cmd(run_dir, resume, allow_changes, config_file, overrides, quiet):
    """Train an smp segmenter on pseudo masks (or GT) and score it on the val split's GT.

    Writes SEG_DIR/config.yaml, last.pt (resumable), metrics.jsonl, model/ (smp save_pretrained: reload with
    smp.from_pretrained('SEG_DIR/model')), and metrics.json + per_class.csv (as seco evaluate).

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves SEG_DIR/last.pt and exits with 130 (SIGINT) or
    143 (SIGTERM); --resume auto continues from there.
    """
    from ..segmenters.config import segmenter_config
    from ..segmenters.model import check_names
    from ..segmenters.train import SegmenterTrainer
    from ..segmenters.weights import resolve_encoder_weights
    from ..training.run_folder import RUN_LOCK
    from ..training.signals import TrainingInterrupted
    from ..training.sinks import require_log

    lock_out(run_dir, RUN_LOCK, "a training run")
    cfg = segmenter_config(config_file, overrides, **config_values())
    require_log(cfg.train.log)  # a missing tensorboard stops the run now, not after the model and data are built
    m = cfg.model
    weights = None
    if starts_fresh(run_dir, resume):  # the weights before the data: a missing download stops the run at once
        check_names(m.arch, m.encoder)
        weights = resolve_encoder_weights(m.encoder_weights, m.encoder)
    trainer = SegmenterTrainer(cfg, run_dir, quiet=quiet, weights=weights)
    for note in trainer.notes:
        click.echo(note, err=True)
    trainer.resume(resume, allow_changes=allow_changes)
    report_resume(trainer, run_dir, resume)
    try:
        summary = trainer.fit()
    except TrainingInterrupted as e:
        exit_interrupted(e, "to continue, run the same command with --resume auto")
    m, d = cfg.model, cfg.data
    if trainer.already_finished:  # then the run's own line below, without re-scoring (no per-class table)
        report_finished(trainer, run_dir, summary)
    line = f"trained {m.arch}/{m.encoder} for {trainer.step} steps on {trainer.labels.describe()} into {run_dir}"
    if summary.get("val_miou") is not None:
        line += f": val mIoU {100 * summary['val_miou']:.2f} on {d.val_split!r}"
        if not quiet and trainer.last_result is not None:
            click.echo(trainer.last_result.format_table())
    click.echo(line)
