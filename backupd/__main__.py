"""The ``backupd`` command and ``python -m backupd``."""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn

INTERRUPTED_AT_START = "backupd: interrupted while starting; nothing was done\n"


def main() -> NoReturn:
    """``backupd.cli.main``, with the cyclic garbage collector off before the command line's
    modules are imported (see ``backupd.cli.START_UP_SECONDS``).

    Ctrl-C before the command has installed its signal handlers (while some 0.2 s of modules
    load, or the settings are read) started nothing: one line and exit 1, not a traceback."""
    gc.disable()
    try:
        from backupd.cli import main as command_line

        command_line()
    except KeyboardInterrupt:
        sys.stdout.flush()  # whatever was printed before stays printed
        sys.stderr.write(INTERRUPTED_AT_START)
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
