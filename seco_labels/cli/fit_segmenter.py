"""``seco fit-segmenter``: train any smp architecture on pseudo masks (or GT) and score it on the val split."""

from __future__ import annotations

import click
import yaml

from . import cli
from .options import (
    classes_option,
    config_key_option,
    config_values,
    device_option,
    lock_out,
    out_option,
    quiet_option,
    starts_fresh,
)
from .train import allow_changes_option, exit_interrupted, report_finished, report_resume


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
@config_key_option("model.arch", "--arch", type=SmpArchChoice(),
                   help="smp architecture (model.arch; default deeplabv3plus).")
@config_key_option("model.encoder", "--encoder",
                   help="smp encoder name or tu-<timm model>, e.g. resnet50, mit_b0, tu-convnext_tiny (model.encoder; "
                        "default resnet50).")
@config_key_option("model.encoder_weights", "--encoder-weights", metavar="NAME|FILE|random",
                   help="The encoder's starting weights (model.encoder_weights; default imagenet): smp's names for "
                        "the encoder (imagenet, ssl, swsl, ...); for tu- encoders a timm pretrained tag, "
                        "hf-hub:ORG/NAME, or imagenet (timm's default tag); a local weights file; or random. Names "
                        "come from the Hugging Face cache (HF_HUB_CACHE) and download once; HF_HUB_OFFLINE=1 never "
                        "downloads. The run records the name and the file's sha256.")
@config_key_option("model.kwargs", "--model-kwargs", metavar="YAML", callback=_yaml_mapping,
                   help="Extra smp.create_model arguments as a YAML/JSON mapping, e.g. '{encoder_depth: 3, "
                        "decoder_channels: [64, 32, 16]}' (model.kwargs).")
@config_key_option("data.labels", "--labels", metavar="ART_DIR|gt",
                   help="Export folder of seco export-masks (cams_<split>.h5 or masks_<split>/), or 'gt' for the "
                        "split's ground-truth masks (data.labels).")
@config_key_option("data.root", "--data-root", type=click.Path(file_okay=False),
                   help="Dataset root (data.root; default: the export's dataset_root).")
@config_key_option("data.layout", "--layout",
                   help="Dataset layout voc | coco | coco-seco | folder (default: the export's, else voc).")
@config_key_option("data.num_classes", "--num-classes", type=int,
                   help="K, background included (default: the layout's; must match the export's).")
@classes_option
@config_key_option("data.split", "--split", help="Training split (data.split; default train_aug).")
@config_key_option("data.val_split", "--val-split", help="GT-scored split (data.val_split; default val; '' for none).")
@out_option("--out", "run_dir", required=True, help="Run folder SEG_DIR.")
@config_key_option("train.iters", "--iters", type=int, help="Training iterations (train.iters; default 20000).")
@config_key_option("data.batch_size", "--batch-size", type=int, help="Images per step (data.batch_size; default 8).")
@config_key_option("data.crop_size", "--crop-size", type=int,
                   help="Training crop side (data.crop_size; default 512), rounded up to the model's size multiple.")
@config_key_option("optim.lr", "--lr", type=float, help="Base learning rate (optim.lr; default 0.01).")
@config_key_option("optim.name", "--optimizer", type=click.Choice(["sgd", "adamw"]), help="optim.name (default sgd).")
@config_key_option("train.amp", "--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]),
                   help="Mixed precision (train.amp; default auto: bf16/fp16 on CUDA, fp32 on CPU).")
@config_key_option("data.num_workers", "--num-workers", type=int,
                   help="DataLoader workers (data.num_workers; default 4).")
@config_key_option("train.val_every", "--val-every", type=int,
                   help="Validate every N steps (train.val_every; 0 = only at the end).")
@config_key_option("train.ckpt_every", "--ckpt-every", type=int,
                   help="Write last.pt every N steps (train.ckpt_every).")
@config_key_option("train.val_max_images", "--val-max-images", type=int,
                   help="Score only the first N val images (train.val_max_images; 0 = all).")
@config_key_option("train.log", "--log", type=click.Choice(["jsonl", "tensorboard"]),
                   help="tensorboard: also write SEG_DIR/tensorboard/ (loss, lr, val mIoU and images; needs pip "
                        "install \"seco-labels[tensorboard]\"). SEG_DIR/metrics.jsonl is always written (train.log; "
                        "default jsonl).")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="Continue SEG_DIR/last.pt (auto; starts at step 0 when there is none) or PATH.")
@allow_changes_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON config (nested like SEG_DIR/config.yaml) under the options.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config value, e.g. --set optim.head_lr_mult=10 (repeatable).")
@config_key_option("train.seed", "--seed", type=int, help="Random seed (train.seed).")
@device_option("train.device")
@quiet_option("No progress bar and no per-class table.")
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
