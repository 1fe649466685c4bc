"""lsa_ds.train.distributed helpers that need no launch: how a finished rank leaves."""

import subprocess
import sys

EXIT_SCRIPT = """
import atexit, os, sys
from lsa_ds.train.distributed import exit_rank
atexit.register(os.abort)  # stands in for a teardown that crashes (a C++ thread racing finalization)
print("rank output", end="")  # block-buffered: lost unless exit_rank flushes
sys.stderr.write("rank error")
exit_rank(3)
"""


def test_exit_rank_flushes_output_keeps_the_code_and_skips_teardown():
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "rank output", "rank error")
