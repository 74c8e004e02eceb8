"""`from_tesseract_api(path)`: a `tesseract_api.py` as a chainrule component, in this process.

The module is loaded by tesseract-core's own in-process client
(`Tesseract.from_tesseract_api`), so it behaves exactly as its runtime would run it (its
schemas, validators and endpoints), and it goes through the same `TesseractTransport` as a
served Tesseract, without the HTTP: its OpenAPI mirrored as the component's schema, paths and
missing endpoints translated and derived the same way. tesseract-core must be importable here
(`pip install tesseract-core[runtime]`); else `launch` the folder in its own environment.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pydantic

from chainrule._component.component import Component
from chainrule._schema.errors import ComponentError, LaunchError, ValidationError
from chainrule._transport.remote import remote_component

from .client import TesseractTransport
from .mirror import mirror
from .paths import loc_path

__all__ = ["from_tesseract_api"]


class _Local:
    """A `Poster` over tesseract-core's endpoint functions for the module, in this process.

    tesseract-core's in-process client (`Tesseract.from_tesseract_api`) wraps every call in a
    run (a log folder, stdio redirected into it, a profiler), ~0.8 ms per call, 20x a small
    call itself (measured). A module that logs metrics (`tesseract_core.runtime.mpa`) needs
    that run and goes through the client; any other is called as the runtime calls it
    (its payload model validated, its endpoint run, its output model validated and dumped)."""

    def __init__(self, tesseract: Any, module: Any, api: Path) -> None:
        self.tesseract, self.url = tesseract, f"tesseract_api {api}"
        core = importlib.import_module("tesseract_core.runtime.core")
        self.direct = (
            {} if _logs_runs(api) else {f.__name__: f for f in core.create_endpoints(module)}
        )

    def post(self, route: str, body: Any) -> Any:
        try:
            func = self.direct.get(route)
            if func is None:
                return getattr(self.tesseract, route)(**body)
            return _run(func, body)
        except pydantic.ValidationError as e:
            raise _invalid(e, f"{self.url} /{route}") from e
        except Exception as e:  # the Tesseract's own code raised
            raise ComponentError(f"{self.url} /{route} raised {type(e).__name__}: {e}") from e

    def close(self) -> None:
        pass


def _run(func: Any, body: Any) -> Any:
    """One endpoint function on `body`, as tesseract-runtime runs it (minus its run folder)."""
    payload = func.__annotations__.get("payload")
    result = func(payload.model_validate(body)) if payload is not None else func()
    returns = func.__annotations__.get("return")
    if isinstance(returns, type) and issubclass(returns, pydantic.BaseModel):
        return returns.model_validate(result).model_dump()
    return result if returns is None else pydantic.TypeAdapter(returns).validate_python(result)


def _logs_runs(api: Path) -> bool:
    """Whether the module logs to its run (metrics, parameters, artifacts)."""
    return "mpa" in api.read_text(encoding="utf-8")


def _invalid(e: pydantic.ValidationError, where: str) -> ValidationError:
    errors = [{"path": loc_path(["body", *x["loc"]]), "message": x["msg"]} for x in e.errors()[:20]]
    text = "; ".join(f"{x['path']}: {x['message']}" for x in errors[:5])
    return ValidationError(f"{where} refused the request: {text}", errors=errors)


def from_tesseract_api(path: str | Path) -> Component:
    """The Tesseract defined by `path` (a `tesseract_api.py`, or its folder) as a component
    running in this process.

    Example:
        ```python
        comp = chainrule.from_tesseract_api("vectoradd_jax/tesseract_api.py")
        comp.vjp(inputs, {"vector_add.result": c})
        ```
    """
    api = Path(path)
    api = api / "tesseract_api.py" if api.is_dir() else api
    if not api.is_file():
        raise LaunchError(f"from_tesseract_api: {api} is not a file; give a tesseract_api.py")
    try:
        sdk = importlib.import_module("tesseract_core")
    except ImportError as e:
        raise LaunchError(
            f"from_tesseract_api({str(path)!r}) needs tesseract-core in this environment "
            "(pip install 'tesseract-core[runtime]'); or run the folder in its own "
            "environment with chainrule.launch(folder)"
        ) from e
    module = importlib.import_module("tesseract_core.runtime.core").load_module_from_path(api)
    tesseract = sdk.Tesseract.from_tesseract_api(module)
    local = _Local(tesseract, module, api)
    m = mirror(tesseract.openapi_schema, local.url)
    name = api.parent.name or "tesseract"
    return remote_component(TesseractTransport(local, m, name))
