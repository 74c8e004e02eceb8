"""The endpoint table: one typed row per endpoint.

A row says everything the rest of chainrule needs to know about an endpoint, so that nothing
is wired by hand per endpoint elsewhere:

- its request keywords besides `inputs` (`Keyword`): each with the annotation of the OpenAPI
  request model, whether it is required (else its default), a fast check of a decoded wire
  value and the text saying what that check expects, and its *role*, which says how the
  component validates it at a point (`validate.request`);
- its result kind (`Result`), which tells a server how to shape the answer and a remote client
  how to read it;
- whether it is a derivative (an author may write it: `Component.define`) and whether it is
  batched (its tangents or cotangents carry a leading batch axis);
- the check `check_gradients` runs on it (a kind that `chainrule._tools.check` maps to one
  routine).

`Component.call(endpoint, inputs, **request)` runs any row. The server's routes, request
checks and OpenAPI models, the remote client, `/schema` and `check_gradients` all read the
rows. Adding an endpoint is one row here plus the backends that implement it natively (or an
author's function); the rules that derive one endpoint from another are in `rules`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ENDPOINTS", "Endpoint", "Keyword", "Result", "Role", "derivatives"]

Role = Literal[
    "keep", "handle", "tangents", "cotangents", "wrt", "of", "weights", "scalar", "batched"
]
"""How a keyword is validated at a point (see `validate.request`): `keep` and `handle` are
taken as they are (a handle names a residual), `tangents`/`cotangents` are arrays by input or
output path, `wrt`/`of` select input or output paths; `weights` are an hvp's output weights,
given as cotangents or (`scalar`) as the one scalar output `of`; `batched` names the inputs
that carry a leading batch axis (`batched_apply`; on a derivative row, B points at once,
its tangents or cotangents and its answer carrying that axis first)."""

Result = Literal["outputs", "shapes", "by_output", "by_input", "jacobian", "batched_outputs"]
"""What an endpoint answers: the outputs (an output schema instance), their shapes (one with
`ShapeDtype` leaves), arrays by output path (`{output path: array}`), by input path, a
Jacobian (`{output path: {input path: array}}`), or the outputs of a batch of points
(`{output path: array}`, each array output with a leading batch axis)."""

Check = Literal["jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp", "hvp"]


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_paths(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    )


@dataclass(frozen=True)
class Keyword:
    """One request keyword of an endpoint (besides `inputs`).

    Arguments:
        name: the keyword (`"tangents"`).
        role: how the component validates it at a point.
        annotation: its type in the OpenAPI request model.
        required: whether a request must carry it; else it defaults to `default`.
        check: a fast check of a value decoded from the wire, before the component sees it.
        expected: what `check` wants, for messages (`"an object {input path: array}"`).
    """

    name: str
    role: Role
    annotation: Any
    required: bool
    check: Callable[[Any], bool]
    expected: str
    default: Any = None


KEEP = Keyword("keep", "keep", bool, False, lambda v: isinstance(v, bool), "true or false", False)
HANDLE = Keyword(
    "handle", "handle", str | None, False,
    lambda v: v is None or isinstance(v, str), "a handle string or null",
)  # fmt: skip
TANGENTS = Keyword(
    "tangents", "tangents", dict[str, Any], True, _is_dict, "an object {input path: array}"
)
COTANGENTS = Keyword(
    "cotangents", "cotangents", dict[str, Any], True, _is_dict, "an object {output path: array}"
)
WRT = Keyword(
    "wrt", "wrt", list[str] | str | None, False, _is_paths, "a path, a list of paths or null"
)
OF = Keyword(
    "of", "of", list[str] | str | None, False, _is_paths, "a path, a list of paths or null"
)
# An hvp weighs its outputs by cotangents, or names one scalar output `of` (then weight 1).
WEIGHTS = Keyword(
    "cotangents", "weights", dict[str, Any] | None, False,
    lambda v: v is None or isinstance(v, dict), "an object {output path: array}",
)  # fmt: skip
# The inputs (by path) that carry a leading batch axis, all of the same size.
BATCHED = Keyword(
    "batched", "batched", list[str], True,
    lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "a list of input paths",
)  # fmt: skip
# On a derivative row: the inputs (by path) that carry a leading axis of B points; its tangents
# or cotangents, and its answer, carry that axis too (before their own batch axis, if any).
POINTS = Keyword(
    "batched", "batched", list[str] | None, False,
    lambda v: v is None or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
    "a list of input paths or null",
)  # fmt: skip
SCALAR = Keyword(
    "of", "scalar", str | None, False,
    lambda v: v is None or isinstance(v, str), "one scalar output path or null",
)  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    """One row of the endpoint table.

    Arguments:
        name: the endpoint (`"vjp"`); also its route, `POST /vjp`.
        keywords: its request keywords besides `inputs`, in the order they are validated.
        result: what it answers (see `Result`).
        returns: the answer in words (for documentation).
        derivative: an author may write it (`Component.define`); the derivation rules apply.
        batched: its tangents or cotangents, and its result, carry a leading batch axis.
        check: what `check_gradients` compares it with (None: nothing).
    """

    name: str
    keywords: tuple[Keyword, ...]
    result: Result
    returns: str
    derivative: bool = False
    batched: bool = False
    check: Check | None = None

    @property
    def request(self) -> tuple[str, ...]:
        """The names of its request keywords (besides `inputs`)."""
        return tuple(k.name for k in self.keywords)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """The names of its request keywords, as a set (checked on every call)."""
        return frozenset(self.request)

    def answer_keys(self, request: Mapping[str, Any]) -> tuple[str, ...]:
        """The keys of the answer to `request` over a transport (see `Result`)."""
        if self.result == "outputs":
            return ("outputs", "handle") if request.get("keep") else ("outputs",)
        return ("outputs", "leaves") if self.result == "shapes" else ("result",)


ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint("apply", (KEEP,), "outputs", "the outputs (validated output schema instance)"),
        Endpoint("eval_shape", (), "shapes", "the outputs with ShapeDtype in place of arrays"),
        # One call for B points that differ only in the `batched` inputs (vmap over primals):
        # jax and torch answer with vmap, the others with a loop; a remote component sends
        # it as one request. The derivative rows take `batched` too (`points`): B points,
        # their tangents or cotangents stacked the same way, in one call.
        Endpoint(
            "batched_apply", (BATCHED,), "batched_outputs",
            "{output path: outputs[b] on axis 0}, for the inputs `batched` on axis 0",
        ),
        Endpoint(
            "jvp", (TANGENTS, OF, HANDLE, POINTS), "by_output", "{output path: J·t}",
            derivative=True, check="jvp",
        ),
        Endpoint(
            "vjp", (COTANGENTS, WRT, HANDLE, POINTS), "by_input", "{input path: Jᵀ·c}",
            derivative=True, check="vjp",
        ),
        Endpoint(
            "jacobian", (WRT, OF, HANDLE), "jacobian", "{output path: {input path: ∂out/∂in}}",
            derivative=True, check="jacobian",
        ),
        Endpoint(
            "batched_jvp", (TANGENTS, OF, HANDLE, POINTS), "by_output",
            "{output path: J·t[b] on axis 0}", derivative=True, batched=True,
            check="batched_jvp",
        ),
        Endpoint(
            "batched_vjp", (COTANGENTS, WRT, HANDLE, POINTS), "by_input",
            "{input path: Jᵀ·c[b] on axis 0}", derivative=True, batched=True,
            check="batched_vjp",
        ),
        Endpoint(
            "hvp", (TANGENTS, WEIGHTS, SCALAR, WRT), "by_input",
            "{input path: H·t}, H the Hessian of Σ⟨cotangents, outputs⟩ (or of the scalar `of`)",
            derivative=True, check="hvp",
        ),
    )
}  # fmt: skip


def derivatives() -> tuple[str, ...]:
    """The derivative endpoints, in table order (read afresh: a test may add a row)."""
    return tuple(name for name, row in ENDPOINTS.items() if row.derivative)
