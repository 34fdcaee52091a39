"""Entry point of ``python -m lake``."""

import sys

from processes.lake_cli import main

sys.exit(main())
