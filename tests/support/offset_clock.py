"""``python -m tests.support.offset_clock SECONDS ARGS...``: the ``edgesieve`` command line with a pipeline clock
``SECONDS`` ahead of the wall clock (sources' arrival stamps and stages' "now"), so a test can make a restart
happen "a day later" without waiting a day."""

from __future__ import annotations

import sys
import time

from pipeline import cli, runtime


def main(argv: list[str]) -> int:
    offset = float(argv[0])
    init = runtime.Pipeline.__init__

    def offset_init(self, spec, clock=None):
        init(self, spec, clock=lambda: time.time() + offset)

    runtime.Pipeline.__init__ = offset_init
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
