"""``seco fit-segmenter``: train any smp architecture on pseudo masks (or GT) and score it on the val split."""

from __future__ import annotations

import click

from . import cli
from .options import classes_option, device_option, lock_out, out_option, quiet_option
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


@cli.command("fit-segmenter")
@click.option("--arch", type=SmpArchChoice(), default=None,
              help="smp architecture (model.arch; default deeplabv3plus).")
@click.option("--encoder", default=None,
              help="smp encoder name or tu-<timm model>, e.g. resnet50, mit_b0, tu-convnext_tiny (model.encoder; "
                   "default resnet50).")
@click.option("--encoder-weights", type=click.Path(dir_okay=False), default=None,
              help="Local weights file for the encoder (model.encoder_weights); default random init, nothing is "
                   "downloaded.")
@click.option("--model-kwargs", default=None, metavar="YAML",
              help="Extra smp.create_model arguments as a YAML/JSON mapping, e.g. '{encoder_depth: 3, "
                   "decoder_channels: [64, 32, 16]}' (model.kwargs).")
@click.option("--labels", default=None, metavar="ART_DIR|gt",
              help="Export folder of seco export-masks (cams_<split>.h5 or masks_<split>/), or 'gt' for the split's "
                   "ground-truth masks (data.labels).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Dataset root (data.root; default: the export's dataset_root).")
@click.option("--layout", default=None, help="Dataset layout voc | coco | coco-seco (default: the export's, else voc).")
@click.option("--num-classes", type=int, default=None,
              help="K, background included (default: the layout's; must match the export's).")
@classes_option
@click.option("--split", default=None, help="Training split (data.split; default train_aug).")
@click.option("--val-split", default=None, help="GT-scored split (data.val_split; default val; '' for none).")
@out_option("--out", "run_dir", required=True, help="Run folder SEG_DIR.")
@click.option("--iters", type=int, default=None, help="Training iterations (train.iters; default 20000).")
@click.option("--batch-size", type=int, default=None, help="Images per step (data.batch_size; default 8).")
@click.option("--crop-size", type=int, default=None,
              help="Training crop side (data.crop_size; default 512), rounded up to the model's size multiple.")
@click.option("--lr", type=float, default=None, help="Base learning rate (optim.lr; default 0.01).")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="optim.name (default sgd).")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default=None,
              help="Mixed precision (train.amp; default auto: bf16/fp16 on CUDA, fp32 on CPU).")
@click.option("--num-workers", type=int, default=None, help="DataLoader workers (data.num_workers; default 4).")
@click.option("--val-every", type=int, default=None,
              help="Validate every N steps (train.val_every; 0 = only at the end).")
@click.option("--ckpt-every", type=int, default=None, help="Write last.pt every N steps (train.ckpt_every).")
@click.option("--val-max-images", type=int, default=None,
              help="Score only the first N val images (train.val_max_images; 0 = all).")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="Continue SEG_DIR/last.pt (auto; starts at step 0 when there is none) or PATH.")
@allow_changes_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON config (nested like SEG_DIR/config.yaml) under the options.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config value, e.g. --set optim.head_lr_mult=10 (repeatable).")
@click.option("--seed", type=int, default=None, help="Random seed (train.seed).")
@device_option("train.device")
@quiet_option("No progress bar and no per-class table.")
def fit_segmenter_cmd(arch, encoder, encoder_weights, model_kwargs, labels, data_root, layout, num_classes,
                      class_names, split, val_split, run_dir, iters, batch_size, crop_size, lr, optimizer, amp,
                      num_workers, val_every, ckpt_every, val_max_images, resume, allow_changes, config_file, overrides,
                      seed, device, quiet):
    """Train an smp segmenter on pseudo masks (or GT) and score it on the val split's GT.

    Writes SEG_DIR/config.yaml, last.pt (resumable), metrics.jsonl, model/ (smp save_pretrained: reload with
    smp.from_pretrained('SEG_DIR/model')), and metrics.json + per_class.csv (as seco evaluate).

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves SEG_DIR/last.pt and exits with 130 (SIGINT) or
    143 (SIGTERM); --resume auto continues from there.
    """
    import yaml

    from ..errors import ConfigError
    from ..segmenters.config import segmenter_config
    from ..segmenters.train import SegmenterTrainer
    from ..run_state import RUN_LOCK, TrainingInterrupted

    lock_out(run_dir, RUN_LOCK, "a training run")
    kwargs = None
    if model_kwargs is not None:
        try:
            kwargs = yaml.safe_load(model_kwargs) or {}
        except yaml.YAMLError:
            kwargs = None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"--model-kwargs {model_kwargs!r} is not a YAML mapping; e.g. '{{encoder_depth: 3}}'")
    cfg = segmenter_config(
        config_file, overrides,
        **{
            "model.arch": arch, "model.encoder": encoder, "model.encoder_weights": encoder_weights,
            "model.kwargs": kwargs, "data.labels": labels, "data.root": data_root, "data.layout": layout,
            "data.num_classes": num_classes if num_classes is not None else len(class_names or ()) or None,
            "data.class_names": class_names, "data.split": split, "data.val_split": val_split, "train.iters": iters,
            "data.batch_size": batch_size, "data.crop_size": crop_size, "optim.lr": lr, "optim.name": optimizer,
            "train.amp": amp, "data.num_workers": num_workers, "train.val_every": val_every,
            "train.ckpt_every": ckpt_every, "train.val_max_images": val_max_images, "train.seed": seed,
            "train.device": device,
        },
    )
    trainer = SegmenterTrainer(cfg, run_dir, quiet=quiet)
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
