"""``python -m metainr``: the ``metainr`` command (so ``torchrun -m metainr meta-train ...`` works)."""
import sys

from ._entry import main

sys.exit(main())
