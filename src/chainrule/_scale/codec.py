"""Request and answer trees as Ray carries them: the tree without its arrays, plus the arrays as
raw buffers.

Ray pickles what an actor call carries. A pickled numpy array names numpy's own modules
(numpy 2 writes `numpy._core...`), so it cannot be read by a replica running in an environment
with the other numpy major. Here each array leaf becomes a `Slot` (its index) and the array
travels as a `pickle.PickleBuffer` with its dtype and shape: Ray moves such buffers out of band
(zero-copy through the object store), and any numpy reads them back with `np.frombuffer`.

What a receiver gets are read-only views of the object store's memory: inputs on the replica
(as on an HTTP server) and the outputs back in the caller. A component that writes into its
inputs must copy them first; so must a caller that writes into outputs it received.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Packed", "Slot", "buffers", "copy_tree", "get_path", "pack", "set_path", "unpack"]


@dataclass(frozen=True)
class Slot:
    """Where array number `index` of a packed tree goes."""

    index: int


@dataclass(frozen=True)
class Packed:
    """A tree whose arrays are `Slot`s, and each array's (dtype string, shape)."""

    skeleton: Any
    layouts: tuple[tuple[str, tuple[int, ...]], ...]


def pack(tree: Any) -> tuple[Packed, list[np.ndarray]]:
    """The tree without its arrays, and its arrays (C-contiguous) in slot order."""
    arrays: list[np.ndarray] = []
    skeleton = _lower(tree, arrays)
    layouts = tuple((a.dtype.str, a.shape) for a in arrays)
    return Packed(skeleton, layouts), arrays


def buffers(arrays: list[np.ndarray]) -> list[pickle.PickleBuffer]:
    """The arrays as buffers Ray moves out of band (no numpy pickled)."""
    return [pickle.PickleBuffer(a.data) for a in arrays]


def unpack(packed: Packed, raw: Any, writable: bool = False) -> Any:
    """The tree of `packed`, its slots filled with read-only views of the buffers `raw` (with
    `writable`, private writable copies)."""
    arrays = [
        np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
        for (dtype, shape), buffer in zip(packed.layouts, raw, strict=True)
    ]
    if writable:
        arrays = [a.copy() for a in arrays]
    return _raise(packed.skeleton, arrays)


def _lower(tree: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(tree, dict):
        return {k: _lower(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_lower(v, arrays) for v in tree]
    if isinstance(tree, np.ndarray | np.generic):
        array = np.asarray(tree)  # a scalar becomes a 0-d array, as on the wire
        arrays.append(array if array.flags.c_contiguous else array.copy(order="C"))
        return Slot(len(arrays) - 1)
    return tree


def _raise(tree: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(tree, dict):
        return {k: _raise(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_raise(v, arrays) for v in tree]
    return arrays[tree.index] if isinstance(tree, Slot) else tree


# ---- paths into trees (`a.b.0`), for slicing batches


def get_path(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


def set_path(tree: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    parent = get_path(tree, ".".join(head)) if head else tree
    parent[int(last) if isinstance(parent, list) else last] = value


def copy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: copy_tree(v) for k, v in tree.items()}
    return [copy_tree(v) for v in tree] if isinstance(tree, list) else tree
