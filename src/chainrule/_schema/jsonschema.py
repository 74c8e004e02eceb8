"""Schema classes rebuilt from the JSON schema a server publishes at `GET /schema`.

A remote component validates inputs on the client (shapes, dtypes, named dimensions, the
differentiable marks) before anything crosses the network, so it needs schema classes. The
server's JSON schema carries every array field's spec under `x-chainrule-array`; plain JSON
types map to Python types, nested objects to nested models. What this cannot express exactly
(enums, constraints, formats) becomes `Any` and is left to the server to validate.

The document comes from the network, so nothing in it is trusted: a node that is not what a
JSON schema allows, nesting deeper than `MAX_DEPTH`, a `$ref` to nothing or to itself, all
raise `SchemaDefinitionError` naming the JSON path of the node.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pydantic import Field, create_model

from .errors import SchemaDefinitionError
from .schema import Array, Differentiable, Schema

__all__ = ["MAX_DEPTH", "schema_from_json"]

MAX_DEPTH = 64  # nesting of a schema document (models, lists, dicts, unions) accepted
_SIMPLE: dict[str, Any] = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


class _Invalid(Exception):
    """A node of the document is not valid; `where` is its JSON path."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where, self.why = where, why


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else text


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise _Invalid(where, f"expected {what}, got {_describe(value)}")
    return value


def _array_annotation(info: Any, where: str) -> Any:
    info = _expect(info, dict, where, "an object with shape and dtype")
    shape = _expect(info.get("shape"), list, f"{where}.shape", "a list of dimensions")
    dtype = _expect(info.get("dtype"), str, f"{where}.dtype", "a dtype name like 'float64'")
    dims = tuple(... if d == "..." else d for d in shape)
    spec = (dims, np.dtype(dtype), info.get("casting", "safe"))
    ann = Array.__class_getitem__(spec)  # Array[...] with a runtime-built item
    return Differentiable.__class_getitem__(ann) if info.get("differentiable") else ann


class _Builder:
    def __init__(self, root: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = _expect(root.get("$defs", {}), dict, "$defs", "an object")
        self.models: dict[str, type[Schema]] = {}
        self.building: set[str] = set()

    def annotation(self, node: Any, where: str, depth: int) -> Any:
        """The annotation of `node`; `_Invalid` naming the innermost bad node otherwise."""
        if depth > MAX_DEPTH:
            raise _Invalid(where, f"nested deeper than {MAX_DEPTH} levels")
        node = _expect(node, dict, where, "a JSON schema object")
        try:
            return self._annotation(node, where, depth + 1)
        except (_Invalid, RecursionError):
            raise
        except Exception as e:  # anything the document makes Python or pydantic refuse
            raise _Invalid(where, f"{type(e).__name__}: {e}") from e

    def _annotation(self, node: dict[str, Any], where: str, depth: int) -> Any:
        if "x-chainrule-array" in node:
            return _array_annotation(node["x-chainrule-array"], f"{where}.x-chainrule-array")
        if "$ref" in node:
            ref = _expect(node["$ref"], str, f"{where}.$ref", "a reference like '#/$defs/Name'")
            return self.model(ref.split("/")[-1], f"{where}.$ref", depth)
        if "anyOf" in node:
            arms = _expect(node["anyOf"], list, f"{where}.anyOf", "a list of schemas")
            annotations = [
                self.annotation(a, f"{where}.anyOf.{i}", depth) for i, a in enumerate(arms)
            ]
            non_null = [a for a in annotations if a is not type(None)]
            if len(non_null) == 1 and len(annotations) == 2:
                return Optional[non_null[0]]  # noqa: UP045 (a runtime-built annotation)
            return Any
        return self._typed(node, node.get("type"), where, depth)

    def _typed(self, node: dict[str, Any], kind: Any, where: str, depth: int) -> Any:
        if kind == "array":
            if "prefixItems" in node:
                items = _expect(node["prefixItems"], list, f"{where}.prefixItems", "a list")
                arms = (
                    self.annotation(x, f"{where}.prefixItems.{i}", depth)
                    for i, x in enumerate(items)
                )
                return tuple[tuple(arms)]  # type: ignore[misc]
            return list[self.annotation(node.get("items", {}), f"{where}.items", depth)]  # type: ignore[misc]
        if kind == "object" and "properties" in node:
            title = _expect(node.get("title", "Object"), str, f"{where}.title", "a string")
            return self.object_model(title, node, where, depth)
        if kind == "object":
            extra = node.get("additionalProperties")
            value = (
                self.annotation(extra, f"{where}.additionalProperties", depth)
                if isinstance(extra, dict)
                else Any
            )
            return dict[str, value]  # type: ignore[valid-type]
        if isinstance(kind, str) and kind in _SIMPLE and "enum" not in node:
            return _SIMPLE[kind]
        return Any

    def model(self, name: str, where: str, depth: int) -> type[Schema]:
        if name not in self.models:
            if name in self.building:
                raise _Invalid(
                    where, f"'{name}' refers to itself (recursive schemas are not supported)"
                )
            if name not in self.defs:
                raise _Invalid(where, f"'{name}' is not defined in $defs")
            self.building.add(name)
            node = _expect(self.defs[name], dict, f"$defs.{name}", "a JSON schema object")
            self.models[name] = self.object_model(name, node, f"$defs.{name}", depth)
        return self.models[name]

    def object_model(self, name: str, node: dict[str, Any], where: str, depth: int) -> type[Schema]:
        required = _expect(node.get("required", []), list, f"{where}.required", "a list of names")
        props = _expect(node.get("properties", {}), dict, f"{where}.properties", "an object")
        fields: dict[str, Any] = {}
        for key, prop in props.items():
            ann = self.annotation(prop, f"{where}.properties.{key}", depth)
            if key in required:
                fields[key] = (ann, ...)
            else:  # JSON has no tuples (nor arrays): validate the default into the field's type
                fields[key] = (ann, Field(prop.get("default"), validate_default=True))
        try:
            model: type[Schema] = create_model(name, __base__=Schema, **fields)
        except Exception as e:  # a field name pydantic refuses, ...
            raise _Invalid(where, f"{type(e).__name__}: {e}") from e
        return model


def schema_from_json(schema: Any, where: str = "schema") -> type[Schema]:
    """A `Schema` subclass equivalent to a model's `model_json_schema()` output.

    Arguments:
        schema: the JSON schema document (untrusted: it may come from a server).
        where: how to name the document in error messages.

    Returns:
        The schema class; `SchemaDefinitionError` naming the bad node's JSON path otherwise.
    """
    try:
        root = _expect(schema, dict, where, "a JSON schema object")
        title = _expect(root.get("title", "Schema"), str, f"{where}.title", "a string")
        return _Builder(root).object_model(title, root, where, 0)
    except _Invalid as e:
        path = e.where if e.where.startswith(where) else f"{where}.{e.where}"
        raise SchemaDefinitionError(
            f"{path}: {e.why}", errors=[{"path": path, "message": e.why}]
        ) from e
    except RecursionError as e:  # a pathological document that stays within MAX_DEPTH
        raise SchemaDefinitionError(f"{where}: nested too deeply to rebuild") from e
