"""The Python language reference topics shipped with CPython: the built-in offline demo corpus.

``pydoc_data.topics.topics`` maps a topic key (``"class"``, ``"formatstrings"``...) to plain
text rendered from the reference manual. Headings keep their reST form: a line of text
underlined by a line of one repeated character (``*`` for the topic title, then ``=``, ``-``,
``~``... for deeper levels).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from heterag.core.documents import Document, Section

logger = logging.getLogger(__name__)

SOURCE = "pydoc_data.topics"
ID_PREFIX = "pydoc:"
#: A heading underline: one of these characters, repeated.
_UNDERLINE = re.compile(r"([*=\-~^])\1*")


def load_pydoc_topics() -> list[Document]:
    """One document per topic, sorted by key: id ``pydoc:<key>``, title from the topic's heading.

    Each topic is split into sections on its headings; the heading path nests by the order in
    which underline characters first appear in the topic, and the title heading itself is not
    part of the path.
    """
    from pydoc_data.topics import topics  # stdlib; imported lazily, it is ~1 MB of text

    documents = [_topic_document(key, topics[key]) for key in sorted(topics)]
    logger.info("loaded %d pydoc topics", len(documents))
    return documents


def _topic_document(key: str, text: str) -> Document:
    title, sections = split_rest_sections(text)
    return Document.create(
        sections=sections,
        title=title or _readable_key(key),
        id=ID_PREFIX + key,
        metadata={"source": SOURCE, "topic": key},
        source=f"{SOURCE}[{key!r}]",
    )


def _readable_key(key: str) -> str:
    """``"typesseq-mutable"`` -> ``"Typesseq mutable"``: a fallback when a topic has no title heading."""
    return key.replace("-", " ").replace("_", " ").capitalize()


@dataclass
class _Sections:
    """Collects section text under the current heading path."""

    title: str = ""
    levels: list[str] = field(default_factory=list)  # underline chars in order of first appearance
    stack: list[tuple[int, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def flush(self) -> None:
        text = "\n".join(self.lines).strip()
        if text:
            self.sections.append(Section(text=text, heading=tuple(h for _, h in self.stack)))
        self.lines = []

    def heading(self, text: str, char: str) -> None:
        self.flush()
        if char not in self.levels:
            self.levels.append(char)
        level = self.levels.index(char)
        if level == 0 and not self.title and not self.sections:
            self.title = text  # the topic title: kept out of heading paths
            return
        self.stack = [(lvl, h) for lvl, h in self.stack if lvl < level] + [(level, text)]


def split_rest_sections(text: str) -> tuple[str, list[Section]]:
    """Split reST-style plain text into ``(title, sections)``.

    A heading is a non-blank, unindented line followed by an underline (one repeated
    character of ``*=-~^``) at least as long. The first heading of the first underline
    style, if it starts the text, is the title.
    """
    lines = text.splitlines()
    out = _Sections()
    i = 0
    while i < len(lines):
        if _is_heading(lines, i):
            out.heading(lines[i].strip(), lines[i + 1].strip()[0])
            i += 2
            continue
        out.lines.append(lines[i])
        i += 1
    out.flush()
    return out.title, out.sections


def _is_heading(lines: list[str], i: int) -> bool:
    """True if ``lines[i]`` is heading text and ``lines[i + 1]`` its underline."""
    if i + 1 >= len(lines):
        return False
    text, underline = lines[i].rstrip(), lines[i + 1].rstrip()
    return (
        bool(text.strip())
        and not text[0].isspace()
        and not _UNDERLINE.fullmatch(text)
        and _UNDERLINE.fullmatch(underline) is not None
        and len(underline) >= len(text)
    )
