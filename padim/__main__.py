"""``python -m padim ...`` (and so ``torchrun -m padim ...``): the same as the ``padim`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
