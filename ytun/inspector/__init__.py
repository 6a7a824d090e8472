"""The request inspector: what went through a tunnel client, on a local web page."""

from .exchange import Exchange, Message
from .inspector import Inspector
from .log import DEFAULT_BODY_LIMIT, DEFAULT_MAX_ENTRIES, ExchangeLog

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "DEFAULT_MAX_ENTRIES",
    "Exchange",
    "ExchangeLog",
    "Inspector",
    "Message",
]
