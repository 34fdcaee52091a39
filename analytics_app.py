"""The badge analytics dashboard: ``streamlit run analytics_app.py`` (settings from the environment or .env)."""

import os

from utils.memory import with_preferred_pool

# Before anything imports pyarrow, which reads its memory pool setting once, at import (utils/memory.py): the
# dashboard reads many small aggregates files, and jemalloc gives freed pages back where mimalloc keeps them.
os.environ.update(with_preferred_pool(os.environ))

from analytics.dashboard import main

main()
