"""The ``seco`` command: a click group; each command lives in its own module (docs/design.md §6).

Exit codes: 2 for bad usage (unknown option value, inconsistent config), 1 for runtime failures
(missing or corrupt data, unusable checkpoint). Errors print one message naming the file, id or option.
"""

from __future__ import annotations

import click

from .. import __version__
from ..errors import ConfigError, SecoError


class SecoCommand(click.Command):
    """Turns the toolkit's own exceptions into click errors, so users get a message, not a traceback; a config
    error shows the usage line of the command that was run (its own context), not the group's."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise click.UsageError(str(e), ctx=ctx) from None
        except SecoError as e:
            raise click.ClickException(str(e)) from None


class SecoGroup(click.Group):
    """The ``seco`` group: every command it declares is a :class:`SecoCommand`."""

    command_class = SecoCommand


@click.group(cls=SecoGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="seco")
def cli() -> None:
    """SeCo pseudo labels: train on image tags, export dense masks, evaluate, fit segmenters."""


def main() -> None:
    cli(prog_name="seco")


from . import demo as _demo  # noqa: E402  (commands register themselves on import)
from . import train as _train  # noqa: E402,F401
from . import evaluate as _evaluate  # noqa: E402,F401
from . import export as _export  # noqa: E402,F401
from . import compare as _compare, fit_segmenter as _fit_segmenter  # noqa: E402,F401
from . import segment as _segment, show as _show  # noqa: E402,F401
from . import predict as _predict, report as _report  # noqa: E402,F401

__all__ = ["cli", "main"]
