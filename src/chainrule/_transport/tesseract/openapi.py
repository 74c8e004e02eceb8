"""The OpenAPI document a chainrule server answers at `/tesseract/openapi.json`: what
Tesseract's clients read to drive a component (`Tesseract.from_url`, tesseract-jax,
tesseract-torch).

They read the `paths` keys (the endpoints offered), `components.schemas.Apply_InputSchema` and
`Apply_OutputSchema` (each field; an array is an object with `array_flags` and
`object_type.const == "array"`, nested models `$ref`s to `Apply_<Model>`), and
`ApplyInputSchema.differentiable_arrays` / `ApplyOutputSchema.differentiable_arrays` (the
differentiable leaves as patterns, `[]` a list item, `{}` a dict value). The document is
made from the component's own JSON schemas (`x-chainrule-array` nodes), so it says what
`/schema` says, in Tesseract's terms.
"""

from __future__ import annotations

from typing import Any

from chainrule._component.component import Component

__all__ = ["ROUTES", "document"]

# Tesseract route -> chainrule endpoint
ROUTES = {
    "apply": "apply",
    "abstract_eval": "eval_shape",
    "jacobian": "jacobian",
    "jacobian_vector_product": "jvp",
    "vector_jacobian_product": "vjp",
}
FORMATS = ("json+base64", "json")


def _shape(dims: list[Any]) -> list[Any] | None:
    """A chainrule shape in Tesseract's terms: named and free dims are None; any rank None."""
    if "..." in dims:
        return None
    return [d if isinstance(d, int) else None for d in dims]


def _array(info: dict[str, Any]) -> dict[str, Any]:
    shape = _shape(info["shape"])
    dims = "_".join("None" if d is None else str(d) for d in shape) if shape else "Any"
    flags = ["DIFFERENTIABLE"] if info.get("differentiable") else []
    shape_node: dict[str, Any] = {"type": "array", "items": {"type": "integer"}}
    if shape is not None:
        shape_node.update(minItems=len(shape), maxItems=len(shape))
    return {
        "title": f"EncodedArrayModel__{dims}__{info['dtype']}__{'_'.join(flags) or 'NONE'}",
        "type": "object",
        "array_flags": flags,
        "properties": {
            "object_type": {"const": "array"},
            "shape": shape_node,
            "dtype": {"type": "string", "examples": [info["dtype"]]},
            "data": {"type": "object"},
        },
    }


class _Walk:
    """One side (inputs or outputs): the Tesseract schema nodes and the differentiable
    patterns, from a chainrule JSON schema."""

    def __init__(self, root: dict[str, Any], schemas: dict[str, Any]) -> None:
        self.defs = root.get("$defs", {})
        self.schemas = schemas
        self.patterns: dict[str, Any] = {}

    def node(self, node: dict[str, Any], pattern: str) -> dict[str, Any]:
        if "x-chainrule-array" in node:
            info = node["x-chainrule-array"]
            if info.get("differentiable"):
                spec = {"dtype": info["dtype"], "shape": _shape(info["shape"])}
                self.patterns[pattern] = {k: v for k, v in spec.items() if v is not None}
            return _array(info)
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            self.schemas[f"Apply_{name}"] = self.model(self.defs[name], pattern)
            return {"$ref": f"#/components/schemas/Apply_{name}"}
        if "anyOf" in node:
            return {"anyOf": [self.node(a, pattern) for a in node["anyOf"]]}
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            return {"type": "array", "items": self.node(node["items"], f"{pattern}.[]")}
        extra = node.get("additionalProperties")
        if node.get("type") == "object" and isinstance(extra, dict):
            return {"type": "object", "additionalProperties": self.node(extra, f"{pattern}.{{}}")}
        return {k: v for k, v in node.items() if k != "$defs"}

    def model(self, node: dict[str, Any], prefix: str) -> dict[str, Any]:
        props = {
            key: self.node(value, f"{prefix}.{key}" if prefix else key)
            for key, value in node.get("properties", {}).items()
        }
        out = {"title": node.get("title", "Model"), "type": "object", "properties": props}
        if node.get("required"):
            out["required"] = list(node["required"])
        return out


def _side(schema: dict[str, Any], which: str, schemas: dict[str, Any]) -> None:
    walk = _Walk(schema, schemas)
    schemas[f"Apply_{which}Schema"] = walk.model(schema, "")
    schemas[f"Apply{which}Schema"] = {
        "title": f"Apply{which}Schema",
        "type": "object",
        "differentiable_arrays": walk.patterns,
    }


def document(component: Component) -> dict[str, Any]:
    """The Tesseract OpenAPI document of `component`."""
    schemas: dict[str, Any] = {}
    _side(component.inputs.model_json_schema(), "Input", schemas)
    _side(component.outputs.model_json_schema(), "Output", schemas)
    paths: dict[str, Any] = {f"/{route}": {"post": {"summary": route}} for route in ROUTES}
    paths["/health"] = {"get": {"summary": "health"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": component.name, "version": "chainrule"},
        "paths": paths,
        "components": {"schemas": schemas},
        "x-supported-output-formats": list(FORMATS),
        "x-supported-gpu-transports": ["none"],
        "x-supported-compressions": ["none"],
    }
