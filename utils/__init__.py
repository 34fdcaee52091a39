"""Shared helpers: typed settings, the exception tree, the record schema, timing decorators."""
