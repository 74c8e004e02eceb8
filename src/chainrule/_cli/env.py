"""`chainrule env ...`: the cached environments of component folders (build, rebuild, list,
prune) and the servers `launch` started (ps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from chainrule._schema.errors import ChainruleError

from .common import err, fail

__all__ = ["env_app"]

env_app = typer.Typer(help="Component environments (built with uv, cached).", no_args_is_help=True)

_CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="CHAINRULE_CACHE",
        help="the environment cache (default ~/.cache/chainrule/envs)",
    ),
]
_Folder = Annotated[Path, typer.Argument(help="a component folder with chainrule.toml")]


@env_app.command("build")
def env_build(folder: _Folder, quiet: bool = False, cache_dir: _CacheDir = None) -> None:
    """Build (or find cached) the component's environment; print its python."""
    from chainrule._transport.launch.env import build_env

    try:
        python = build_env(folder, cache_dir=cache_dir, quiet=quiet)
    except ChainruleError as e:
        fail(e)
    print(python)


@env_app.command("rebuild")
def env_rebuild(folder: _Folder, quiet: bool = False, cache_dir: _CacheDir = None) -> None:
    """Delete the component's environment and build it again; print its python."""
    from chainrule._transport.launch.env_cache import rebuild

    try:
        python = rebuild(folder, cache_dir, quiet=quiet)
    except ChainruleError as e:
        fail(e)
    print(python)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"


@env_app.command("list")
def env_list(
    cache_dir: _CacheDir = None,
    check: Annotated[bool, typer.Option(help="run each env's python (~0.3 s each)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON list")] = False,
) -> None:
    """List the cached environments, least recently used first."""
    import time

    from rich.table import Table

    from chainrule._transport.launch.env_cache import list_envs

    envs = list_envs(cache_dir, check="import" if check else "files")
    if as_json:
        rows = [
            {"path": str(e.path), **e.record, "last_used": e.last_used, "size": e.size,
             "problem": e.problem, "servers": list(e.users)}
            for e in envs
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return
    table = Table("environment", "built for", "requirements", "size", "last used", "state")
    for e in envs:
        state = e.problem or ("in use by " + ", ".join(map(str, e.users)) if e.users else "ok")
        table.add_row(
            e.path.name, str(e.record.get("name", "?")),
            escape(" ".join(e.record.get("requirements", [])) or "-"),
            f"{e.size / 2**20:.0f} MiB", _ago(time.time() - e.last_used), escape(state),
        )  # fmt: skip
    Console().print(table if envs else "no cached environments")


@env_app.command("prune")
def env_prune(
    cache_dir: _CacheDir = None,
    all_: Annotated[bool, typer.Option("--all", help="remove every environment")] = False,
    older_than: Annotated[
        str | None, typer.Option(help="also remove those unused for this long: 30d, 12h, 2w")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="only say what would be removed")] = False,
) -> None:
    """Remove broken environments and leftovers of crashed builds (and more, if asked);
    environments of running launched servers are kept."""
    from chainrule._transport.launch.env_cache import parse_age, prune

    try:
        age = None if older_than is None else parse_age(older_than)
        removed, in_use = prune(cache_dir, everything=all_, older_than=age, dry_run=dry_run)
    except ChainruleError as e:
        fail(e)
    verb = "would remove" if dry_run else "removed"
    for env in removed:
        why = f" ({env.problem})" if env.problem else ""
        err.print(f"{verb} {escape(str(env.path))}{escape(why)}", soft_wrap=True)
    for env in in_use:
        users = ", ".join(map(str, env.users))
        err.print(f"kept {escape(str(env.path))} (used by servers {users})", soft_wrap=True)
    freed = sum(env.size for env in removed) / 2**20
    err.print(f"{verb} {len(removed)} environments ({freed:.0f} MiB)")


@env_app.command("ps")
def env_ps(
    cache_dir: _CacheDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON list")] = False,
) -> None:
    """List the running servers started by `launch` with this cache directory."""
    import datetime

    from rich.table import Table

    from chainrule._transport.launch.env import cache_root
    from chainrule._transport.launch.servers import running

    servers = running(cache_root(cache_dir))
    if as_json:
        print(json.dumps([s.model_dump() for s in servers], indent=2))
        return
    table = Table("pid", "component", "url", "folder", "started", "launched by")
    for s in servers:
        started = datetime.datetime.fromtimestamp(s.started).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(s.pid), s.name, s.url, escape(s.folder), started, str(s.launcher))
    Console().print(table if servers else "no running launched servers")
