"""A transport in one file: requests cross a queue to a thread serving the component, as they
would cross a pipe, a socket or an actor call. The server side is chainrule's transport-neutral
`Handler`; the client side is the one remote component over any `Transport`."""

import queue
import threading
from typing import Any

import numpy as np

import chainrule as cr
from chainrule._schema.errors import error_from_dict
from chainrule._transport.handler import Handler
from chainrule._transport.remote import remote_component


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=In, outputs=Out, backend="numpy")
def square(inputs: In) -> Out:
    if (inputs.x < 0).any():
        raise ArithmeticError("square takes x >= 0")
    return Out(y=inputs.x**2)


# --8<-- [start:transport]
class QueueTransport:
    """Calls cross a queue to a thread that answers them with a `Handler`."""

    def __init__(self, component: cr.Component) -> None:
        self.where = f"queue://{component.name}"  # named in messages
        self.requests: queue.Queue[Any] = queue.Queue()
        handler = Handler(component)  # the server side: checks, runs, shapes the answer
        threading.Thread(target=self._serve, args=(handler,), daemon=True).start()

    def _serve(self, handler: Handler) -> None:
        while (item := self.requests.get()) is not None:
            endpoint, request, answers = item
            try:
                answer = (
                    handler.describe() if endpoint is None else handler.handle(endpoint, request)
                )
                answers.put((True, answer))
            except cr.ChainruleError as e:  # sent back in its structured form
                answers.put((False, e.to_dict()))

    def _ask(self, endpoint: str | None, request: Any) -> Any:
        answers: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.requests.put((endpoint, request, answers))
        ok, answer = answers.get()
        if not ok:
            raise error_from_dict(answer)  # the server's error, as its own class
        return answer

    def schema(self) -> dict[str, Any]:
        return self._ask(None, None)

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        return self._ask(endpoint, request)

    def close(self) -> None:
        self.requests.put(None)  # ends the serving thread


# --8<-- [end:transport]


# --8<-- [start:use]
remote = remote_component(QueueTransport(square))  # a Component like any other
print(remote.endpoints["vjp"])  # remote: finite-difference
grads = remote.vjp({"x": [1.0, 2.0]}, {"y": [1.0, 1.0]})
np.testing.assert_allclose(grads["x"], [2.0, 4.0], rtol=1e-6)
try:
    remote.apply({"x": [-1.0]})
except cr.ComponentError as e:  # raised on the server side, re-raised here as itself
    print(e)  # component 'square' raised in apply: ArithmeticError: square takes x >= 0
report = cr.check_gradients(remote, {"x": [0.5, 1.5]})
assert report.ok, report
remote.close()
# --8<-- [end:use]
