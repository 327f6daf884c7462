"""``python -m exitguard``: the same as the ``exitguard`` command."""

import sys

from .cli import main

sys.exit(main())
