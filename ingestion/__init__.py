"""Ingestion: the fetcher that reads the source by cursor into the lake's buffered writer, resume, progress.

Above the lake and the source client, below the processes: knows nothing of signals, locks or children.
"""
