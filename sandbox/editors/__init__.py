"""Covert text editing for the M3Att knowledge-poisoning attack.

M3Att poisons a multimodal (image–text) knowledge base with pairs whose image is genuine
and whose text carries covert, clinically plausible misinformation, not blatant errors
that a generator would notice and correct. It edits the text with three strategies
(paraphrased from the paper's description; the wording here is ours):

``severity``
    Fine-grained severity migration: a severity, extent or time-course descriptor moves a
    grade toward the milder/older end (massive -> moderate, severe -> mild, large -> small,
    complete -> partial, acute -> chronic).
``prior_swap``
    Prior-constrained swap: a finding becomes one that overlaps it visually on the same
    modality and is about as common (consolidation <-> atelectasis, pleural effusion <->
    pleural thickening, pneumonia -> atelectasis, haemorrhage <-> calcification).
``risk``
    Risk-association corruption: urgency is dropped (urgent, emergent, immediate, critical
    become routine wording), or a "no acute" reassurance or defensive overreach ("Recommend
    follow-up CT in 3 months.") is added where the findings do not call for it.

Editors (:data:`EDITORS`, :func:`make_editor`):

* ``rule`` (:class:`RuleEditor`): offline, deterministic given ``seed``, driven by the
  hand-written lexicon in :mod:`sandbox.editors.lexicon` (general radiology terminology,
  written for this project; see that module for its sources and matching rules). It also
  edits label texts, QA answers, scene captions and whole items in their corpus layout.
* ``llm`` (:class:`LLMEditor`): an LLM behind an OpenAI-compatible endpoint, through the
  ``openai`` generator; validates the model's JSON reply.

Every edit is recorded as an :class:`Edit` (strategy, before, after, where) in the
:class:`EditedText` an editor returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heterag import UnknownNameError

from .base import STRATEGIES, Edit, EditedText, TextEditor
from .llm import LLMEditor
from .rule import CAPTION_STRATEGIES, ITEM_KINDS, RuleEditor

#: Editor factories by name; each takes the editor's keyword options.
EDITORS: dict[str, Callable[..., TextEditor]] = {
    RuleEditor.name: RuleEditor,
    LLMEditor.name: LLMEditor,
}


def make_editor(name: str, **options: Any) -> TextEditor:
    """Build the editor registered as ``name`` with ``options``.

    Raises :class:`~heterag.core.errors.UnknownNameError` (listing the choices) for a name not in :data:`EDITORS`.
    """
    try:
        factory = EDITORS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("editor", str(name), EDITORS) from None
    return factory(**options)


__all__ = [
    "CAPTION_STRATEGIES",
    "EDITORS",
    "ITEM_KINDS",
    "STRATEGIES",
    "Edit",
    "EditedText",
    "LLMEditor",
    "RuleEditor",
    "TextEditor",
    "make_editor",
]
