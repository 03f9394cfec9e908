"""MediaPipe's native log lines (absl ``W0000 ...``, TensorFlow Lite's ``INFO: Created ...``)
stay off the terminal, and the process's stderr works again after the detectors start."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

FRAMES = 1

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                reason="mediapipe (optional extra) is not installed")

SCRIPT = """
import sys
import time
from pathlib import Path
import cv2
import numpy as np
from pipeline.detect.network import FrameKey
from pipeline.detect.registry import MediaPipeDetector, MediaPipePeopleDetector

images = [cv2.imread(str(p)) for p in sorted(Path(sys.argv[1]).rglob("*.jpg"))[:2]]
keys = [FrameKey("synthetic", "S1", "a", "1", "c", i) for i in range(len(images))]
single, people = MediaPipeDetector(), MediaPipePeopleDetector()
joints, conf = single.detect(images, None, keys)
rows = people.detect_people(images, None, keys)
time.sleep(1)  # MediaPipe's threads log after process() returns: let them finish first (a
# Python line written while they log could be split by them, which no filter can undo)
print("detected", len(images), conf.shape, len(rows.index), file=sys.stderr, flush=True)
sys.stderr.write("\\rprogress 1/2")   # a progress bar's unfinished line passes
sys.stderr.flush()
raise SystemExit("last words")      # printed at exit, after the filter: not lost
"""


def test_no_native_log_lines(tiny_root):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_root)], cwd=repo,
                         capture_output=True, timeout=300)
    err = out.stderr.decode()  # not text=True: that would turn the "\r" into a newline
    assert out.returncode == 1, err
    for native in ("W0000", "I0000", "TensorFlow Lite", "absl::InitializeLog"):
        assert native not in err, err
    lines = err.split("\n")
    assert lines[-3].startswith("detected 2 (2, 17)"), lines
    assert lines[-2:] == ["\rprogress 1/2last words", ""], lines


def test_the_filter_drops_only_native_lines():
    from pipeline.detect.native_log import drop_native_lines

    native = (b"W0000 00:00:1796610437.410036    9456 inference_feedback_manager.cc:114] "
              b"Feedback manager requires a model\n")
    tflite = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    kept = (b"E0000 00:00:1796610437.410036    9456 x.cc:1] an error\nWarning: mine\n"
            b"INFO: my own\nTraceback (most recent call last):\n")
    assert drop_native_lines(native + kept + tflite) == (kept, b"")
    # another thread's unfinished line before a native one: it stays, the native one goes
    assert drop_native_lines(b"after start" + tflite + b"\n") == (b"after start\n", b"")
    # a native line split over two reads is held back, then dropped; a progress bar is not held
    head, held = drop_native_lines(b"done\n" + native[:20])
    assert (head, held) == (b"done\n", native[:20])
    assert drop_native_lines(held + native[20:]) == (b"", b"")
    assert drop_native_lines(b"\r 40%|####") == (b"\r 40%|####", b"")
