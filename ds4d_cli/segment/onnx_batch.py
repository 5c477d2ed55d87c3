"""Give an ONNX model a free batch dimension, without the `onnx` package.

rembg's u2net exports fix the batch size at 1, so each test-time-augmentation view would be its
own onnxruntime call. The graph itself is batch-agnostic; only the declared shapes of the graph's
inputs and outputs say 1. :func:`free_batch_dim` rewrites those few protobuf fields (first
dimension -> the symbolic "N") directly in the serialised model, leaving every other byte as it
was, so one call can run all the views of a frame (or several frames).

Wire format (protobuf): each field is a varint key (field number << 3 | wire type) followed by a
varint (type 0), 8 bytes (1), a length-prefixed payload (2) or 4 bytes (5). The path edited is
ModelProto.graph(7) -> GraphProto.input(11)/output(12) -> ValueInfoProto.type(2) ->
TypeProto.tensor_type(1) -> TypeProto.Tensor.shape(2) -> TensorShapeProto.dim(1)[0], whose
Dimension.dim_value(1) becomes Dimension.dim_param(2).
"""

from __future__ import annotations

from typing import Callable, Iterator

_PATH: tuple[frozenset[int], ...] = (frozenset({7}), frozenset({11, 12}), frozenset({2}), frozenset({1}), frozenset({2}))


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(field number, wire type, raw key bytes, payload) for each top-level field."""
    i = 0
    while i < len(data):
        key, j = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, k = _varint(data, j)
            yield number, wire, data[i:j], data[j:k]
        elif wire == 2:
            n, start = _varint(data, j)
            k = start + n
            yield number, wire, data[i:j], data[start:k]
        elif wire == 1:
            k = j + 8
            yield number, wire, data[i:j], data[j:k]
        elif wire == 5:
            k = j + 4
            yield number, wire, data[i:j], data[j:k]
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        i = k


def _emit(key: bytes, wire: int, payload: bytes) -> bytes:
    return key + (_encode_varint(len(payload)) + payload if wire == 2 else payload)


def _rewrite(data: bytes, path: tuple[frozenset[int], ...], leaf: Callable[[bytes], bytes]) -> bytes:
    out = bytearray()
    for number, wire, key, payload in _fields(data):
        if wire == 2 and path and number in path[0]:
            payload = _rewrite(payload, path[1:], leaf) if len(path) > 1 else leaf(payload)
        out += _emit(key, wire, payload)
    return bytes(out)


def _symbolic_first_dim(shape: bytes) -> bytes:
    out = bytearray()
    done = False
    for number, wire, key, payload in _fields(shape):
        if number == 1 and wire == 2 and not done:
            payload = b"\x12\x01N"  # Dimension { dim_param: "N" }
            done = True
        out += _emit(key, wire, payload)
    return bytes(out)


def free_batch_dim(model: bytes) -> bytes:
    """The serialised model with the first dimension of every graph input and output symbolic."""
    return _rewrite(model, _PATH, _symbolic_first_dim)
