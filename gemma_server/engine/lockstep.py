"""Multi-host lockstep: process 0 of a slice tells the other processes every device step.

JAX on several hosts is multi-controller: every process must launch the same compiled
program, with the same inputs, in the same order, or the collectives inside it never meet.
Only process 0 runs the scheduler (it serves HTTP), so before each step its executor
announces the step and its host inputs (`Executor.announce`); each other process receives
them here and replays the step on its own executor (`Executor.replay`).

The transport is a plain TCP stream from process 0 (listening on the coordinator's port + 1)
to each follower: per step, an 8-byte length and a message of raw arrays with a JSON header
(op, key, and each leaf's dtype and shape). Only data travels: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)
PORT_OFFSET = 1  # process 0 listens on the coordinator's port + 1
STOP = "stop"
_LENGTH = struct.Struct(">Q")


class SliceLost(BaseException):  # noqa: N818 (not an Exception: no step handler may swallow it)
    """A follower is gone: no step can complete any more, so the engine loop must die (and
    the server exit 1, for the slice to be restarted as a group)."""


def lockstep_address(coordinator_address: str) -> tuple[str, int]:
    host, _, port = coordinator_address.rpartition(":")
    return host, int(port) + PORT_OFFSET


def encode(op: str, key: Any, args: tuple[Any, ...]) -> bytes:
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(args)]  # tobytes: C order
    header = json.dumps({"op": op, "key": key, "leaves": [
        [leaf.dtype.name, list(leaf.shape), leaf.nbytes] for leaf in leaves]}).encode()
    return b"".join([_LENGTH.pack(len(header)), header, *(leaf.tobytes() for leaf in leaves)])


def decode(message: bytes, templates: dict[str, Any]) -> tuple[str, Any, tuple[Any, ...]]:
    """(op, key, args); args rebuilt in the structure of `templates[op]` when it has one."""
    (size,) = _LENGTH.unpack_from(message)
    header = json.loads(message[_LENGTH.size:_LENGTH.size + size])
    offset, leaves = _LENGTH.size + size, []
    for dtype, shape, nbytes in header["leaves"]:
        leaves.append(np.frombuffer(message, np.dtype(dtype), count=int(np.prod(shape)),
                                    offset=offset).reshape(tuple(shape)))
        offset += nbytes
    op, key = header["op"], header["key"]
    key = tuple(key) if isinstance(key, list) else key
    if op in templates:
        return op, key, jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(templates[op]), leaves)
    return op, key, tuple(leaves)


class Leader:
    """Process 0's end: waits for every follower, then sends each announced step to all."""

    def __init__(self, port: int, followers: int, timeout: float = 900.0):
        with socket.create_server(("", port), reuse_port=False) as server:
            server.settimeout(timeout)
            self._peers = []
            for _ in range(followers):
                peer, address = server.accept()
                peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                log.info("lockstep: follower at %s connected", address[0])
                self._peers.append(peer)

    def announce(self, op: str, key: Any, args: tuple[Any, ...]) -> None:
        message = encode(op, key, args)
        frame = _LENGTH.pack(len(message)) + message
        for peer in self._peers:
            try:
                peer.sendall(frame)
            except OSError as exc:
                raise SliceLost(f"a follower process is gone ({exc})") from None

    def close(self) -> None:
        """Tell the followers to stop (they exit 0), then hang up."""
        for peer in self._peers:
            try:
                message = encode(STOP, None, ())
                peer.sendall(_LENGTH.pack(len(message)) + message)
            except OSError:
                pass
            peer.close()
        self._peers = []


class Follower:
    """Another process's end: connects to process 0 and yields the steps it announces."""

    def __init__(self, host: str, port: int, timeout: float = 900.0):
        deadline = time.monotonic() + timeout
        while True:  # process 0 may still be loading or compiling
            try:
                self._sock = socket.create_connection((host, port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._sock.settimeout(None)  # a quiet server sends nothing for a long time

    def receive(self, templates: dict[str, Any]) -> tuple[str, Any, tuple[Any, ...]]:
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return decode(self._read(size), templates)

    def _read(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("process 0 closed the lockstep connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()
