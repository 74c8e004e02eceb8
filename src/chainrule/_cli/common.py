"""What every command shares: the error console, and how a command fails."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["err", "fail"]

err = Console(stderr=True)


def fail(error: Exception) -> None:
    """Print `error` (its class and message) on stderr and exit with status 1."""
    err.print(f"[red]{type(error).__name__}[/red]: {escape(str(error))}")
    raise typer.Exit(1)
