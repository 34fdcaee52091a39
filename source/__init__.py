"""The client side of the source: reading the generator service by cursor, with retries and validation.

``client`` (one long-lived httpx client, retry policy from settings), ``validation`` (a response body
into valid and refused records), ``json_decode`` (the column-wise reader of canonical JSON bodies).
Knows nothing of the lake: what it returns are Arrow tables.
"""
