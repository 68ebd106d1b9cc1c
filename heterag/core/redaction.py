"""Passwords out of what heterag shows or writes: store URLs in messages, listings and lock-holder files."""

from __future__ import annotations

import re
from collections.abc import Sequence

#: the password of a URL's user-info part (``scheme://user:PASSWORD@host``), also inside a store spec such as
#: ``milvus:http://user:PASSWORD@host:19530``
_USERINFO_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^@\s/]+@")


def redact(url: str) -> str:
    """``url`` with the password of every user-info part (``scheme://user:***@host``, also after a store kind
    such as ``milvus:``) and of a ``password=`` parameter hidden."""
    return re.sub(r"(password=)[^&\s]*", r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


def redact_command(argv: Sequence[str]) -> str:
    """A command line as text, with the password of every URL argument hidden (``--to URL`` and ``--to=URL``)."""
    words = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        words.append(f"{flag}={redact(value)}" if eq and flag.startswith("-") else redact(arg))
    return " ".join(words)


__all__ = ["redact", "redact_command"]
