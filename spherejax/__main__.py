"""`python -m spherejax ...`: the command line of `spherejax.cli`."""

import sys

from .cli import main as main


if __name__ == "__main__":
    sys.exit(main())
