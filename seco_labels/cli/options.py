"""Options shared by several commands, the preset -> file -> --set -> option layering of the config, and the
output folder: ``--out`` checked before any work (:func:`out_option`; a default folder with
``io.check_writable_dir``) and locked against a second run (:func:`lock_out`).

Every option more than one command declares is declared here, once. Defaults are written once too: in the config
dataclasses (``seco_labels.config``, ``seco_labels.segmenters.config``) or a module constant, and shown by click as
``[default: VALUE]``; help texts say in words only what a value cannot (``default: the training run's``). A
config-key option's own default stays None ("not given", so the config file and ``--set`` still apply): ``--help``
shows the config's value through :class:`SecoOption`, read from the configs the command starts from
(:func:`preset_configs`, :func:`segmenter_configs`); where the presets differ it shows ``the preset's``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from ..config import (
    SCHEDULE_KEYS,
    SecoConfig,
    config_from_dict,
    default_max_side,
    dotted_keys,
    get_preset,
    list_presets,
    parse_override,
    scale_schedule,
    set_values,
)
from ..config_io import get_key, load_config_file
from ..errors import ConfigError, OutputError
from ..io import check_writable_dir, folder_lock
from ..training.sinks import LOG_KINDS, TENSORBOARD_DIR, TENSORBOARD_INSTALL

#: the preset of a config file without a ``preset`` key (SecoConfig's own defaults are this preset's)
DEFAULT_PRESET: str = SecoConfig.preset
#: what ``--help`` shows as the default of a config key whose value differs between the presets
PRESET_DEPENDENT = "the preset's"


def preset_configs() -> list[SecoConfig]:
    """The config of every preset: where a SeCo command's config starts (``seco train``, ``seco demo``)."""
    return [get_preset(name) for name in list_presets()]


def segmenter_configs() -> list[Any]:
    """``SegmenterConfig()``: where ``seco fit-segmenter``'s config starts."""
    from ..segmenters.config import SegmenterConfig

    return [SegmenterConfig()]


def _format_default(option: click.Option, value: Any) -> Any:
    """What ``--help`` shows for ``value``: a sequence as the comma-separated text the option takes, a flag's bool as
    it is (click names the flag it selects); None (nothing shown) for None, '' and empty containers, which the help
    text words instead."""
    if value is None or (isinstance(value, (str, tuple, list, dict)) and not value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


class SecoOption(click.Option):
    """A click option whose ``[default: ...]`` in ``--help`` is read when the help is shown.

    ``shown_default`` (a zero-argument function) gives the value to show while the parse default stays what it is:
    a config-key option keeps None ("not given") and shows the config's value. A default given as a zero-argument
    function (click would show "(dynamic)") is called and shown when ``show_default`` is on: so a default read from a
    module that is slow to import (the exporter's, which imports timm) costs nothing until the help or the option
    needs it. ``config_key`` is the dotted config key the option sets (:func:`config_key_option`), or None.
    """

    def __init__(self, param_decls: Any = None, *, config_key: str | None = None,
                 shown_default: Callable[[], Any] | None = None, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.config_key = config_key
        self.shown_default = shown_default

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        read = self.shown_default
        if read is None and self.show_default is True and callable(self.default):
            read = self.default
        if read is None:
            return super().get_help_record(ctx)
        # click formats the default it holds (click 8.1 inside this method, later ones in get_help_extra): hold the
        # value to show while it does
        shown = _format_default(self, read())
        held = self.default, self.show_default
        self.default, self.show_default = shown, shown is not None
        try:
            return super().get_help_record(ctx)
        finally:
            self.default, self.show_default = held


def option(*param_decls: str, **attrs: Any) -> Callable:
    """``click.option`` with :class:`SecoOption`."""
    return click.option(*param_decls, cls=SecoOption, **attrs)


def library_default(module: str, function: str, parameter: str) -> Callable[[], Any]:
    """The default of ``parameter`` in the signature of ``seco_labels.<module>.<function>``, read when click needs
    it (a zero-argument default of :func:`option`): the library function is the one place the value is written,
    and its module is imported only by the command that calls it."""
    def read() -> Any:
        import importlib
        import inspect

        func = getattr(importlib.import_module(f"seco_labels.{module}"), function)
        return inspect.signature(func).parameters[parameter].default

    return read


def _check_out(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--out`` callback: the folder is writable or can be created, checked while the options are parsed, before
    the command does any work. Parsing runs outside :class:`SecoCommand`'s handler, hence the ClickException."""
    if value is None:
        return None
    try:
        check_writable_dir(value, option=param.opts[0] if param.opts else "--out")
    except OutputError as e:
        raise click.ClickException(str(e)) from None  # exit 1: the run failed, the usage was right
    return value


def out_option(*param_decls: str, **attrs: Any) -> Callable:
    """``--out``: an output folder that must exist and be writable, or be creatable (its nearest existing parent
    a writable folder); otherwise the command stops at once with exit 1 and "cannot write --out PATH: REASON".
    Takes click.option's arguments; the type is a folder path."""
    attrs.setdefault("metavar", "DIRECTORY")
    return option(*(param_decls or ("--out",)), type=click.Path(), callback=_check_out, **attrs)


def lock_out(folder: str | Path, name: str = ".lock", what: str = "") -> None:
    """Hold the advisory lock ``FOLDER/NAME`` (:func:`seco_labels.io.folder_lock`) until the running command ends,
    so a second run into the folder stops at once ("FOLDER is being written by process PID", exit 1) before
    building a model or reading data. Under torchrun only rank 0 takes it: every rank writes the folder."""
    from ..runtime.distributed import is_primary_process

    click.get_current_context().with_resource(
        folder_lock(Path(folder), name, what=what, enabled=is_primary_process()))


def starts_fresh(run_dir: str | Path, resume: str | None) -> bool:
    """Whether a training command starts a new run in ``run_dir`` (no ``--resume``, or ``--resume auto`` with no
    checkpoint there): the run whose starting weights the command resolves first, before any data is read, so that a
    missing download stops it in seconds."""
    from ..runtime.checkpoint import latest_checkpoint

    return resume is None or (resume == "auto" and latest_checkpoint(Path(run_dir)) is None)


def device_option(config_key: str | None = None, configs: Callable[[], list[Any]] | None = None) -> Callable:
    """``--device``: ``auto`` by default for a command that reads a checkpoint; with ``config_key``, a
    :func:`config_key_option` (the config's value stands unless the option is given) showing the value of
    ``configs``."""
    if config_key:
        return config_key_option(config_key, "--device", configs=configs,
                                 help=f"auto | cpu | cuda | cuda:N ({config_key}).")
    return option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")


def quiet_option(help: str = "No progress bar.") -> Callable:
    """``-q/--quiet``; ``help`` says what else the command leaves out."""
    return option("-q", "--quiet", is_flag=True, help=help)


#: where :func:`config_key_option` collects the given values, in the click context's ``meta``
_CONFIG_VALUES = "seco_labels.config_values"


def _config_default(configs: Callable[[], list[Any]], key: str) -> Any:
    """The value of ``key`` in every config ``configs`` returns, or :data:`PRESET_DEPENDENT` where they differ."""
    values = [get_key(cfg, key) for cfg in configs()]
    return values[0] if all(v == values[0] for v in values) else PRESET_DEPENDENT


def config_key_option(key: str, *param_decls: str, callback: Callable | None = None,
                      configs: Callable[[], list[Any]] | None = None, **attrs: Any) -> Callable:
    """An option that sets the config key ``key`` (``--iters`` -> ``train.iters``). The command does not receive it
    as an argument: :func:`config_values` returns the given ones, keyed by config key, for the config layering
    (``resolve_config``, ``segmenter_config``). ``callback`` (if any) converts the value first; the default is None
    (not given: the config's value stands). With ``configs`` (:func:`preset_configs`, :func:`segmenter_configs`),
    ``--help`` shows their value of ``key`` as the default."""
    def record(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if callback is not None:
            value = callback(ctx, param, value)
        if value is not None:
            ctx.meta.setdefault(_CONFIG_VALUES, {})[key] = value
        return value

    attrs.setdefault("default", None)
    if configs is not None:
        attrs["shown_default"] = lambda: _config_default(configs, key)
    return option(*param_decls, callback=record, expose_value=False, config_key=key, **attrs)


def config_values() -> dict[str, Any]:
    """The config keys the running command's :func:`config_key_option` options were given, e.g.
    ``{"train.iters": 100}``. Class names given without a class count set it too (``data.num_classes``)."""
    values = dict(click.get_current_context().meta.get(_CONFIG_VALUES, {}))
    if values.get("data.class_names") and values.get("data.num_classes") is None:
        values["data.num_classes"] = len(values["data.class_names"])
    return values


def preset_option(default: str | None = None) -> Callable:
    """``--preset``: the starting values of a SeCo command; ``default`` None: the ``--config`` file's ``preset``
    key, else :data:`DEFAULT_PRESET`."""
    if default is not None:
        return option("--preset", type=click.Choice(list_presets()), default=default, show_default=True,
                      help="Starting values.")
    return option("--preset", type=click.Choice(list_presets()), default=None,
                  help=f"Starting values (default: the --config file's 'preset' key, else {DEFAULT_PRESET}).")


def config_options(configs: Callable[[], list[Any]] = preset_configs, *, quiet: str = "No progress bar.") -> Callable:
    """The options of a command that resolves a run config: ``--config`` (a nested YAML/JSON file) and ``--set``
    items passed to the command, ``--seed`` and ``--device`` as config keys showing the defaults of ``configs``,
    and ``-q/--quiet`` (``quiet``: its help). ``--preset`` is :func:`preset_option`, for SeCo commands only."""
    options = [
        option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
               help="YAML/JSON config file, nested like a run's config.yaml: it overrides the starting values; --set "
                    "and the other options override it."),
        option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
               help="Override any config value, e.g. --set train.val_every=500 (repeatable)."),
        config_key_option("train.seed", "--seed", type=int, configs=configs, help="Random seed (train.seed)."),
        device_option("train.device", configs),
        quiet_option(quiet),
    ]

    def decorate(func: Callable) -> Callable:
        for opt in reversed(options):
            func = opt(func)
        return func

    return decorate


def iters_option(configs: Callable[[], list[Any]]) -> Callable:
    """``--iters``: the run's length (``train.iters``); a SeCo preset's schedule stretches with it
    (:func:`resolve_config`)."""
    return config_key_option("train.iters", "--iters", type=int, configs=configs,
                             help="Training iterations (train.iters).")


def val_split_option(configs: Callable[[], list[Any]]) -> Callable:
    """``--val-split``: the split a training run validates on (``data.val_split``)."""
    return config_key_option("data.val_split", "--val-split", configs=configs,
                             help="Validation split, scored against its GT masks (data.val_split); '' for none.")


def log_option(configs: Callable[[], list[Any]]) -> Callable:
    """``--log``: where a training run's log goes besides its metrics.jsonl (``train.log``)."""
    return config_key_option(
        "train.log", "--log", type=click.Choice(LOG_KINDS), configs=configs,
        help=f"tensorboard: also write the run folder's {TENSORBOARD_DIR}/ (losses, lr, validation scores and "
             f"images; needs {TENSORBOARD_INSTALL}). Its metrics.jsonl is always written (train.log).")


def resume_option(func: Callable) -> Callable:
    """``--resume auto|PATH``: continue a training run from its checkpoint."""
    return option("--resume", default=None, metavar="auto|PATH",
                  help="Continue the run folder's last.pt (auto; starts at step 0 when there is none) or the "
                       "checkpoint PATH.")(func)


def allow_changes_option(func: Callable) -> Callable:
    """``--allow-changes``: resume even though the config differs from the checkpoint's in a way that alters the
    run (the changes are recorded in the run folder's config_changes.jsonl)."""
    return option(
        "--allow-changes", is_flag=True,
        help="When a run continues from its checkpoint: go on even if the config changes the run (lr, loss weights, "
             "seed, crops...); the changes are recorded in its config_changes.jsonl. Extending train.iters needs no "
             "flag.",
    )(func)


def checkpoint_option(func: Callable) -> Callable:
    """``--checkpoint``: a ``seco train`` checkpoint to read."""
    return option("--checkpoint", type=click.Path(dir_okay=False), required=True,
                  help="RUN_DIR/last.pt of seco train.")(func)


def skip_bad_option(func: Callable) -> Callable:
    """``--skip-bad``: go on past unreadable images."""
    return option("--skip-bad", is_flag=True, help="Log unreadable images and go on instead of stopping.")(func)


def data_root_option(help: str, **attrs: Any) -> Callable:
    """``--data-root`` of a command that reads a dataset recorded elsewhere (a run, an export, a model): ``help``
    says whose root is the default."""
    return option("--data-root", default=None, help=help, **attrs)


def layout_option(help: str, **attrs: Any) -> Callable:
    """``--layout``, as :func:`data_root_option`."""
    return option("--layout", default=None, help=help, **attrs)


#: where :func:`resolve_config` keeps the dotted keys the user gave, in the click context's ``meta``
_GIVEN_KEYS = "seco_labels.given_keys"


def resolve_config(preset: str | None, config_file: str | None, overrides: tuple[str, ...]) -> SecoConfig:
    """Preset, then the config file, then ``--set`` items, then the command's config-key options that were given
    (:func:`config_values`). Then what depends on them, where the user set no value (:func:`given_keys`):

    - a ``data.root`` that holds ``images/`` and a tags file is read with the folder layout (one line on stderr
      says so); a layout given by ``--layout``, ``--set data.layout`` or the file is kept, a preset's is not;
    - ``data.max_side`` is :func:`seco_labels.config.default_max_side` (2 x crop size for the folder layout);
    - ``train.iters`` other than the preset's stretches the preset's schedule in proportion
      (:func:`seco_labels.config.scale_schedule`).
    """
    data = load_config_file(config_file) if config_file else {}
    base = get_preset(preset or str(data.get("preset", DEFAULT_PRESET)))
    preset_iters = base.train.iters
    cfg = config_from_dict({k: v for k, v in data.items() if k != "preset"}, base=base)
    sets = [parse_override(item) for item in overrides]
    for key, value in sets:
        set_values(cfg, {key: value})
    values = config_values()
    set_values(cfg, values)
    given = dotted_keys({k: v for k, v in data.items() if k != "preset"}) | set(values)
    for key, value in sets:
        given |= dotted_keys({key: value})
    click.get_current_context().meta[_GIVEN_KEYS] = frozenset(given)
    if "data.layout" not in given and cfg.data.root:
        from ..data.readers import detect_layout
        from ..runtime.distributed import is_primary_process

        found = detect_layout(cfg.data.root)
        if found and found[0] != cfg.data.layout:
            cfg.data.layout = found[0]
            if is_primary_process():
                click.echo(f"{cfg.data.root} holds {found[1]}: detected the {found[0]} layout (--layout names "
                           "another)", err=True)
    if "data.max_side" not in given:
        cfg.data.max_side = default_max_side(cfg.data)
    scale_schedule(cfg, preset_iters, given)
    return cfg.validate()


def given_keys() -> frozenset[str]:
    """The dotted config keys the user set for the running command (its ``--config`` file, ``--set`` items and
    config-key options; not the preset's), as :func:`resolve_config` found them."""
    return click.get_current_context().meta.get(_GIVEN_KEYS, frozenset())


def schedule_kept_on_resume() -> tuple[str, ...]:
    """The schedule keys (:data:`seco_labels.config.SCHEDULE_KEYS`) the user did not set: a resumed run keeps the
    checkpoint's values of them, so raising ``--iters`` extends the run without stretching the schedule under way."""
    given = given_keys()
    return tuple(k for k in SCHEDULE_KEYS if k not in given)


#: the options a run's ``config.yaml`` gives defaults to, where a command has them
RUN_CONFIG_OPTIONS = {"data.root": "data_root", "data.layout": "layout", "train.device": "device",
                      "data.num_workers": "num_workers"}


def _run_config_defaults(data: dict[str, Any], options: set[str]) -> dict[str, Any] | None:
    """The option defaults a run's ``config.yaml`` (sections ``data``, ``model``, ...) gives a command that has
    ``options``, or None when ``data`` is not such a file (its keys are option names)."""
    sections = set(data) - {"preset"}
    if not sections & {"data", "model", "train"} or not all(isinstance(data[k], dict) for k in sections):
        return None
    found = {}
    for key, option in RUN_CONFIG_OPTIONS.items():
        section, name = key.split(".")
        value = (data.get(section) or {}).get(name)
        if option in options and value not in (None, ""):
            found[option] = value
    return found


def _load_defaults(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager ``--config`` callback: the file's keys become the defaults of the command's other options. A run's
    ``config.yaml`` is read too: its dataset root and layout, device and worker count (:data:`RUN_CONFIG_OPTIONS`)
    become the defaults of the options the command has; the rest of it is the run's own."""
    if value is None:
        return None
    try:
        data = load_config_file(value)
    except ConfigError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    run_defaults = _run_config_defaults(data, {p.name for p in ctx.command.params})
    if run_defaults is not None:
        ctx.default_map = {**(ctx.default_map or {}), **run_defaults}
        return value
    # keys are the long option names as typed ("data-root" or "data_root"), mapped to the parameter names
    names = {o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params if p is not param
             for o in getattr(p, "opts", []) if o.startswith("--")}
    defaults: dict[str, Any] = {}
    for key, val in data.items():
        name = names.get(str(key).replace("-", "_"))
        if name is None:
            valid = ", ".join(sorted(n.replace("_", "-") for n in names))
            raise click.BadParameter(f"{value}: unknown key {key!r}; valid keys: {valid}", ctx=ctx, param=param)
        if isinstance(val, (list, tuple)):  # list-valued options are comma-separated on the command line
            val = ",".join(str(v) for v in val)
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _read_classes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    from ..data import read_class_names

    if value is None:
        return None
    try:
        return read_class_names(value)
    except ConfigError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def classes_option(func: Callable) -> Callable:
    """``--classes FILE``: the dataset's class names, one per line in class-index order (background first, or
    implied); sets ``data.class_names`` and the class count (:func:`config_values`)."""
    return config_key_option(
        "data.class_names", "--classes", "class_names", type=click.Path(dir_okay=False), callback=_read_classes,
        help="Text file of the class names, one per line in mask-value order (class 1 first; 'background' as the "
             "first line is optional). Sets data.class_names and data.num_classes; default: the layout's classes.",
    )(func)


def defaults_file_option(func: Callable) -> Callable:
    """``--config FILE``: a YAML/JSON mapping of this command's option names to default values."""
    return option("--config", "defaults_file", type=click.Path(dir_okay=False), default=None, is_eager=True,
                  expose_value=False, callback=_load_defaults,
                  help="YAML/JSON file of defaults for this command's options (keys: option names), or a run's "
                       "config.yaml (its data.root, data.layout, train.device, data.num_workers).")(func)


def decoder_scales() -> tuple[float, ...]:
    """The SeCo decoder's default scales (:data:`seco_labels.inference.decoder_masks.SEG_SCALES`), imported when an
    option or the help needs them (that module imports timm)."""
    from ..inference.decoder_masks import SEG_SCALES

    return SEG_SCALES


def parse_scales(ctx, param, value: str) -> tuple[float, ...]:
    """click callback of --scales: comma-separated positive numbers, or a name of ``export.SCALE_PRESETS``."""
    from ..inference.export import SCALE_PRESETS

    if value in SCALE_PRESETS:
        return SCALE_PRESETS[value]
    try:
        scales = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        scales = ()
    if not scales or any(s <= 0 for s in scales):
        raise click.BadParameter(f"{value!r}: give positive numbers like 1.0,0.5,1.5 or one of {', '.join(SCALE_PRESETS)}")
    return scales
