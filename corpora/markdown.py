"""Split Markdown text into sections on ATX headings (``#`` ... ``######``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from heterag.core.documents import Section

#: An ATX heading: up to 3 spaces, 1-6 '#', then a space or end of line; an optional
#: closing run of '#' (preceded by a space) is not part of the heading text.
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
#: The opening or closing line of a fenced code block.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass
class _Builder:
    """Accumulates section lines while walking the heading structure."""

    title: str | None = None
    stack: list[tuple[int, str]] = field(default_factory=list)  # (level, heading text)
    lines: list[str] = field(default_factory=list)
    heading: tuple[str, ...] = ()
    sections: list[Section] = field(default_factory=list)

    def flush(self) -> None:
        text = "\n".join(self.lines).strip()
        if text:
            self.sections.append(Section(text=text, heading=self.heading))
        self.lines = []

    def open_heading(self, level: int, text: str) -> None:
        self.flush()
        if level == 1 and self.title is None and text:
            self.title = text  # the document title: not repeated in heading paths
            self.stack = []
        else:
            self.stack = [(lvl, h) for lvl, h in self.stack if lvl < level] + [(level, text)]
        self.heading = tuple(h for _, h in self.stack if h)


def parse_markdown(text: str, default_title: str) -> tuple[str, list[Section]]:
    """Return ``(title, sections)`` for Markdown ``text``.

    The title is the first level-1 heading, else ``default_title``; that heading is not part
    of any section's heading path. Other headings nest by level, so ``## A`` then ``### B``
    gives ``("A", "B")``. Text before the first heading has an empty heading path. Lines
    inside fenced code blocks are never headings. Setext (underlined) headings are kept as
    plain text.
    """
    builder = _Builder()
    fence: str | None = None
    for line in text.splitlines():
        fence_match = _FENCE.match(line)
        if fence is not None:
            if _closes_fence(line, fence):
                fence = None
            builder.lines.append(line)
            continue
        if fence_match:
            fence = fence_match.group(1)
            builder.lines.append(line)
            continue
        heading = _ATX_HEADING.match(line)
        if heading:
            builder.open_heading(len(heading.group(1)), (heading.group(2) or "").strip())
        else:
            builder.lines.append(line)
    builder.flush()
    return builder.title or default_title, builder.sections


def _closes_fence(line: str, fence: str) -> bool:
    """True if ``line`` closes a code block opened by ``fence`` (same char, at least as long, nothing after)."""
    marker = line.strip()
    return len(marker) >= len(fence) and set(marker) == {fence[0]}
