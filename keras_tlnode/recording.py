"""What the `TaylorLagrangeODE` layers saw during one training step.

`TLNODEModel.train_step` runs the model's forward pass inside
`recorded_calls()`: each layer's `call` reports its inputs and the remainder
penalty it added, so that the correction phase can fit each layer's Γ_φ on the
states that layer actually received, and the `remainder` metric counts the
penalties and nothing else (not the weights' regularisers).

Module state, on purpose: the open blocks live on a thread-local stack
(`_RECORDING`), because the layers cannot be handed a recorder through Keras's
call path, and tf.distribute traces each replica in its own thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import tensorflow as tf

if TYPE_CHECKING:
    from keras_tlnode.layers import Spans, TaylorLagrangeODE

_RECORDING = threading.local()


class RecordedCalls(NamedTuple):
    """What the TaylorLagrangeODE layers did inside a `recorded_calls()` block.

    `inputs` maps each layer to the `Spans` of each of its calls (a shared layer
    has several); `penalties` holds each call's remainder penalty that went into
    the loss.
    """

    inputs: dict[TaylorLagrangeODE, list[Spans]]
    penalties: list[tf.Tensor]
    graph: object  # the graph the block runs in; calls traced in other graphs are not recorded


@contextlib.contextmanager
def recorded_calls() -> Iterator[RecordedCalls]:
    """Collects what every TaylorLagrangeODE layer receives and adds to the loss inside the block."""
    stack = _RECORDING.__dict__.setdefault("stack", [])
    stack.append(RecordedCalls({}, [], tf.compat.v1.get_default_graph()))
    try:
        yield stack[-1]
    finally:
        stack.pop()


def record(layer: TaylorLagrangeODE, spans: Spans, penalty: tf.Tensor | None) -> None:
    """Reports one call of `layer`, its parsed inputs, to the innermost open block, if any."""
    stack = getattr(_RECORDING, "stack", None)
    # Keras builds a subclassed model by calling it once in a scratch graph
    # inside the same step; those tensors cannot be used in the step's graph.
    if stack and (tf.executing_eagerly() or tf.compat.v1.get_default_graph() is stack[-1].graph):
        stack[-1].inputs.setdefault(layer, []).append(spans)
        if penalty is not None:
            stack[-1].penalties.append(penalty)
