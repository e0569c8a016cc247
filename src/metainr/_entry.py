"""The ``metainr`` console script. It imports nothing heavy before it has made SIGTERM behave as
SIGINT, so a signal at any moment (even while torch is imported) ends in one line and exit 130."""
from __future__ import annotations

import signal
import sys


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Entry point: ``metainr ...`` (see :mod:`metainr.cli`)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("metainr: interrupted", file=sys.stderr)
        return 130
    return cli_main()
