"""Support shared by the tests and the benchmarks: real processes, test lakes, an in-memory source.

Imported by ``tests/`` and ``benchmarks/``; imports neither, so there is no cycle between them.
"""
