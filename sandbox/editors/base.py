"""What a text editor hands back: the edited text and one :class:`Edit` per change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: The three M3Att covert-editing strategies, in their default order.
STRATEGIES: tuple[str, ...] = ("severity", "prior_swap", "risk")


@dataclass(frozen=True)
class Edit:
    """One change: the ``strategy`` that made it, the text ``before`` and ``after`` it, and ``where``
    (``"text[12:18]"``: character offsets in the original; ``"label"``; ``"qa[2].answer"``; ``"end"`` for
    an appended sentence, whose ``before`` is empty)."""

    strategy: str
    before: str
    after: str
    where: str = ""


@dataclass(frozen=True)
class EditedText:
    """A poisoned text, the ``original`` it came from and the ``edits`` that turned one into the other."""

    text: str
    original: str
    edits: tuple[Edit, ...]

    @property
    def changed(self) -> bool:
        return self.text != self.original

    @property
    def strategies(self) -> tuple[str, ...]:
        """The strategies used, in order of first use, without repeats."""
        return tuple(dict.fromkeys(e.strategy for e in self.edits))


@runtime_checkable
class TextEditor(Protocol):
    """What every editor in :data:`sandbox.editors.EDITORS` does."""

    name: str

    def edit_text(self, text: str, *, strategies: tuple[str, ...] = STRATEGIES) -> EditedText: ...


__all__ = ["STRATEGIES", "Edit", "EditedText", "TextEditor"]
