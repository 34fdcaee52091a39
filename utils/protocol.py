"""The HTTP contract's constants and content negotiation, shared by the service and the client.

Kept free of FastAPI and numpy so the client imports it cheaply.
"""

from __future__ import annotations

from typing import Final

MAX_BATCH: Final = 100_000
DEFAULT_BATCH: Final = 100
NEXT_CURSOR_HEADER: Final = "X-Next-Cursor"
JSON_MEDIA_TYPE: Final = "application/json"
ARROW_MEDIA_TYPE: Final = "application/vnd.apache.arrow.stream"


def prefers_arrow(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for the Arrow stream over JSON (q-values honoured; ties go to Arrow)."""
    if not accept:
        return False
    arrow_q = json_q = 0.0
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media == ARROW_MEDIA_TYPE:
            arrow_q = max(arrow_q, q)
        elif media in (JSON_MEDIA_TYPE, "application/*", "*/*"):
            json_q = max(json_q, q)
    return arrow_q > 0 and arrow_q >= json_q
