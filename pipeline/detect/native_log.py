"""MediaPipe without its native log lines on the terminal.

MediaPipe's C++ side (absl logging before ``absl::InitializeLog``, TensorFlow Lite) writes
``W0000 ... inference_feedback_manager.cc``, ``W0000 ... landmark_projection_calculator.cc`` and
``INFO: Created TensorFlow Lite XNNPACK delegate`` lines straight to file descriptor 2, from its
graph's own threads, as each calculator first runs (also after ``process`` has returned). None of
GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL or absl's Python verbosity reaches them (measured,
mediapipe 0.10.21), and silencing fd 2 around the calls misses the late ones.

:func:`filter_native_log_lines` therefore routes fd 2 of the process through a pipe that a
daemon thread copies to the real stderr, dropping only lines of :data:`NATIVE_LOG_LINE`
(absl/glog warnings and infos, TensorFlow Lite's INFO lines; errors pass) with
:func:`drop_native_lines`; everything else passes as it comes (progress bars too). At exit fd 2
is restored and what is still in the pipe is copied, so a final traceback is not lost.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from typing import Any

NATIVE_LOG_LINE = re.compile(
    rb"(?:[WI]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]\n]+\]"
    rb"|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)[^\n]*\n")
"""A line the filter drops, with its newline, wherever it starts (another thread's unfinished
line may precede it): an absl/glog ``W``/``I`` line, TensorFlow Lite's delegate INFO, absl's
pre-initialisation notice."""
_PREFIXES = (b"W0", b"I0", b"INFO: ", b"WARNING: All")

_state: dict[str, Any] = {}


def drop_native_lines(data: bytes) -> tuple[bytes, bytes]:
    """(what to write now, what to hold back) of the bytes read so far: every
    :data:`NATIVE_LOG_LINE` removed; an unfinished last line held back only while it may still
    become one (a progress bar's ``\r`` line passes at once)."""
    out = NATIVE_LOG_LINE.sub(b"", data)
    tail = out[out.rfind(b"\n") + 1:]
    if tail and any(tail.startswith(p) or p.startswith(tail) for p in _PREFIXES):
        return out[:len(out) - len(tail)], tail
    return out, b""


def _forward(read_fd: int, out_fd: int) -> None:
    """Copy the pipe to ``out_fd`` without :data:`NATIVE_LOG_LINE` lines, to its end."""
    pending = b""
    while chunk := os.read(read_fd, 65536):
        out, pending = drop_native_lines(pending + chunk)
        if out:
            os.write(out_fd, out)
    if pending:
        os.write(out_fd, pending)
    os.close(read_fd)


def _restore() -> None:
    """fd 2 back to the real stderr and the pipe drained (its thread ends at end of file),
    unless someone else has put another file on fd 2 since (pytest's capture does)."""
    original, thread, pipe = (_state.pop(k, None) for k in ("original", "thread", "pipe"))
    if original is None:
        return
    sys.stderr.flush()
    if _identity(2) == pipe:
        os.dup2(original, 2)  # closes the pipe's last write end: the thread reads to its end
    thread.join(timeout=5)
    os.close(original)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def filter_native_log_lines() -> None:
    """Install the filter (module docstring) once per process; later calls do nothing."""
    if "original" in _state:
        return
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    original = os.dup(2)
    os.dup2(write_fd, 2)
    pipe = _identity(write_fd)
    os.close(write_fd)
    thread = threading.Thread(target=_forward, args=(read_fd, original), daemon=True,
                              name="native-log-filter")
    thread.start()
    _state.update(original=original, thread=thread, pipe=pipe)
    atexit.register(_restore)
