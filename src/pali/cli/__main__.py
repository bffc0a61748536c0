"""``python -m pali.cli``: the same as the ``pali`` command."""

import sys

from . import main

sys.exit(main())
