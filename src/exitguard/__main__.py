"""``python -m exitguard``: the same as the ``exitguard`` command.

Python requires this file at the package's top level, so it is the one module there that is
not core: it only starts the CLI (:mod:`exitguard.cli`), and does so only when run.
"""

import sys

if __name__ == "__main__":
    from exitguard.cli import main

    sys.exit(main())
