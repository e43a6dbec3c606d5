"""The typer application and what every command shares: consoles, error exits, version."""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from types import ModuleType

import typer
import typer.core
from rich.console import Console
from rich.text import Text

from engine.sim.process import EXIT_INTERRUPTED, Interrupts


class _Group(typer.core.TyperGroup):
    """Plain (click) help, whose command summaries (the docstrings' first paragraphs) wrap at
    the terminal's width where click would cut them with "..."."""

    def format_commands(self, ctx, formatter) -> None:
        rows = [
            (name, cmd.short_help or " ".join((cmd.help or "").split("\n\n")[0].split()))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        """Every command with SIGTERM acting as Ctrl-C; an interrupt that the command did not turn
        into its own message ends with the documented code 130 (click: "Aborted!" and 1)."""
        with Interrupts():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                raise fail("interrupted", EXIT_INTERRUPTED) from None


# rich_markup_mode=None: rich's help cuts long words and option values with "…" at 80 columns
app = typer.Typer(
    cls=_Group,
    add_completion=False,
    help="Monte Carlo stress tests of liquidation cascades: run policy sweeps, compare them.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
ARGV: list[str] = []


def lazy(name: str) -> ModuleType:
    """Module `name`, executed on first use of one of its attributes (importlib's LazyLoader).
    The commands' modules import what they run this way: JAX, xarray and matplotlib load for
    the commands that use them, and `--version`, `list`, `validate` and `events` answer fast."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def out() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)


def err() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int) -> typer.Exit:
    err().print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


def warning(message: str) -> None:
    err().print(Text("warning: ", style="bold yellow") + Text(message), soft_wrap=True)


def say(line: str) -> None:
    err().print(line, highlight=False, soft_wrap=True)


def version() -> str:
    """The installed distribution's version; the package's own in a checkout run without install."""
    try:
        return metadata.version("liqstress")
    except metadata.PackageNotFoundError:
        from engine import __version__

        return __version__


def print_version(value: bool) -> None:
    if value:
        out().print(f"liqstress {version()}", highlight=False)
        raise typer.Exit(0)
