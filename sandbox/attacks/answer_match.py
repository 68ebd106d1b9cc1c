"""Rule-based evaluator: does an answer name the object?

An answer *names* an object label when every word of the label (after normalisation) occurs in one
clause of the answer, each word possibly replaced by a synonym. Normalisation: lower case, words
of letters and digits only, plurals reduced to the singular (irregular forms from
:data:`IRREGULAR_PLURALS`, then ``-ies`` → ``-y``, ``-ches/-shes/-xes/-sses`` → drop ``es``, a final
``s`` otherwise), and words in :data:`IGNORED` (articles, "solid") dropped. Clauses are split at
``, ; . ! ? :`` and at "and" / "or" / "but", so "a red square and a blue circle" does not name a "red circle".

Negation: in each clause, a negation word (:data:`NEGATIONS`: "not", "no", "never", "without", "n't"...)
negates the rest of that clause, whose words then name nothing: "not a cat" and "there is no cat" do not
name "cat"; "the cat is not visible" does (the cat comes before the negation); "not a dog but a cat"
names "cat" (the clause ends at "but"). The scope is the rest of the clause, a rule, not a parse: "no
mass is seen in the lung" names neither "mass" nor "lung".

Synonyms: :data:`SYNONYMS` (shapes, colours) and :data:`COCO_SYNONYMS` (COCO category names and
common alternatives: "person" = man, woman, people...). A scenario can add its own
(``mrm.synonyms``: label word -> list of words or phrases).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_WORD = re.compile(r"[a-z0-9]+")
_CLAUSE = re.compile(r"[,;.!?:\n]+|\band\b|\bor\b|\bbut\b")
_CONTRACTION = re.compile(r"n['\u2019]t\b")

#: Words that negate the rest of their clause (after "n't" is read as "not").
NEGATIONS = frozenset({"not", "no", "never", "without", "nor", "neither", "none", "nothing", "cannot", "nobody",
                       "nowhere"})

IRREGULAR_PLURALS = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
                     "teeth": "tooth", "feet": "foot", "geese": "goose", "knives": "knife", "leaves": "leaf",
                     "skis": "ski", "buses": "bus", "glasses": "glass", "crosses": "cross", "boxes": "box",
                     "dishes": "dish", "sheep": "sheep", "fish": "fish", "scissors": "scissors"}
IGNORED = frozenset({"a", "an", "the", "solid", "some", "of"})

#: Shape and colour synonyms (synthetic scenes).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "disk", "round", "ring", "dot"), "square": ("box", "block", "rectangle"),
    "triangle": ("triangular",), "star": ("pentagram",), "hexagon": ("hexagonal",), "cross": ("plus", "x"),
    "diamond": ("rhombus", "lozenge"), "grey": ("gray",), "purple": ("violet",),
}
#: COCO category synonyms (category name words -> alternatives).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "people", "boy", "girl", "child", "kid", "player", "human", "guy", "lady"),
    "bicycle": ("bike", "cycle"), "motorcycle": ("motorbike", "moped", "scooter"), "airplane": ("plane", "aeroplane", "jet", "aircraft"),
    "car": ("automobile", "vehicle", "sedan", "taxi"), "bus": ("coach",), "truck": ("lorry", "pickup"), "boat": ("ship", "sailboat", "canoe"),
    "tv": ("television", "monitor", "screen"), "couch": ("sofa",), "laptop": ("computer", "notebook"),
    "cup": ("mug",), "handbag": ("purse", "bag"), "donut": ("doughnut",), "sheep": ("lamb",),
    "cow": ("cattle", "bull", "calf"), "dog": ("puppy",), "cat": ("kitten", "kitty"),
    "bird": ("pigeon", "seagull", "gull", "duck"),
    # multi-word categories: the whole label may be named by a shorter phrase
    "dining table": ("table",), "potted plant": ("plant", "houseplant"), "cell phone": ("phone", "cellphone", "smartphone"),
    "teddy bear": ("teddy", "bear"), "sports ball": ("ball",), "wine glass": ("glass",), "hair drier": ("hair dryer", "dryer"),
    "fire hydrant": ("hydrant",), "traffic light": ("traffic signal", "stoplight"), "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"), "tennis racket": ("racket", "racquet"), "hot dog": ("hotdog",),
    "stop sign": ("sign",), "parking meter": ("meter",),
}


def singular(word: str) -> str:
    """The singular of an English word, by :data:`IRREGULAR_PLURALS` and suffix rules."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def norm_words(text: str) -> list[str]:
    """Normalised words of ``text`` (lower case, singular, :data:`IGNORED` dropped)."""
    return [singular(w) for w in _WORD.findall(text.lower()) if w not in IGNORED]


def affirmed(clause: str) -> set[str]:
    """Normalised words of one clause before its first negation word (:data:`NEGATIONS`)."""
    words = _WORD.findall(clause.lower())
    cut = next((i for i, w in enumerate(words) if w in NEGATIONS), len(words))
    return {singular(w) for w in words[:cut] if w not in IGNORED}


class AnswerMatcher:
    """Decide whether an answer names a label (see the module docstring)."""

    def __init__(self, synonyms: Mapping[str, Sequence[str]] | None = None):
        words: dict[str, set[str]] = {}
        phrases: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        for src in (SYNONYMS, COCO_SYNONYMS, synonyms or {}):
            for key, alts in src.items():
                k = tuple(norm_words(key))
                if len(k) == 1:
                    words.setdefault(k[0], set()).update(w for a in alts for w in norm_words(a)[:1] if len(norm_words(a)) == 1)
                if k:
                    phrases.setdefault(k, set()).update(tuple(norm_words(a)) for a in alts if norm_words(a))
        for key, alts in list(words.items()):  # synonyms work both ways ("gray" names "grey" and back)
            for a in alts:
                words.setdefault(a, set()).add(key)
        self.synonyms, self.phrases = words, phrases

    def _has(self, need: Sequence[str], words: set[str]) -> bool:
        return all(w in words or self.synonyms.get(w, set()) & words for w in need)

    def names(self, answer: str, label: str) -> bool:
        """Whether ``answer`` names ``label``; an empty label or answer never does."""
        need = tuple(norm_words(label))
        if not need or not isinstance(answer, str) or not answer.strip():
            return False
        options = [need, *sorted(self.phrases.get(need, set()))] if len(need) > 1 else [need]
        for clause in _CLAUSE.split(_CONTRACTION.sub(" not", answer.lower())):
            words = affirmed(clause)
            if words and any(self._has(opt, words) for opt in options):
                return True
        return False
