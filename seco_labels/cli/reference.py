"""The CLI reference page (docs/cli.md), generated from the click commands so that it never drifts.

    python -m seco_labels.cli.reference > docs/cli.md

``tests/test_docs.py`` regenerates it and compares it with the committed page, and compares each block with what
``seco COMMAND --help`` prints.
"""

from __future__ import annotations

import click

from . import cli

__all__ = ["WIDTH", "command_help", "render_reference"]

#: terminal width the help texts are wrapped at (the group's max_content_width)
WIDTH = 100


def command_help(name: str | None = None) -> str:
    """What ``seco [NAME] --help`` prints at :data:`WIDTH` columns (``None``: the group's own help)."""
    # the group's context_settings (e.g. -h as a help alias) as `seco` itself applies them: click caches each
    # command's help option on first use, so a context without them would change later --help output
    with click.Context(cli, info_name="seco", terminal_width=WIDTH, **cli.context_settings) as parent:
        if name is None:
            return cli.get_help(parent)
        cmd = cli.commands[name]
        with click.Context(cmd, info_name=name, parent=parent, terminal_width=WIDTH, **cmd.context_settings) as ctx:
            return cmd.get_help(ctx)


def render_reference() -> str:
    """docs/cli.md: the group's help, then every command's, in the order ``seco --help`` lists them."""
    parts = [
        "# CLI reference",
        "",
        "Generated from the click commands by `python -m seco_labels.cli.reference > docs/cli.md`; "
        "`tests/test_docs.py` fails when this page and `seco --help` disagree.",
        "",
        "```text",
        "$ seco --help",
        command_help(),
        "```",
    ]
    with click.Context(cli, info_name="seco", **cli.context_settings) as ctx:
        names = cli.list_commands(ctx)
    for name in names:
        parts += ["", f"## `seco {name}`", "", "```text", f"$ seco {name} --help", command_help(name), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    click.echo(render_reference(), nl=False)
