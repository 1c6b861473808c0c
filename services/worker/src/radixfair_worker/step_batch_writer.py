"""Step batches written to the front's pipe by the engine loop itself, never blocking it.

With ``engine_pipe_io: inline`` the engine process runs one thread: the loop that steps the
engine also writes each step's batch down the output pipe. The pipe's end is non-blocking, so a
front that reads slowly never stalls a step: what the pipe does not take stays here, and the
batches of the steps that follow are merged into one (``StepBatch.merge``), as the sender thread
of the threaded mode coalesces them. Messages are framed as ``multiprocessing.connection`` frames
them (a 4-byte big-endian length, or -1 and an 8-byte length past 2 GiB), so the front reads them
with ``Connection.recv`` whichever mode wrote them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import time
from multiprocessing.connection import Connection

from radixfair_worker.engine_protocol import StepBatch

# Linux lets a pipe buffer grow to /proc/sys/fs/pipe-max-size (1 MiB by default) with F_SETPIPE_SZ:
# room for a few hundred decode steps' batches before the front must read.
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named there from Python 3.10 on Linux only


def frame(payload: bytes) -> bytes:
    """``payload`` with the length header ``Connection.recv_bytes`` reads."""
    if len(payload) > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload
    return struct.pack("!i", len(payload)) + payload


class StepBatchWriter:
    """Writes batches to ``connection`` without blocking; the rest waits, and later batches merge.

    ``offer`` queues a batch and writes what the pipe takes now; ``flush`` writes more of what
    waits. ``waiting`` is True while anything is unwritten: the loop then also waits for the pipe
    to take more (``fileno``) when it has nothing to step. BrokenPipeError (the front is gone)
    propagates.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection  # kept open: closing it is its owner's
        self._fd = connection.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(OSError):  # not Linux, or above the system's limit: the default
            import fcntl

            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, PIPE_BYTES)
        # The frame being written and how much of it the pipe took; then the batch merged since.
        self._frame = b""
        self._written = 0
        self._next: StepBatch | None = None

    @property
    def waiting(self) -> bool:
        return bool(self._frame) or self._next is not None

    def fileno(self) -> int:
        return self._fd

    def offer(self, batch: StepBatch) -> None:
        if self._next is None:
            self._next = batch
        else:
            self._next.merge(batch)
        self.flush()

    def drain(self, timeout_s: float) -> None:
        """Writes everything that waits, blocking up to ``timeout_s`` for the pipe to take it."""
        deadline = time.monotonic() + timeout_s
        self.flush()
        while self.waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([], [self._fd], [], left)
            self.flush()

    def flush(self) -> None:
        """Writes until the pipe is full or nothing waits."""
        while True:
            if not self._frame:
                if self._next is None:
                    return
                self._frame, self._written, self._next = frame(pickle.dumps(self._next, -1)), 0, None
            try:
                self._written += os.write(self._fd, memoryview(self._frame)[self._written :])
            except BlockingIOError:
                return
            if self._written == len(self._frame):
                self._frame, self._written = b"", 0
