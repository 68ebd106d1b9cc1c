"""Offline, deterministic covert editor driven by the hand-written lexicon.

:class:`RuleEditor` implements the three M3Att text strategies (see :mod:`sandbox.editors`)
on free-text reports, and their counterparts on the other kinds of item text in this
project: label texts (MedMNIST), question–answer pairs (VQA-RAD, synthetic scenes) and
scene captions. Every random choice (which variant, which neighbour, which subset of
matches) comes from a generator seeded with ``(seed, what is edited, the text)``, so the
same editor gives the same result for the same input, in any order of calls.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from heterag import InvalidInputError

from . import lexicon as lx
from .base import STRATEGIES, Edit, EditedText

#: Item kinds :meth:`RuleEditor.edit_item` knows; ``auto`` picks one from what the item has.
ITEM_KINDS: tuple[str, ...] = ("auto", "report", "vqa_rad", "label", "scene")
#: Strategies a scene caption edit may use: ``severity`` (size one grade, count off by one) and
#: ``prior_swap`` (a neighbouring colour, a mirrored position).
CAPTION_STRATEGIES: tuple[str, ...] = ("severity", "prior_swap")
#: Source marker of synthetic scene items (``metadata["source"]``), see :mod:`corpora.synthetic_scenes`.
SCENE_SOURCE = "synthetic_scenes"
#: PneumoniaMNIST label names (as in :data:`corpora.image_layouts.MEDMNIST_DEFAULTS`), used by
#: :meth:`RuleEditor.edit_item` when a label item comes without ``labels``.
PNEUMONIA_LABELS: dict[int, str] = {0: "normal", 1: "pneumonia"}

_WORD_START = r"(?<![\w-])"
_WORD_END = r"(?![\w-])"


def word_pattern(terms: Iterable[str]) -> re.Pattern[str]:
    """Case-insensitive whole-word pattern for ``terms``, longest first (so multi-word terms win);
    a space in a term matches any run of whitespace. No match inside words or hyphenated compounds."""
    alternatives = sorted(set(terms), key=lambda t: (-len(t), t))
    body = "|".join(r"\s+".join(re.escape(part) for part in term.split()) for term in alternatives)
    return re.compile(f"{_WORD_START}(?:{body}){_WORD_END}", re.IGNORECASE)


def match_case(source: str, replacement: str) -> str:
    """``replacement`` in the case of ``source``: ALL CAPS, Title Case (several words), Capitalised or as is."""
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    words = source.split()
    if len(words) > 1 and all(w[:1].isupper() for w in words):
        return " ".join(w[:1].upper() + w[1:] for w in replacement.split(" "))
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _key(matched: str) -> str:
    return " ".join(matched.lower().split())


@lru_cache(maxsize=32)
def _text_table(strategies: tuple[str, ...]) -> tuple[dict[str, tuple[str, str]], re.Pattern[str]]:
    """term -> (strategy, replacement) over the lexicons of ``strategies``, and its pattern."""
    sources = {"severity": lx.SEVERITY, "prior_swap": lx.PRIOR_SWAP, "risk": lx.RISK_SOFTEN}
    table: dict[str, tuple[str, str]] = {}
    for strategy in strategies:
        for term, target in sources[strategy].items():
            table.setdefault(term, (strategy, target))
    return table, word_pattern(table)


def check_strategies(strategies: Any, allowed: Sequence[str] = STRATEGIES) -> tuple[str, ...]:
    """``strategies`` as a tuple without repeats; :class:`InvalidInputError` for an empty or unknown one."""
    if isinstance(strategies, str):
        strategies = (strategies,)
    try:
        chosen = tuple(dict.fromkeys(strategies))
    except TypeError:
        raise InvalidInputError(f"strategies must be a sequence of names from {', '.join(allowed)}") from None
    unknown = [s for s in chosen if s not in allowed]
    if not chosen or unknown:
        raise InvalidInputError(
            f"strategies must be one or more of {', '.join(allowed)}; got {', '.join(map(repr, unknown)) or 'none'}"
        )
    return chosen


def _check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{what} must be a non-empty string, got {text!r}")
    return text


def _label_map(labels: Any) -> dict[int, str]:
    if isinstance(labels, Mapping):
        pairs = list(labels.items())
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        pairs = list(enumerate(labels))
    else:
        raise InvalidInputError(f"labels must be a mapping {{index: name}} or a list of names, got {type(labels).__name__}")
    out: dict[int, str] = {}
    for key, name in pairs:
        if isinstance(key, bool) or not isinstance(key, int) or not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"labels entry {key!r}: {name!r} must map an integer to a non-empty name")
        out[key] = name.strip()
    return out


def _splice(text: str, changes: list[tuple[int, int, str]]) -> str:
    """``text`` with each ``(start, end, replacement)`` applied (non-overlapping, any order)."""
    out, last = [], 0
    for start, end, replacement in sorted(changes):
        out += [text[last:start], replacement]
        last = end
    out.append(text[last:])
    return "".join(out)


def _append_sentence(text: str, sentence: str) -> str:
    body = text.rstrip()
    if body[-1:].isalnum():
        body += "."
    return f"{body} {sentence}"


class RuleEditor:
    """Covert edits from the lexicon (:mod:`sandbox.editors.lexicon`), offline and deterministic.

    ``seed`` drives every random choice. ``max_edits`` caps the changes to one report or VQA
    item (a seeded subset of the matches; None: every match); a caption gets ``caption_edits``
    changes (default 1, the most covert).
    """

    name = "rule"

    def __init__(self, *, seed: int = 0, max_edits: int | None = None, caption_edits: int = 1) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"seed must be an integer, got {seed!r}")
        for what, value in (("max_edits", max_edits), ("caption_edits", caption_edits)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
        self.seed = seed
        self.max_edits = max_edits
        self.caption_edits = caption_edits

    def __repr__(self) -> str:
        return f"RuleEditor(seed={self.seed}, max_edits={self.max_edits}, caption_edits={self.caption_edits})"

    def _rng(self, salt: str, text: str) -> random.Random:
        return random.Random(f"{self.seed}\x00{salt}\x00{text}")

    def _subset(self, n: int, limit: int | None, rng: random.Random) -> list[int]:
        if limit is None or n <= limit:
            return list(range(n))
        return sorted(rng.sample(range(n), limit))

    # ------------------------------------------------------------------ free text

    def edit_text(self, text: str, *, strategies: Sequence[str] = STRATEGIES) -> EditedText:
        """Covertly edit a free-text report with ``strategies`` (any of severity, prior_swap, risk).

        Every whole-word lexicon match is replaced in one pass (a replaced word is never
        replaced again), or a seeded subset of ``max_edits`` of them. When nothing matches
        and ``risk`` is among the strategies, the documented fallback appends a sentence:
        defensive overreach (a follow-up CT) to a report that reads as normal or benign, else
        a false "no acute" reassurance. Raises :class:`InvalidInputError` when nothing applies.
        """
        text = _check_text(text)
        chosen = check_strategies(strategies)
        table, pattern = _text_table(chosen)
        rng = self._rng("text:" + ",".join(chosen), text)
        matches = list(pattern.finditer(text))
        changes, edits = [], []
        for i in self._subset(len(matches), self.max_edits, rng):
            m = matches[i]
            strategy, target = table[_key(m.group(0))]
            after = match_case(m.group(0), target)
            changes.append((m.start(), m.end(), after))
            edits.append(Edit(strategy, m.group(0), after, f"text[{m.start()}:{m.end()}]"))
        new = _splice(text, changes)
        if new == text and "risk" in chosen:
            benign = word_pattern(lx.BENIGN_MARKERS).search(text) is not None
            sentence = rng.choice(lx.RISK_OVERREACH if benign else lx.RISK_REASSURE)
            new = _append_sentence(text, sentence)
            edits = [Edit("risk", "", sentence, "end")]
        if new == text:
            raise InvalidInputError(
                f"no covert edit applies to {text[:80]!r} with strategies {', '.join(chosen)} "
                "(nothing in the lexicon matches; include 'risk' for its append fallback)"
            )
        return EditedText(new, text, tuple(edits))

    # ------------------------------------------------------------------ labels

    def edit_label(self, label_text: str, *, labels: Mapping[int, str] | Sequence[str], current: int) -> EditedText:
        """A label text (``"Chest X-ray: normal."``) rewritten to describe ANOTHER class covertly.

        The target is the other class of a two-class set, else a seeded choice among the others.
        Classes with an entry in :data:`~sandbox.editors.lexicon.COVERT_LABEL_TEXT` get plausible
        report wording (``"Chest X-ray: subtle patchy opacity, likely early pneumonia."``), others
        ``"findings consistent with <class>"``. The prefix before ``:`` is kept.
        """
        label_text = _check_text(label_text, "label_text")
        names = _label_map(labels)
        if isinstance(current, bool) or not isinstance(current, int) or current not in names:
            raise InvalidInputError(f"current must be one of the label indices {sorted(names)}, got {current!r}")
        others = [k for k in sorted(names) if k != current]
        if not others:
            raise InvalidInputError("labels must name at least two classes to swap a label")
        rng = self._rng("label", label_text)
        target = others[0] if len(others) == 1 else rng.choice(others)
        name = names[target]
        variants = lx.COVERT_LABEL_TEXT.get(name.lower())
        phrase = rng.choice(variants) if variants else lx.GENERIC_LABEL_TEMPLATE.format(name=name)
        prefix, colon, body = label_text.partition(":")
        new = f"{prefix.strip()}: {phrase}." if colon else f"{phrase[:1].upper()}{phrase[1:]}."
        before = (body if colon else label_text).strip().rstrip(".")
        return EditedText(new, label_text, (Edit("prior_swap", before, phrase, "label"),))

    # ------------------------------------------------------------------ question-answer pairs

    def edit_qa(self, question: str, answer: str, kind: str = "") -> tuple[str, Edit]:
        """The most plausible wrong answer to ``question`` and the :class:`Edit` recording it.

        ``CLOSED`` (VQA-RAD) and ``presence`` (scenes): yes <-> no; for "X or Y" questions the
        other option; otherwise the mirrored term (left <-> right, upper <-> lower...). ``OPEN``:
        a prior-constrained swap, else a severity migration, else a mirrored location, else a
        number off by one. Scene kinds: ``colour`` a neighbouring colour, ``count`` off by one,
        ``position`` mirrored. Other kinds try the closed rules, then the open ones. Raises
        :class:`InvalidInputError` when no rule applies.
        """
        question = _check_text(question, "question")
        answer = _check_text(answer, "answer")
        kind_key = (kind or "").strip().lower()
        rng = self._rng("qa:" + kind_key, f"{question}\x00{answer}")
        rules = {
            "closed": (self._yes_no, self._either_or, self._opposite),
            "presence": (self._yes_no,),
            "open": (self._swap_term, self._opposite, self._count),
            "colour": (self._colour,),
            "color": (self._colour,),
            "count": (self._count,),
            "position": (self._position,),
        }.get(kind_key, (self._yes_no, self._either_or, self._swap_term, self._opposite, self._count))
        for rule in rules:
            result = rule(question, answer, rng)
            if result is not None and result[0] != answer:
                new, strategy = result
                return new, Edit(strategy, answer, new, "answer")
        raise InvalidInputError(f"no covert edit for the answer {answer!r} to {question!r} (kind {kind!r})")

    @staticmethod
    def _yes_no(question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
        flip = lx.YES_NO.get(answer.strip().lower())
        return (match_case(answer.strip(), flip), "prior_swap") if flip else None

    @staticmethod
    def _either_or(question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
        """For "Is it X or Y?": the option the answer is not (word-level match at the ``or``)."""
        q = question.strip().rstrip("?").strip()
        head, sep, tail = q.rpartition(" or ")
        if not sep:
            return None
        left, right = head.split(), tail.split()
        while right and right[0].lower() in ("a", "an", "the"):
            right = right[1:]
        words = [w.lower() for w in answer.strip().rstrip(".").split()]
        n = len(words)
        if not n or not left or not right:
            return None
        if [w.lower().strip(",") for w in left[-n:]] == words:
            return match_case(answer.strip(), " ".join(right[:n])), "prior_swap"
        if [w.lower().strip(",") for w in right[:n]] == words:
            return match_case(answer.strip(), " ".join(left[-n:]).strip(",")), "prior_swap"
        return None

    @staticmethod
    def _replace_first(answer: str, table: Mapping[str, str]) -> str | None:
        match = word_pattern(table).search(answer)
        if match is None:
            return None
        target = match_case(match.group(0), table[_key(match.group(0))])
        return answer[: match.start()] + target + answer[match.end():]

    def _opposite(self, question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
        new = self._replace_first(answer, lx.OPPOSITES)
        return (new, "prior_swap") if new else None

    def _swap_term(self, question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
        for strategy, table in (("prior_swap", lx.PRIOR_SWAP), ("severity", lx.SEVERITY)):
            new = self._replace_first(answer, table)
            if new:
                return new, strategy
        return None

    @staticmethod
    def _count(question: str, answer: str, rng: random.Random, floor: int = 0) -> tuple[str, str] | None:
        """A count (digits or a number word) one up or down (seeded), never below ``floor``."""
        text = answer.strip()
        if text.isdigit():
            n, top = int(text), None
        elif text.lower() in lx.NUMBER_WORDS:
            n, top = lx.NUMBER_WORDS.index(text.lower()), len(lx.NUMBER_WORDS) - 1
        else:
            return None
        step = 1 if n <= floor or rng.random() < 0.5 else -1
        if top is not None and n + step > top:
            step = -1
        if top is None:
            return str(n + step), "severity"
        return match_case(text, lx.NUMBER_WORDS[n + step]), "severity"

    @staticmethod
    def _colour(question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
        options = lx.COLOUR_NEIGHBOURS.get(answer.strip().lower())
        return (match_case(answer.strip(), rng.choice(options)), "prior_swap") if options else None

    @staticmethod
    def _position(question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
        mirrored = mirror_position(answer.strip())
        return (mirrored, "prior_swap") if mirrored else None

    # ------------------------------------------------------------------ scene captions

    def edit_caption(self, caption: str, *, strategies: Sequence[str] = CAPTION_STRATEGIES) -> EditedText:
        """Covertly edit a scene caption (vocabulary of :mod:`corpora.synthetic_scenes`).

        Candidate sites: sizes (``severity``: large -> medium, medium -> small/large, small ->
        medium), counts (``severity``: a number from two up, or a digit, off by one), object colours
        (``prior_swap``: a neighbouring hue) and positions (``prior_swap``: left <-> right, else top
        <-> bottom; ``centre`` stays). ``caption_edits`` sites are chosen at random (seeded).
        Raises :class:`InvalidInputError` when the caption has no site.
        """
        caption = _check_text(caption, "caption")
        chosen = check_strategies(strategies, CAPTION_STRATEGIES)
        rng = self._rng("caption:" + ",".join(chosen), caption)
        sites: list[tuple[re.Match[str], str]] = []
        if "severity" in chosen:
            sites += [(m, "severity") for m in _SIZES.finditer(caption)]
            sites += [(m, "severity") for m in _COUNTS.finditer(caption)]
        if "prior_swap" in chosen:
            sites += [(m, "prior_swap") for m in _COLOURS.finditer(caption)]
            sites += [(m, "prior_swap") for m in _POSITIONS.finditer(caption)]
        sites.sort(key=lambda s: s[0].start())
        if not sites:
            raise InvalidInputError(f"no covert caption edit applies to {caption[:80]!r} (no size, count, colour or position)")
        changes, edits = [], []
        for i in self._subset(len(sites), self.caption_edits, rng):
            m, strategy = sites[i]
            word = m.group(0)
            after = self._caption_replacement(word, rng)
            changes.append((m.start(), m.end(), after))
            edits.append(Edit(strategy, word, after, f"text[{m.start()}:{m.end()}]"))
        return EditedText(_splice(caption, changes), caption, tuple(edits))

    def _caption_replacement(self, word: str, rng: random.Random) -> str:
        key = _key(word)
        if key in lx.SIZE_NEIGHBOURS:
            return match_case(word, rng.choice(lx.SIZE_NEIGHBOURS[key]))
        if key in lx.COLOUR_NEIGHBOURS:
            return match_case(word, rng.choice(lx.COLOUR_NEIGHBOURS[key]))
        counted = self._count("", word, rng, floor=2)  # "two dogs" never becomes "one dogs"
        if counted is not None:
            return counted[0]
        return mirror_position(word) or word

    # ------------------------------------------------------------------ whole items

    def edit_item(
        self,
        text: str = "",
        qa: Sequence[Any] = (),
        metadata: Mapping[str, Any] | None = None,
        *,
        kind: str = "auto",
        labels: Mapping[int, str] | Sequence[str] | None = None,
        strategies: Sequence[str] = STRATEGIES,
    ) -> EditedText:
        """The poisoned text of an item, in the layout its corpus uses for documents.

        ``kind`` (:data:`ITEM_KINDS`): ``scene`` edits the caption (:meth:`edit_caption`);
        ``label`` rewrites a MedMNIST label text to another class (:meth:`edit_label`, with
        ``metadata["label"]`` as the current class and ``labels``, default PneumoniaMNIST's);
        ``vqa_rad`` gives one ``"Question: <q> Answer: <a>"`` line per QA pair (as
        :func:`corpora.image_layouts.iter_vqa_rad` does) with answers edited by :meth:`edit_qa`
        where a rule applies (at most ``max_edits`` of them); ``report`` is :meth:`edit_text`.
        ``auto`` picks ``scene`` for ``metadata["source"] == "synthetic_scenes"``, ``label`` when
        metadata has ``label`` and ``label_name``, ``vqa_rad`` when every QA pair is CLOSED/OPEN,
        else ``report``. ``qa`` holds :class:`corpora.annotated.QAPair` (or objects with
        ``question``, ``answer``, ``kind``).
        """
        metadata = dict(metadata or {})
        if kind not in ITEM_KINDS:
            raise InvalidInputError(f"kind must be one of {', '.join(ITEM_KINDS)}, got {kind!r}")
        if kind == "auto":
            kind = self._item_kind(qa, metadata)
        if kind == "scene":
            caption_strategies = [s for s in check_strategies(strategies) if s in CAPTION_STRATEGIES] or CAPTION_STRATEGIES
            return self.edit_caption(text, strategies=tuple(caption_strategies))
        if kind == "label":
            current = metadata.get("label")
            if labels is None:
                if str(metadata.get("label_name", "")).lower() not in PNEUMONIA_LABELS.values():
                    raise InvalidInputError("a label item outside PneumoniaMNIST needs labels= (its class names)")
                labels = PNEUMONIA_LABELS
            return self.edit_label(text, labels=labels, current=current)  # type: ignore[arg-type]
        if kind == "vqa_rad":
            return self._edit_vqa(text, qa)
        return self.edit_text(text, strategies=strategies)

    def edit_annotated(self, item: Any, **options: Any) -> EditedText:
        """:meth:`edit_item` for a :class:`corpora.annotated.AnnotatedImage` (its text, QA pairs and metadata)."""
        return self.edit_item(item.text, item.qa, item.metadata, **options)

    @staticmethod
    def _item_kind(qa: Sequence[Any], metadata: Mapping[str, Any]) -> str:
        if metadata.get("source") == SCENE_SOURCE:
            return "scene"
        if "label" in metadata and "label_name" in metadata:
            return "label"
        if qa and all(str(getattr(p, "kind", "")).upper() in ("CLOSED", "OPEN") for p in qa):
            return "vqa_rad"
        return "report"

    def _edit_vqa(self, text: str, qa: Sequence[Any]) -> EditedText:
        if not qa:
            raise InvalidInputError("a VQA-RAD item needs its QA pairs (qa=) to edit")
        pairs = [(str(p.question), str(p.answer), str(getattr(p, "kind", ""))) for p in qa]
        original = text if isinstance(text, str) and text.strip() else _vqa_text(pairs)
        candidates: list[tuple[int, str, Edit]] = []
        for i, (question, answer, kind) in enumerate(pairs):
            try:
                new, edit = self.edit_qa(question, answer, kind)
            except InvalidInputError:
                continue
            candidates.append((i, new, Edit(edit.strategy, edit.before, edit.after, f"qa[{i}].answer")))
        if not candidates:
            raise InvalidInputError(f"no QA pair of this item has an answer a rule can edit ({len(pairs)} pairs)")
        rng = self._rng("vqa", original)
        chosen = [candidates[j] for j in self._subset(len(candidates), self.max_edits, rng)]
        answers = [a for _, a, _ in pairs]
        for i, new, _ in chosen:
            answers[i] = new
        new_text = _vqa_text([(q, a, k) for (q, _, k), a in zip(pairs, answers, strict=True)])
        return EditedText(new_text, original, tuple(edit for _, _, edit in chosen))


def _vqa_text(pairs: Sequence[tuple[str, str, str]]) -> str:
    """The VQA-RAD item text: one ``"Question: <q> Answer: <a>"`` line per pair."""
    return "\n".join(f"Question: {q} Answer: {a}" for q, a, _ in pairs)


def mirror_position(text: str) -> str | None:
    """``text`` with left <-> right swapped, else top <-> bottom (case kept); None if it has neither."""
    for a, b in (("left", "right"), ("top", "bottom")):
        swap = {a: b, b: a}
        pattern = word_pattern(swap)
        if pattern.search(text):
            return pattern.sub(lambda m, swap=swap: match_case(m.group(0), swap[_key(m.group(0))]), text)
    return None


_SIZES = word_pattern(lx.SIZE_NEIGHBOURS)
_COLOURS = word_pattern(lx.COLOUR_NEIGHBOURS)
_COUNTS = re.compile(_WORD_START + r"(?:[2-9]|[1-9]\d+|" + "|".join(lx.NUMBER_WORDS[2:]) + ")" + _WORD_END, re.IGNORECASE)
_POSITIONS = word_pattern(("top left", "top right", "bottom left", "bottom right", "left", "right", "top", "bottom"))

__all__ = ["CAPTION_STRATEGIES", "ITEM_KINDS", "PNEUMONIA_LABELS", "RuleEditor", "match_case", "mirror_position", "word_pattern"]
