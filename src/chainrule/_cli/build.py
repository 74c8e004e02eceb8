"""`chainrule build`: a component folder as a container image (`_transport/launch/image`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chainrule._schema.errors import ChainruleError

from .common import fail

__all__ = ["build"]


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
    from chainrule._transport.launch.image import build_image

    try:
        built = build_image(
            folder, runtime=runtime, tag=tag, archive=archive, no_cache=no_cache, quiet=quiet
        )
    except ChainruleError as e:
        fail(e)
    print(built.tag)
