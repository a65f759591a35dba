"""registry.clientside.process.exit_process: fast exit after torch, without losing output or
exit handlers."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import atexit, pathlib, sys, threading, time
{imports}
from registry.clientside.process import exit_process
atexit.register(lambda: pathlib.Path(sys.argv[1]).write_text("ran"))

def late_writer():
    time.sleep(0.5)
    pathlib.Path(sys.argv[1] + ".thread").write_text("finished")

threading.Thread(target=late_writer).start()
print("partial line without a newline", end="")
print("to stderr", end="", file=sys.stderr)
exit_process(3)
"""


@pytest.mark.parametrize("imports", ["import torch", ""], ids=["torch-loaded", "plain"])
def test_exit_code_output_and_exit_handlers_survive(tmp_path, imports):
    marker = tmp_path / "atexit"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(imports=imports), str(marker)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 3
    assert proc.stdout == "partial line without a newline"  # piped stdout is block-buffered
    assert proc.stderr == "to stderr"
    assert marker.read_text() == "ran"
    assert (tmp_path / "atexit.thread").read_text() == "finished"  # non-daemon thread awaited
