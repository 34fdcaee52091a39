"""The Parquet lake: storage, layout, the live set, the buffered writer, compaction, quarantine, audit.

Knows nothing of HTTP or processes: it speaks in Arrow tables, keys and settings.
"""
