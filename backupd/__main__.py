"""The ``backupd`` command and ``python -m backupd``."""

from __future__ import annotations

import gc
from typing import NoReturn


def main() -> NoReturn:
    """``backupd.cli.main``, with the cyclic garbage collector off before the command line's
    modules are imported (see ``backupd.cli.START_UP_SECONDS``)."""
    gc.disable()
    from backupd.cli import main as command_line

    command_line()


if __name__ == "__main__":
    main()
