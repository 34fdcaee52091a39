"""Entry point of ``python -m lake``."""

import sys

from lake.cli import main

sys.exit(main())
