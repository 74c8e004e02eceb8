"""The exception tree: one base, the right built-in bases, and a faithful wire round trip."""

from __future__ import annotations

import pytest

import chainrule as cr
from chainrule._schema.errors import _CLASSES, error_from_dict


def test_every_error_is_a_chainrule_error() -> None:
    for cls in _CLASSES.values():
        assert issubclass(cls, cr.ChainruleError)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (cr.ValidationError, ValueError),
        (cr.UnknownPathError, KeyError),
        (cr.NotDifferentiableError, ValueError),
        (cr.EndpointUnavailableError, NotImplementedError),
        (cr.ComponentError, RuntimeError),
        (cr.SchemaDefinitionError, TypeError),
    ],
)
def test_builtin_bases(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, builtin)


def test_round_trip_keeps_class_message_and_detail() -> None:
    err = cr.NotDifferentiableError(
        "input 'n' is not differentiable", errors=[{"path": "n", "expected": "x", "got": "n"}]
    )
    back = error_from_dict(err.to_dict())
    assert type(back) is cr.NotDifferentiableError
    assert str(back) == str(err) and back.errors == err.errors
    assert type(error_from_dict({"type": "Nope", "message": "m"})) is cr.ChainruleError


def test_unknown_path_error_message_is_not_quoted() -> None:
    assert str(cr.UnknownPathError("no leaf 'z'")) == "no leaf 'z'"
