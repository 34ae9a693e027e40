"""The options of every ``seco`` command: defaults written once and shown by click, one meaning per option name.

Walks ``cli.commands``, so a new command or option is checked without editing this file.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from functools import reduce

import click
import pytest

from seco_labels.cli import cli
from seco_labels.config import get_preset, list_presets
from seco_labels.segmenters.config import SegmenterConfig

#: "default" followed by a value: a number anywhere in the clause ("default 20000", "(default: 0.5)",
#: "default 1.0,1.25,1.5"), or one lowercase token closed by punctuation ("default jsonl)", "(default: demo)",
#: "default val;"); and a number before "by default" ("300 steps by default"). Words are fine: "default: the
#: training run's", "default: crop size", "default: ART_DIR" (a placeholder, upper case).
_HAND_WRITTEN = re.compile(
    r"\b[Dd]efault\b\s*(?::|=|\bis\b)?\s*(?:[^.;()\[\]]*?\d|[a-z0-9][a-z0-9_.\-]*(?=[);,:]|\.(?:\s|$)|$))"
    r"|\d[\w.,]*\s+\w+\s+by default"
)


def _hand_written_default(text: str) -> str | None:
    match = _HAND_WRITTEN.search(" ".join(text.split()))
    return match.group(0) if match else None


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def _long_name(option: click.Option) -> str:
    return max(option.opts, key=len)


def _shown_default(command: click.Command, name: str, option: click.Option) -> str | None:
    """The ``[default: ...]`` of ``option`` in ``seco NAME --help``, None where it shows none."""
    with click.Context(command, info_name=name) as ctx:
        record = option.get_help_record(ctx)
    match = re.search(r"\[(?:[^\]]*; )?default: ([^;\]]+)", " ".join(record[1].split())) if record else None
    return match.group(1) if match else None


def _value(cfg, key: str):
    return reduce(getattr, key.split("."), cfg)


def _as_shown(value) -> str | None:
    """A config value as --help shows it: sequences comma-separated, nothing for None and empty values."""
    if value is None or (isinstance(value, (str, tuple, list, dict)) and not value):
        return None
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


@pytest.mark.parametrize("text, hand_written", [
    ("Training iterations (train.iters; default 20000).", True),
    ("optim.name (default sgd).", True),
    ("Starting values (default: demo).", True),
    ("Sigmoid score (default: 0.5)", True),
    ("max over scales (default 1.0,1.25,1.5).", True),
    ("GT-scored split (data.val_split; default val; '' for none).", True),
    ("Mixed precision (train.amp; default auto: bf16/fp16 on CUDA)", True),
    ("train SeCo (a tiny ViT, 128 px crops, 300 steps by default)", True),
    ("Dataset root (default: the training run's).", False),
    ("Images are resized to this square (default: crop size).", False),
    ("Where the reports go (default: ART_DIR); reports of other splits are kept.", False),
    ("imagenet (the tag timm loads by default); a local weights file", False),
    ("YAML/JSON file of defaults for this command's options (keys: option names)", False),
    ("Add the mirror image's logits (default: on for the SeCo decoder, off for smp models).", False),
])
def test_the_hand_written_default_detector(text, hand_written):
    assert (_hand_written_default(text) is not None) == hand_written, _hand_written_default(text)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_no_help_text_writes_a_default_by_hand(name):
    """A default belongs in one place, the config dataclass or a module constant, and reaches --help through click's
    ``[default: VALUE]`` (``show_default``); a help text says a default in words only where it is no single value
    ("default: the training run's"). Checked: every option's help and the command's own help."""
    command = cli.commands[name]
    texts = {f"{name} {_long_name(o)}": o.help or "" for o in _options(command)}
    texts[name] = command.help or ""
    found = {where: hit for where, text in texts.items() if (hit := _hand_written_default(text))}
    assert found == {}, f"defaults written by hand (show them with show_default, from the config): {found}"


#: the configs a command's config-key options read their defaults from, and how a config's default shows when
#: these configs disagree on it
_CONFIGS = {
    "train": ([get_preset(p) for p in list_presets()], "the preset's"),
    "demo": ([get_preset(p) for p in list_presets()], "the preset's"),
    "fit-segmenter": ([SegmenterConfig()], None),
}


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_shown_config_defaults_are_the_configs_values(name):
    """An option that sets a config key shows the value its command's config starts with: the segmenter's
    SegmenterConfig() value (every key that has one), or for a SeCo command the presets' common value, else
    "the preset's" (never one preset's number)."""
    configs, differ = _CONFIGS[name]
    command = cli.commands[name]
    keyed = [(o, o.config_key) for o in _options(command) if getattr(o, "config_key", None)]
    assert {k for _, k in keyed} >= {"train.seed", "train.device", "train.iters"}
    for option, key in keyed:
        values = [_as_shown(_value(cfg, key)) for cfg in configs]
        expected = values[0] if len(set(values)) == 1 else differ
        shown = _shown_default(command, name, option)
        where = f"seco {name} {_long_name(option)} ({key})"
        if shown is not None:
            assert shown == expected, f"{where} shows [default: {shown}], the config starts at {expected}"
        elif differ is None:  # one config: every value it has is shown
            assert expected is None, f"{where} hides the config's default {expected}"


def test_export_masks_shows_the_export_options_defaults():
    """export-masks passes every option to ExportOptions: what --help shows is the dataclass's default."""
    from seco_labels.inference.export import SCALE_PRESETS, ExportOptions

    command = cli.commands["export-masks"]
    defaults = {f.name: f.default for f in dataclasses.fields(ExportOptions)}
    checked = []
    for option in _options(command):
        if option.name not in defaults or (shown := _shown_default(command, "export-masks", option)) is None:
            continue
        value = defaults[option.name]
        if option.name == "scales":
            assert SCALE_PRESETS[shown] == value
        elif isinstance(value, bool):
            assert shown == ("flip" if value else "no-flip")
        else:
            assert shown == _as_shown(value), f"--{option.name}: shown {shown}, ExportOptions has {value}"
        checked.append(option.name)
    assert {"tag_threshold", "batch_size", "num_workers", "formats", "flip"} <= set(checked)


#: option names whose help is each command's own, and why. Every other name that several commands declare is one
#: option: the same help text everywhere (and the same shown default, but for config keys read from different
#: configs, which ``test_shown_config_defaults_are_the_configs_values`` checks).
OWN_HELP = {
    "--out": "each command's output folder, and the files it writes there",
    "--split": "the split a command reads: to export, to segment, to score, to train on",
    "--data-root": "the default root is the command's source: a training run, an export, a model",
    "--layout": "as --data-root",
    "--quiet": "says what else the command leaves out",
    "--preset": "seco demo starts from its own preset, seco train from the --config file's",
    "--batch-size": "seco train's is summed over torchrun processes, export-masks' is one forward pass",
    "--scales": "export-masks' are CAM scales (or a scale preset), segment's and predict's the decoder's",
    "--flip": "CAMs in export-masks, decoder logits in segment, per-model in predict",
    "--crf": "predict's applies to the SeCo decoder only",
    "--input-size": "as --crf",
    "--overwrite": "says which outputs of the command are deleted or redone",
    "--pred": "seco show draws CAM panels too, which need the HDF5 file",
}


def test_an_option_name_means_one_thing_in_every_command():
    """Options of several commands with the same long name, parameter name and config key are one option, declared
    once in seco_labels/cli/options.py: the same help text, and (plain options) the same shown default. A name
    in :data:`OWN_HELP` may differ, for the reason given there; one listed whose declarations all agree must
    leave the list."""
    groups: dict[tuple, list[tuple[str, click.Option]]] = defaultdict(list)
    for name, command in sorted(cli.commands.items()):
        for option in _options(command):
            groups[(_long_name(option), option.name, getattr(option, "config_key", None))].append((name, option))
    differing = set()
    for (long_name, _, key), declared in groups.items():
        if len(declared) < 2:
            continue
        helps = {name: option.help for name, option in declared}
        if len(set(helps.values())) > 1:
            differing.add(long_name)
            assert long_name in OWN_HELP, f"{long_name} has different help texts: {helps}"
        if key is None and long_name not in OWN_HELP:
            shown = {name: _shown_default(cli.commands[name], name, option) for name, option in declared}
            assert len(set(shown.values())) == 1, f"{long_name} shows different defaults: {shown}"
    assert sorted(set(OWN_HELP) - differing) == [], "these options now read the same everywhere: drop them"


def test_demo_offers_no_option_it_does_not_have():
    """seco demo resumes its own stages; its help names no --resume, which it has not (issue 29's drift list)."""
    command = cli.commands["demo"]
    names = {o for p in _options(command) for o in p.opts}
    assert "--resume" not in names
    texts = [command.help or "", *(o.help or "" for o in _options(command))]
    assert not [t for t in texts if "--resume" in t]


def _literal_of(config_cls: type, dotted: str) -> tuple | None:
    """The values of the ``Literal`` type of a config field (``train.amp`` of SecoConfig), or None."""
    import typing

    from seco_labels.config_io import field_types

    cls = config_cls
    *sections, name = dotted.split(".")
    for section in sections:
        cls = field_types(cls)[section]
    target = field_types(cls)[name]
    if typing.get_origin(target) is tuple:  # a tuple of choices (export's formats)
        target = typing.get_args(target)[0]
    return typing.get_args(target) if typing.get_origin(target) is typing.Literal else None


def test_every_choice_option_offers_what_its_config_field_accepts():
    """A choice option of a config key offers exactly the field's Literal values, so a value the CLI accepts is never
    refused by the config and the reverse (the Literal is the one place a choice is declared)."""
    from seco_labels.config import SecoConfig
    from seco_labels.inference.export import ExportOptions

    config_of = {"fit-segmenter": SegmenterConfig}
    checked = 0
    for name, command in cli.commands.items():
        for option in _options(command):
            if not isinstance(option.type, click.Choice):
                continue
            key = getattr(option, "config_key", None)
            if key is not None:
                values = _literal_of(config_of.get(name, SecoConfig), key)
            elif name == "export-masks" and option.name in {f.name for f in dataclasses.fields(ExportOptions)}:
                values = _literal_of(ExportOptions, option.name)
            else:
                continue
            if values is None:
                continue
            assert sorted(option.type.choices) == sorted(values), f"seco {name} {_long_name(option)}"
            checked += 1
    assert checked >= 5  # --amp, --optimizer, --log (train, fit-segmenter), --cam-source, --tags
