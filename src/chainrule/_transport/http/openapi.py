"""The OpenAPI document and the documentation pages of a served component.

The request body of every endpoint is described by a model built from the component's input
schema and the endpoint's row (`chainrule._component.endpoints`); `/docs` (Swagger UI) and
`/redoc` load their scripts and styles from this server (assets shipped by the
`fastapi-offline` package), so they work offline and on air-gapped clusters, where FastAPI's
default pages, loaded from a CDN, stay blank.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, create_model

from chainrule._component.component import Component
from chainrule._component.endpoints import ENDPOINTS
from chainrule._transport import wire as _wire

__all__ = ["app_with_docs", "install_openapi", "openapi_body"]


def app_with_docs(title: str, description: str) -> FastAPI:
    """A FastAPI app whose `/docs` and `/redoc` pages need nothing but this server."""
    # validatorUrl None: Swagger UI would otherwise ask an outside service to check the document.
    app: FastAPI = FastAPIOffline(
        title=title, description=description, swagger_ui_parameters={"validatorUrl": None}
    )
    return app


def _request_model(component: Component, name: str) -> type[BaseModel]:
    """A model of the request body of endpoint `name` (for the OpenAPI document), from its
    row: `inputs` and each keyword with its annotation, required or with its default."""
    fields: dict[str, Any] = {
        k.name: (k.annotation, ... if k.required else k.default) for k in ENDPOINTS[name].keywords
    }
    model: type[BaseModel] = create_model(
        f"{name.title().replace('_', '')}Request", inputs=(component.inputs, ...), **fields
    )
    return model


def openapi_body(component: Component, name: str, defs: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of endpoint `name`; shared definitions are added to `defs`."""
    model = _request_model(component, name)
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))  # hoisted into components/schemas by install_openapi
    return {
        "requestBody": {
            "required": True,
            "content": {
                _wire.JSON: {"schema": schema},
                _wire.BINARY: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def install_openapi(app: FastAPI, defs: dict[str, Any]) -> None:
    """Make the request models' shared definitions part of the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()
            document.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
