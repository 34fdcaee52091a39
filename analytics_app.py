"""The badge analytics dashboard: ``streamlit run analytics_app.py`` (settings from the environment or .env)."""

from analytics.dashboard import main

main()
