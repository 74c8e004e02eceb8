"""A Tesseract server's `GET /openapi.json`, mirrored as a chainrule description.

`mirror(openapi)` answers what chainrule's own servers answer at `GET /schema` (the inputs and
outputs as JSON schemas whose array nodes carry `x-chainrule-array`, models under `$defs`), so
`remote_component` builds the schema classes unchanged, plus the Tesseract side of the
translation: the differentiable path patterns with their dtypes, and the endpoints offered.

Where each part comes from (tesseract-runtime 1.15.0):
- `components.schemas.ApplyInputSchema.differentiable_arrays` (and `ApplyOutputSchema`): the
  differentiable leaves, `{pattern: {"shape": [..., null for a free dim], "dtype": name}}`;
  it is the authority on them. The OpenAPI drops None values, so an any-rank leaf has no
  `shape` key and an any-dtype leaf no `dtype` key.
- `components.schemas.Apply_InputSchema` / `Apply_OutputSchema`: the tree. Nested models are
  `$ref`s to `Apply_<Model>`; array leaves are objects with `array_flags` (or
  `object_type.const == "array"`), titled `EncodedArrayModel__<shape>__<dtype>__<flags>`.
- Everything else (strings, enums, literals) is left for the server to validate: its 422 names
  the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from chainrule._schema.errors import TransportError

__all__ = ["ENDPOINTS", "Mirror", "is_tesseract", "mirror"]

# chainrule endpoint -> Tesseract route
ENDPOINTS = {
    "apply": "apply",
    "eval_shape": "abstract_eval",
    "jacobian": "jacobian",
    "jvp": "jacobian_vector_product",
    "vjp": "vector_jacobian_product",
}
# The peer casts within a kind (checked for range on its side); same_kind is chainrule's rule.
_CASTING = "same_kind"
_TITLE = re.compile(r"^EncodedArrayModel__(?P<shape>.+?)__(?P<dtype>\w+?)__(?P<flags>\w+)$")


@dataclass(frozen=True)
class Leaf:
    """A differentiable pattern's shape (None a free dim, ... any rank) and dtype (None any)."""

    shape: tuple[Any, ...]
    dtype: str | None


@dataclass
class Mirror:
    """The chainrule description of a Tesseract server, and its Tesseract side."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    in_patterns: dict[str, Leaf]
    out_patterns: dict[str, Leaf]
    routes: tuple[str, ...]  # the Tesseract routes offered (`paths` keys)
    formats: tuple[str, ...] | None  # None: a runtime before 1.13 (no x-* keys)
    notes: list[str] = field(default_factory=list)

    def description(self, name: str) -> dict[str, Any]:
        """What `GET /schema` would answer: the schema, endpoints and capabilities."""
        offered = {e: f"tesseract: /{r}" for e, r in ENDPOINTS.items() if r in self.routes}
        offered["apply"] = "tesseract: /apply"
        if "jacobian" in self.routes:  # k tangents at once: one Jacobian, contracted here
            offered["batched_jvp"] = "tesseract: one /jacobian"
        if "abstract_eval" not in self.routes:
            offered["eval_shape"] = "tesseract: runs /apply once per signature"
        return {
            "name": name,
            "backend": "tesseract",
            "inputs": self.inputs,
            "outputs": self.outputs,
            "endpoints": offered,
            # abstract_eval answers from shapes only; without it, shapes come from apply
            "capabilities": {"static_shapes": True, "cheap_eval_shape": True},
        }


def is_tesseract(openapi: Any) -> bool:
    """Whether an OpenAPI document is a tesseract-runtime server's."""
    try:
        schemas = openapi["components"]["schemas"]
        return "differentiable_arrays" in schemas["ApplyInputSchema"]
    except (KeyError, TypeError):
        return False


def is_array_node(node: dict[str, Any]) -> bool:
    """tesseract-jax's own test: `array_flags`, or `object_type` const "array"."""
    props = node.get("properties")
    kind = props.get("object_type", {}) if isinstance(props, dict) else {}
    return "array_flags" in node or kind.get("const") == "array"


def _dim(item: dict[str, Any]) -> Any:
    """One `prefixItems` entry: `{minimum: 0}` free; `{enum: [1, N]}` fixed N (1 broadcasts)."""
    if "enum" in item:
        return max(item["enum"])
    return item.get("const")


def _shape(node: dict[str, Any]) -> tuple[Any, ...]:
    shape = node["properties"]["shape"]
    if "prefixItems" in shape:
        return tuple(_dim(i) for i in shape["prefixItems"])
    return () if shape.get("maxItems") == 0 else (...,)


def _dtype(node: dict[str, Any]) -> str | None:
    """The declared dtype (the title says it; the enum lists castable sources); None: any."""
    m = _TITLE.match(node.get("title", ""))
    if m:
        return None if m["dtype"] == "None" else m["dtype"]
    spec = node["properties"]["dtype"]
    if "const" in spec:
        return str(spec["const"])
    example = (spec.get("examples") or [None])[0]
    return None if "complex64" in spec.get("enum", ()) and example == "float64" else example


def _join(prefix: str, seg: str) -> str:
    return f"{prefix}.{seg}" if prefix else seg


class _Builder:
    def __init__(self, schemas: dict[str, Any], patterns: dict[str, Leaf], notes: list[str]):
        self.schemas, self.patterns, self.notes = schemas, patterns, notes
        self.defs: dict[str, Any] = {}
        self.seen: set[str] = set()

    def node(self, node: dict[str, Any], pattern: str) -> dict[str, Any]:
        if "$ref" in node:
            return self.ref(node["$ref"], pattern)
        if is_array_node(node):
            return self.array(node, pattern)
        if "anyOf" in node:
            return {"anyOf": [self.node(a, pattern) for a in node["anyOf"]]}
        kind = node.get("type")
        if kind == "array" and isinstance(node.get("items"), dict):
            return {"type": "array", "items": self.node(node["items"], _join(pattern, "[]"))}
        if kind == "object" and isinstance(node.get("additionalProperties"), dict):
            value = self.node(node["additionalProperties"], _join(pattern, "{}"))
            return {"type": "object", "additionalProperties": value}
        keep = ("type", "title", "default") if "enum" not in node and "const" not in node else ()
        return {k: node[k] for k in keep if k in node}  # enums, literals: the server checks

    def ref(self, ref: str, pattern: str) -> dict[str, Any]:
        name = ref.split("/")[-1]
        short = name.removeprefix("Apply_")
        # the same model under another pattern: walk it again, for the patterns it holds
        built = self.model(self.schemas[name], pattern, short)
        self.defs.setdefault(short, built)
        return {"$ref": f"#/$defs/{short}"}

    def model(self, node: dict[str, Any], pattern: str, title: str) -> dict[str, Any]:
        raw = node.get("properties", {})
        props = {k: self.node(v, _join(pattern, k)) for k, v in raw.items()}
        for key, value in raw.items():
            if "default" in value:
                props[key]["default"] = value["default"]
        out: dict[str, Any] = {"title": title, "type": "object", "properties": props}
        if node.get("required"):
            out["required"] = list(node["required"])
        return out

    def array(self, node: dict[str, Any], pattern: str) -> dict[str, Any]:
        info = self.patterns.get(pattern)
        if info is not None:
            self.seen.add(pattern)
        shape = info.shape if info else _shape(node)
        dtype = info.dtype if info else _dtype(node)
        if dtype is None:
            self.notes.append(f"{pattern}: any dtype, left to the server to validate")
            return {"title": "array (any dtype)"}
        differentiable = info is not None and dtype[0] in "fc"
        if info is not None and not differentiable:
            self.notes.append(f"{pattern}: a differentiable {dtype} leaf, mirrored as constant")
        dims = ["..." if d is Ellipsis else d for d in shape]
        spec = {"shape": dims, "dtype": dtype, "differentiable": differentiable}
        return {"title": f"{dtype}{dims}", "x-chainrule-array": {**spec, "casting": _CASTING}}


def _leaf(spec: dict[str, Any]) -> Leaf:
    return Leaf(tuple(spec["shape"]) if "shape" in spec else (...,), spec.get("dtype"))


def _side(schemas: dict[str, Any], which: str, notes: list[str]) -> tuple[dict, dict]:
    diff = schemas[f"Apply{which}Schema"].get("differentiable_arrays", {})
    patterns = {p: _leaf(s) for p, s in diff.items()}
    builder = _Builder(schemas, patterns, notes)
    root = builder.model(schemas[f"Apply_{which}Schema"], "", f"{which}Schema")
    for missing in sorted(set(patterns) - builder.seen):
        notes.append(f"{missing}: in differentiable_arrays but not in the schema tree")
    if builder.defs:
        root["$defs"] = builder.defs
    return root, patterns


def mirror(openapi: dict[str, Any], where: str) -> Mirror:
    """The mirror of a tesseract-runtime OpenAPI document fetched from `where`."""
    if not is_tesseract(openapi):
        raise TransportError(
            f"{where} is not a Tesseract server's OpenAPI: it has no "
            "components.schemas.ApplyInputSchema.differentiable_arrays"
        )
    notes: list[str] = []
    schemas = openapi["components"]["schemas"]
    inputs, ipat = _side(schemas, "Input", notes)
    outputs, opat = _side(schemas, "Output", notes)
    routes = tuple(p.strip("/") for p in openapi.get("paths", {}))
    formats = openapi.get("x-supported-output-formats")
    formats = None if formats is None else tuple(formats)
    return Mirror(inputs, outputs, ipat, opat, routes, formats, notes)
