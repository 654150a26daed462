"""``python -m tests.helpers.stalled_cli STALL ARGS...``: ``blipcap ARGS...`` in which opening the
FIFO at STALL blocks until someone writes to it, as a read from a stalled network mount would.

The job opens every file non-blocking and refuses a FIFO at once (not a regular file), so the tests
that need a read that hangs restore the blocking open for that one path, here.
"""

from __future__ import annotations

import builtins
import os
import runpy
import sys


def main() -> None:
    stall = sys.argv.pop(1)
    real_open = builtins.open

    def blocking_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == stall:
            kwargs.pop("opener", None)  # without O_NONBLOCK, opening a FIFO waits for a writer
        return real_open(file, *args, **kwargs)

    builtins.open = blocking_open
    sys.argv[0] = "blipcap"
    runpy.run_module("blipcap", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
