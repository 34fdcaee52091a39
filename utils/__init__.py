"""The floor every other package stands on: typed settings, the exception tree, the record schema,
the HTTP contract's constants, the retry policy and the atomic write. Imports nothing of the platform's.
"""
