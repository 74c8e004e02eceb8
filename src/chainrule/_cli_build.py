"""`chainrule build`: a component folder as a container image (see `_image`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ._errors import ChainruleError

__all__ = ["build"]

_err = Console(stderr=True)


def build(
    folder: Annotated[Path, typer.Argument(help="a component folder with chainrule.toml")],
    tag: Annotated[
        str | None, typer.Option(help="image name (default localhost/chainrule-NAME:VERSION)")
    ] = None,
    archive: Annotated[
        Path | None,
        typer.Option(
            help="also write an OCI archive (podman load -i; apptainer build x.sif "
            "oci-archive://x.tar)"
        ),
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="podman or docker (default: podman if installed)")
    ] = None,
    no_cache: Annotated[bool, typer.Option(help="rebuild every layer")] = False,
    quiet: Annotated[bool, typer.Option(help="no build output")] = False,
) -> None:
    """Build the component's OCI image (podman or docker); print its name.

    Layers: base (`base` in chainrule.toml), OS packages (`os_packages`), requirements,
    chainrule (a wheel of this installation), the component's code: a code edit rebuilds in
    seconds.
    """
    from ._image import build_image

    try:
        built = build_image(
            folder, runtime=runtime, tag=tag, archive=archive, no_cache=no_cache, quiet=quiet
        )
    except ChainruleError as e:
        _err.print(f"[red]{type(e).__name__}[/red]: {escape(str(e))}")
        raise typer.Exit(1) from None
    print(built.tag)
