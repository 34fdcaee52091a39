"""The platform's processes: entry points, exit statuses, signals, supervision, the launcher and ``clean``.

The top layer: everything here may use the layers below (ingestion, analytics, the lake, the source
client, records and settings); nothing below imports from here. ``pipeline.py``,
``compaction_monitoring.py``, ``analytics_app.py`` and ``api/main.py`` are thin scripts over this package.
"""
