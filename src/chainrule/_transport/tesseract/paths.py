"""Leaf paths between chainrule (`layers.0.w`, `fields.temp`) and Tesseract (`layers.[0].w`,
`fields.{temp}`), and Tesseract's path patterns (`layers.[].w`, `fields.{}`).

A chainrule path does not say whether `0` is a list index or a dict key, so a path goes to
Tesseract segment by segment against the differentiable pattern it matches; coming back needs
no pattern. Inside braces Tesseract escapes `{`, `}` and `\\` with a backslash and allows dots,
which chainrule cannot address (its dict keys hold no dots): such a key is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from chainrule._schema.errors import UnknownPathError, ValidationError

__all__ = ["expand", "from_tesseract", "loc_path", "to_tesseract"]

_SPECIAL = "{}\\"


def escape_key(key: str) -> str:
    return "".join("\\" + c if c in _SPECIAL else c for c in key)


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        step = 2 if text[i] == "\\" and i + 1 < len(text) else 1
        out.append(text[i + step - 1])
        i += step
    return "".join(out)


def split(path: str) -> list[str]:
    """The segments of a Tesseract path: dots inside braces do not split (`a.{b.c}`)."""
    parts: list[str] = []
    buf: list[str] = []
    depth, i = 0, 0
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            buf += [c, path[i + 1]]
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if c == "." and depth == 0:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return parts


def _segment(seg: str, path: str) -> str:
    """A chainrule segment for one Tesseract segment (`[3]` → `3`, `{k}` → `k`)."""
    if len(seg) > 2 and seg[0] == "[" and seg[-1] == "]" and seg[1:-1].isdigit():
        return str(int(seg[1:-1]))
    if len(seg) > 2 and seg[0] == "{" and seg[-1] == "}":
        key = _unescape(seg[1:-1])
        if "." in key:
            raise ValidationError(
                f"Tesseract path '{path}' has the dict key {key!r}, which chainrule cannot "
                "address (its paths join segments with '.'); rename the key without '.'"
            )
        return key
    return seg


def from_tesseract(path: str) -> str:
    """`layers.[0].w` → `layers.0.w`; `fields.{temp}` → `fields.temp`."""
    return ".".join(_segment(s, path) for s in split(path))


def _match(pattern: str, segs: list[str]) -> str | None:
    pats = pattern.split(".")  # patterns hold field names and [] / {} only
    if len(pats) != len(segs):
        return None
    out = []
    for p, s in zip(pats, segs, strict=True):
        if p == "[]" and s.isdigit():
            out.append(f"[{int(s)}]")
        elif p == "{}" and s:
            out.append("{" + escape_key(s) + "}")
        elif p == s:
            out.append(s)
        else:
            return None
    return ".".join(out)


def to_tesseract(path: str, patterns: Iterable[str]) -> str:
    """`layers.0.w` → `layers.[0].w`, against the patterns of the differentiable leaves."""
    patterns = list(patterns)
    segs = path.split(".")
    for pattern in patterns:
        hit = _match(pattern, segs)
        if hit is not None:
            return hit
    raise UnknownPathError(
        f"'{path}' is not a differentiable leaf of this Tesseract; its differentiable leaves "
        f"are {', '.join(sorted(patterns)) or '(none)'} ([] a list index, {{}} a dict key)"
    )


def _children(node: Any, pat: str) -> Iterator[tuple[str, Any]]:
    if pat == "[]" and isinstance(node, list | tuple):
        yield from ((str(i), item) for i, item in enumerate(node))
    elif pat == "{}" and isinstance(node, Mapping):
        yield from ((str(k), item) for k, item in node.items())
    elif isinstance(node, Mapping) and pat in node:
        yield pat, node[pat]


def expand(patterns: Iterable[str], tree: Any) -> list[str]:
    """The chainrule paths of the leaves of `tree` (a JSON-like tree) matching `patterns`,
    in pattern order, then list and dict order; None leaves (optional fields) left out."""
    out: list[str] = []
    for pattern in patterns:
        level: list[tuple[str, Any]] = [("", tree)]
        for pat in pattern.split("."):
            level = [
                (f"{p}.{s}" if p else s, child)
                for p, node in level
                for s, child in _children(node, pat)
            ]
        out += [p for p, leaf in level if leaf is not None]
    return out


def loc_path(loc: list[Any]) -> str:
    """A 422 `loc` (`["body", "inputs", "layers", 0, "w"]`) as `inputs.layers.0.w`; the
    union-arm names FastAPI inserts (`constrained-str`, `literal[...]`) are left out."""
    return ".".join(str(x) for x in loc[1:] if not _is_union_tag(x))


def _is_union_tag(x: Any) -> bool:
    tags = ("literal[", "function-", "constrained-")
    return isinstance(x, str) and x.startswith(tags)
