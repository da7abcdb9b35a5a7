"""``torchrun tests/distributed_killed_rank.py score ...``: ``padim`` whose rank 1 is SIGKILLed
right after its first journalled rows reach the disk (the resume test's crash, deterministic)."""

import os
import signal
import sys

from padim import cli
from padim.results import ResultJournal

if os.environ.get("RANK") == "1":
    add = ResultJournal.add

    def add_then_die(self, rows):
        add(self, rows)
        if rows:
            os.kill(os.getpid(), signal.SIGKILL)

    ResultJournal.add = add_then_die

sys.exit(cli.main(sys.argv[1:]))
