"""``python -m pali``: the same as the ``pali`` command (handy where the script is not on PATH)."""

import sys

from .cli import main

sys.exit(main())
