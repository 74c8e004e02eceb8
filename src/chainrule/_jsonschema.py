"""Schema classes rebuilt from the JSON schema a server publishes at `GET /schema`.

A remote component validates inputs on the client (shapes, dtypes, named dimensions, the
differentiable marks) before anything crosses the network, so it needs schema classes. The
server's JSON schema carries every array field's spec under `x-chainrule-array`; plain JSON
types map to Python types, nested objects to nested models. What this cannot express exactly
(enums, constraints, formats) becomes `Any` and is left to the server to validate.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pydantic import Field, create_model

from ._schema import Array, Differentiable, Schema

__all__ = ["schema_from_json"]

_SIMPLE: dict[str, Any] = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _array_annotation(info: dict[str, Any]) -> Any:
    shape = tuple(... if d == "..." else d for d in info["shape"])
    spec = (shape, np.dtype(info["dtype"]), info.get("casting", "safe"))
    ann = Array.__class_getitem__(spec)  # Array[...] with a runtime-built item
    return Differentiable.__class_getitem__(ann) if info.get("differentiable") else ann


class _Builder:
    def __init__(self, root: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = root.get("$defs", {})
        self.models: dict[str, type[Schema]] = {}

    def annotation(self, node: dict[str, Any]) -> Any:
        if "x-chainrule-array" in node:
            return _array_annotation(node["x-chainrule-array"])
        if "$ref" in node:
            return self.model(node["$ref"].split("/")[-1])
        if "anyOf" in node:
            arms = [self.annotation(a) for a in node["anyOf"]]
            non_null = [a for a in arms if a is not type(None)]
            if len(non_null) == 1 and len(arms) == 2:
                return Optional[non_null[0]]  # noqa: UP045 (a runtime-built annotation)
            return Any
        kind = node.get("type")
        if kind == "array":
            if "prefixItems" in node:
                return tuple[tuple(self.annotation(x) for x in node["prefixItems"])]  # type: ignore[misc]
            return list[self.annotation(node.get("items", {}))]  # type: ignore[misc]
        if kind == "object" and "properties" in node:
            return self.object_model(node.get("title", "Object"), node)
        if kind == "object":
            extra = node.get("additionalProperties")
            value = self.annotation(extra) if isinstance(extra, dict) else Any
            return dict[str, value]  # type: ignore[valid-type]
        if isinstance(kind, str) and kind in _SIMPLE and "enum" not in node:
            return _SIMPLE[kind]
        return Any

    def model(self, name: str) -> type[Schema]:
        if name not in self.models:
            self.models[name] = self.object_model(name, self.defs[name])
        return self.models[name]

    def object_model(self, name: str, node: dict[str, Any]) -> type[Schema]:
        required = set(node.get("required", []))
        fields: dict[str, Any] = {}
        for key, prop in node.get("properties", {}).items():
            if key in required:
                fields[key] = (self.annotation(prop), ...)
            else:  # JSON has no tuples (nor arrays): validate the default into the field's type
                default = Field(prop.get("default"), validate_default=True)
                fields[key] = (self.annotation(prop), default)
        model: type[Schema] = create_model(name, __base__=Schema, **fields)
        return model


def schema_from_json(schema: dict[str, Any]) -> type[Schema]:
    """A `Schema` subclass equivalent to a model's `model_json_schema()` output."""
    return _Builder(schema).object_model(schema.get("title", "Schema"), schema)
