"""Drop the known, harmless lines that TVM and LiteRT print on stderr from C++ during a successful compile.

They write to file descriptor 2 directly (LOG(WARNING), TFLITE_LOG), so Python's `sys.stderr` and
`warnings` never see them. `quiet_native_stderr()` points fd 2 at a pipe for the duration of a block;
a thread copies every line that is not listed in `NOISE` to the real stderr as it arrives, so
errors, progress lines and anything unknown still show, in order. Nested and concurrent uses share
one redirect.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

# Each is printed on every successful compile of some model and tells the user nothing they can act on.
NOISE = (
    re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    # TOPI's take/gather in "fast" mode; the toolkit clamps indices (compile/index_bounds.py)
    re.compile(rb"Warning: Fast mode segfaults when there are out-of-bounds indices"),
    # TOPI's IR-builder kernels (scatter, sort, ...) carry a pragma LLVM codegen ignores
    re.compile(rb"Warning: Unknown pragma pragma_scope$"),
    # left behind by a ConvertLayout that gave up on a graph (compile/layout.py keeps it NCHW then)
    re.compile(rb"Warning: BlockBuilder destroyed with remaining blocks!$"),
)

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_reader: threading.Thread | None = None


def _is_noise(line: bytes) -> bool:
    text = line.rstrip(b"\r\n")
    return any(p.search(text) for p in NOISE)


def _forward(read_fd: int, out_fd: int) -> None:
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not _is_noise(line))
            if kept:
                os.write(out_fd, kept)
    if pending and not _is_noise(pending):
        os.write(out_fd, pending)
    os.close(out_fd)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Filter `NOISE` lines out of fd 2 inside the block; everything else passes through unchanged."""
    global _depth, _saved_fd, _reader
    with _lock:
        _depth += 1
        if _depth == 1:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                read_fd, write_fd = os.pipe()
                os.dup2(write_fd, 2)
                os.close(write_fd)
                _saved_fd = saved
                _reader = threading.Thread(target=_forward, args=(read_fd, os.dup(saved)), name="autoglm-stderr",
                                           daemon=True)
                _reader.start()
            except OSError:  # no usable fd 2 (closed, or a sandbox): stderr stays as it is
                _saved_fd = None
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                sys.stderr.flush()
                os.dup2(_saved_fd, 2)  # closes our end of the pipe: the reader sees EOF once children let go
                os.close(_saved_fd)
                _saved_fd = None
                reader, _reader = _reader, None
                if reader is not None:
                    # a child process that inherited the pipe keeps the reader alive; it then ends with the child
                    reader.join(timeout=5)
