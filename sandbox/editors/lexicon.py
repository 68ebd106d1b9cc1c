"""Hand-written lexicon for covert edits of radiology text, scene captions and QA answers.

Sources: general radiology reporting terminology (severity grades, temporal descriptors,
common radiographic/CT mimics, urgency and recommendation language) as it appears in
ordinary chest, abdominal and neuro reports, plus the closed vocabulary of
:mod:`corpora.synthetic_scenes`. It was written by hand for this project; it is not
copied from a published ontology (no RadLex/SNOMED identifiers) and is not a clinical
reference. Everything here is plain data: tuples and dicts of lower-case terms.

Matching (done by :mod:`sandbox.editors.rule`) is on whole words: a term matches only when
it is not preceded or followed by a letter, digit, underscore or hyphen, so ``acute`` does
not match inside ``acuteness``, ``subacute`` or ``non-acute``. Multi-word terms win over
their parts (longest match first). The replacement takes the case of the matched text
(``SEVERE`` -> ``MILD``, ``Severe`` -> ``Mild``).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- severity
#: Fine-grained severity migration (M3Att): move a descriptor one or two grades toward the
#: milder/older/smaller end, so the report stays fluent and plausible but under-calls the
#: finding. Temporal descriptors (acute -> chronic, new -> stable) migrate the same way.
SEVERITY: dict[str, str] = {
    # grade
    "moderate-to-severe": "mild-to-moderate",
    "severe": "mild",
    "marked": "mild",
    "massive": "moderate",
    "moderate": "mild",
    "significant": "minimal",
    "extensive": "limited",
    "large": "small",
    "huge": "moderate",
    "tension": "small",  # "tension pneumothorax" -> "small pneumothorax"
    # extent
    "complete": "partial",
    "completely": "partially",
    "diffuse": "focal",
    "widespread": "scattered",
    "multifocal": "unifocal",
    "total": "partial",
    # time course
    "acute": "chronic",
    "acutely": "chronically",
    "new": "stable",
    "worsening": "stable",
    "worsened": "unchanged",
    "progressive": "stable",
    "increased": "unchanged",
    "increasing": "stable",
    "enlarging": "stable",
    "rapidly": "slowly",
}

# --------------------------------------------------------------------------- prior-constrained swaps
#: Prior-constrained swap (M3Att): replace a finding with one that overlaps it visually on the
#: same modality and is about as common, so the image does not contradict the text at a glance.
#: Directed: most pairs go both ways; where a term has two mimics the comment says which wins.
PRIOR_SWAP: dict[str, str] = {
    # chest radiograph: airspace opacity vs volume loss
    "consolidation": "atelectasis",
    "atelectasis": "consolidation",
    "pneumonia": "atelectasis",  # atelectasis maps back to consolidation (above)
    "airspace disease": "subsegmental atelectasis",
    "subsegmental atelectasis": "airspace disease",
    # pleura: fluid vs thickening; both blunt the costophrenic angle
    "pleural effusion": "pleural thickening",
    "pleural thickening": "pleural effusion",
    "effusion": "thickening",
    "thickening": "effusion",
    # cardiac silhouette: both enlarge it on a frontal film
    "cardiomegaly": "pericardial effusion",
    "pericardial effusion": "cardiomegaly",
    # interstitium
    "pulmonary edema": "atypical infection",
    "atypical infection": "pulmonary edema",
    "edema": "infiltrate",
    "oedema": "infiltrate",
    "infiltrate": "edema",
    # lucency: pleural air vs a large bulla
    "pneumothorax": "bulla",
    "bulla": "pneumothorax",
    # nodules
    "nodule": "granuloma",
    "granuloma": "nodule",
    "emphysema": "hyperinflation",
    "hyperinflation": "emphysema",
    # CT hyperdensity: blood vs calcium
    "hemorrhage": "calcification",
    "haemorrhage": "calcification",
    "hematoma": "calcification",
    "calcification": "hemorrhage",
    # CT hypodensity (brain): infarct vs gliosis; fluid collections
    "infarct": "gliosis",
    "infarction": "gliosis",
    "gliosis": "infarct",
    "abscess": "cyst",
    "cyst": "abscess",
    # abdomen: right-lower-quadrant and colonic mimics
    "appendicitis": "mesenteric adenitis",
    "mesenteric adenitis": "appendicitis",
    "diverticulitis": "colitis",
    "colitis": "diverticulitis",
    # bone: lucent line vs normal channel
    "fracture": "vascular channel",
}

#: Mirror-image opposites: the most plausible wrong answer to a closed question about side,
#: level, direction or density, and the location swap used for open answers (prior_swap).
OPPOSITES: dict[str, str] = {
    "left": "right", "right": "left",
    "upper": "lower", "lower": "upper",
    "superior": "inferior", "inferior": "superior",
    "anterior": "posterior", "posterior": "anterior",
    "medial": "lateral", "lateral": "medial",
    "proximal": "distal", "distal": "proximal",
    "above": "below", "below": "above",
    "top": "bottom", "bottom": "top",
    "increased": "decreased", "decreased": "increased",
    "hyperdense": "hypodense", "hypodense": "hyperdense",
    "hyperintense": "hypointense", "hypointense": "hyperintense",
    "bilateral": "unilateral", "unilateral": "bilateral",
    "male": "female", "female": "male",
    "true": "false", "false": "true",
    # acquisition: plane, projection and MR weighting (answers to "which plane/view/sequence?")
    "axial": "coronal", "coronal": "axial", "sagittal": "coronal",
    "pa": "ap", "ap": "pa",
    "t1": "t2", "t2": "t1",
}

#: Closed yes/no answers and their flip.
YES_NO: dict[str, str] = {"yes": "no", "no": "yes"}

# --------------------------------------------------------------------------- risk association
#: Risk-association corruption (M3Att), part 1: drop the urgency of a finding by replacing the
#: urgency word with a routine one (kept grammatical, so the sentence still reads naturally).
RISK_SOFTEN: dict[str, str] = {
    "urgent": "routine",
    "urgently": "routinely",
    "emergent": "elective",
    "emergently": "electively",
    "immediate": "outpatient",
    "immediately": "at the next visit",
    "critical": "incidental",
    "stat": "routine",
    "life-threatening": "clinically insignificant",
    "concerning for": "possibly reflecting",
    "suspicious for": "may represent",
    "worrisome for": "could reflect",
    "cannot be excluded": "is unlikely",
    "cannot be ruled out": "is unlikely",
}

#: Part 2, used when no urgency word is present (the documented fallback of ``risk``):
#: a reassuring "no acute" sentence appended to a report that describes a finding...
RISK_REASSURE: tuple[str, ...] = (
    "No acute abnormality.",
    "No acute process identified.",
)
#: ...or defensive overreach appended to a report that reads as normal or benign.
RISK_OVERREACH: tuple[str, ...] = (
    "Recommend follow-up CT in 3 months.",
    "Recommend short-interval follow-up imaging to exclude an underlying lesion.",
)
#: Words that make a report read as normal/benign (so overreach, not reassurance, is appended).
BENIGN_MARKERS: tuple[str, ...] = (
    "normal", "unremarkable", "no acute", "clear", "negative", "benign", "stable", "within normal limits",
)

# --------------------------------------------------------------------------- label texts
#: Covert descriptions of a class, for poisoning a label text ("Chest X-ray: normal.") with the
#: OTHER class: plausible report wording rather than the bare label. Keyed by lower-case class name.
#: The pneumonia wordings name "opacity"/"pneumonia"; the normal ones say "clear" and never
#: mention pneumonia, so a keyword reader takes each for its class.
COVERT_LABEL_TEXT: dict[str, tuple[str, ...]] = {
    "pneumonia": (
        "subtle patchy opacity, likely early pneumonia",
        "faint ill-defined opacity at the right base, suspicious for early pneumonia",
        "patchy airspace opacity, possibly early pneumonia",
    ),
    "normal": (
        "no focal consolidation; lungs clear",
        "lungs clear without focal consolidation or effusion",
        "clear lungs; no focal airspace disease",
    ),
}
#: Generic wording for a class without a covert entry: ``"findings consistent with <class>"``.
GENERIC_LABEL_TEMPLATE = "findings consistent with {name}"

# --------------------------------------------------------------------------- synthetic scenes
#: Neighbouring colours (adjacent hues; white/black to their nearest named colour) for covert
#: colour swaps in scene captions and colour answers (prior_swap: visually close).
COLOUR_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "red": ("orange", "purple"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("yellow", "blue"),
    "blue": ("purple", "green"),
    "purple": ("blue", "red"),
    "white": ("yellow",),
    "black": ("blue",),
}
#: Neighbouring sizes (severity: one grade).
SIZE_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "large": ("medium",),
    "medium": ("small", "large"),
    "small": ("medium",),
}
#: Number words a count may be off by one in (from two: "one dog" -> "two dog" would not read).
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

__all__ = [
    "BENIGN_MARKERS",
    "COLOUR_NEIGHBOURS",
    "COVERT_LABEL_TEXT",
    "GENERIC_LABEL_TEMPLATE",
    "NUMBER_WORDS",
    "OPPOSITES",
    "PRIOR_SWAP",
    "RISK_OVERREACH",
    "RISK_REASSURE",
    "RISK_SOFTEN",
    "SEVERITY",
    "SIZE_NEIGHBOURS",
    "YES_NO",
]
