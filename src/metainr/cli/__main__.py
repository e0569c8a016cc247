"""``python -m metainr.cli``: the ``metainr`` command."""
import sys

from . import main

sys.exit(main())
