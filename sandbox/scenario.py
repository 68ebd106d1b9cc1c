"""Scenarios: what one sandbox run does, as YAML validated by pydantic.

A scenario names its ``seed``; its ``data`` (a built-in corpus or a folder in any image layout
``heterag ingest`` reads) and how that data is split *by image* into the knowledge base, the
attacker's reference pool, the attacker's candidate pool (clean images the poisons start from)
and the test queries; the ``rag`` system under attack (a fresh experiment collection built from
the knowledge base, or ``collection: NAME`` to attack an existing live one); the ``attack``;
the ``defenses``; which ``metrics`` to report and how many ``bootstrap`` resamples give their
95% confidence intervals. See ``eval/scenarios/*.yaml`` for complete examples.

Every error (malformed YAML, an unknown key, a wrong type, a missing file, an unknown attack or
defense) is one :class:`ScenarioError` line that names the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heterag.errors import InvalidInputError

#: Attacks a scenario may name.
ATTACKS = ("m3att", "random", "query_copy", "none")
#: Defense names (kept in sync with :data:`sandbox.defenses.DEFENSES`, checked at validation).
METRICS = ("asr@k", "asr_bound@k", "poisoned_per_query@k", "accuracy_clean", "accuracy_attacked",
           "accuracy_drop_normalised", "misinformation_rate", "poison_rate")
TASKS = ("auto", "classify", "vqa_closed", "scene_background")
PARTS = ("knowledge_base", "reference", "candidates", "test")


class ScenarioError(InvalidInputError):
    """A scenario that cannot be run as written (one line, naming the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Part(_Strict):
    """One part of the split: taken from source split ``from`` (``all`` for layouts without
    splits), ``count`` items or a ``fraction`` of what is left of that split; neither = the rest."""

    from_: str = Field("all", alias="from")
    count: int | None = Field(None, ge=0)
    fraction: float | None = Field(None, gt=0, le=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_size(self) -> Part:
        if self.count is not None and self.fraction is not None:
            raise ValueError("give count or fraction, not both")
        return self


class Splits(_Strict):
    knowledge_base: Part = Part(fraction=0.6)
    reference: Part = Part(fraction=0.4)
    candidates: Part = Part(fraction=0.3)
    test: Part = Part()


class DataConfig(_Strict):
    """``source``: ``synthetic:N`` (N scenes, seed = the scenario's), ``data:NAME`` (a folder of the
    shared data directory, ``$HETERAG_DATA_DIR`` or ``../shared/data``), or a path (relative to
    the scenario file); a MedMNIST ``.npz`` is read split by split."""

    source: str
    task: Literal["auto", "classify", "vqa_closed", "scene_background"] = "auto"
    splits: Splits = Splits()
    #: classify: per label, descriptions the reader compares a text with (default: the label text)
    label_descriptions: dict[int, list[str]] | None = None
    max_test_queries: int | None = Field(None, ge=1)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.startswith("synthetic"):
            if not re.fullmatch(r"synthetic:\d+", v) or int(v.split(":")[1]) < 10:
                raise ValueError("synthetic sources are written synthetic:N with N >= 10")
        elif not v.strip():
            raise ValueError("empty source")
        return v


class GeneratorConfig(_Strict):
    name: Literal["extractive", "openai", "transformers"] = "extractive"
    options: dict[str, Any] = {}


class RagConfig(_Strict):
    collection: str | None = None
    allow_live: bool = False
    store: Literal["chroma", "faiss"] = "faiss"
    text_encoder: str | None = None
    image_encoder: str = "default"
    view: Literal["naive", "heterag", "late"] = "heterag"
    fusion: str = "weighted"
    top_k: int = Field(5, ge=1, le=100)
    generator: GeneratorConfig = GeneratorConfig()


class BlackBoxConfig(_Strict):
    steps: int = Field(100, ge=1)
    directions: int = Field(20, ge=1)
    sigma: float = Field(1 / 255, gt=0)


class EditorConfig(_Strict):
    name: str = "rule"
    options: dict[str, Any] = {}


class AttackConfig(_Strict):
    name: str = "m3att"
    access: Literal["white-box", "black-box", "transfer"] = "white-box"
    surrogate: str | None = None  # transfer: the attacker's image encoder spec
    poison_count: int | None = Field(None, ge=1)
    poison_rate: float | None = Field(None, gt=0, le=0.5)
    #: further poison rates (or counts) to sweep for the ASR-vs-rate curve (upper bound beside each)
    sweep_rates: list[float] = []
    sweep_counts: list[int] = []
    objective: Literal["centroid", "neighbourhood"] = "centroid"
    clusters: int | None = Field(None, ge=1)  # default: one per poison
    proxy_members: int = Field(50, ge=1)
    eps: float = Field(16 / 255, gt=0, le=1)
    step: float = Field(1 / 255, gt=0, le=1)
    steps: int = Field(500, ge=0)
    #: candidate images larger than this (longer side, pixels) are downscaled before optimisation: the
    #: attacker picks its poison's resolution, and PGD cost grows with the pixel count
    max_side: int | None = Field(256, ge=16)
    seed_top: int = Field(5, ge=1)
    warmup_steps: int = Field(10, ge=0)
    neighbour_k: int = Field(1, ge=1)
    black_box: BlackBoxConfig = BlackBoxConfig()
    editor: EditorConfig = EditorConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in ATTACKS:
            raise ValueError(f"unknown attack {v!r}; choose one of: {', '.join(ATTACKS)}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> AttackConfig:
        if self.poison_count is not None and self.poison_rate is not None:
            raise ValueError("give poison_count or poison_rate, not both")
        if self.access == "transfer" and not self.surrogate:
            raise ValueError("access: transfer needs surrogate (the attacker's image encoder)")
        return self


class DefenseConfig(_Strict):
    name: str
    false_rejection: float = Field(0.02, gt=0, le=0.5)
    params: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from .defenses import DEFENSES

        if v not in DEFENSES:
            raise ValueError(f"unknown defense {v!r}; choose one of: {', '.join(sorted(DEFENSES))}")
        return v


class Scenario(_Strict):
    name: str = Field("scenario", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
    seed: int = 0
    data: DataConfig
    rag: RagConfig = RagConfig()
    attack: AttackConfig = AttackConfig()
    defenses: list[DefenseConfig] = []
    metrics: list[str] = list(METRICS)
    bootstrap: int = Field(1000, ge=0)
    #: probe queries (clean knowledge-base items) that defenses calibrate on
    defense_probes: int = Field(200, ge=10)
    #: where ``source`` paths are resolved (the scenario file's folder); set by :func:`load_scenario`
    base_dir: str = "."

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from: {', '.join(METRICS)}")
        return v


def _loc(err: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if p != "from_") or "scenario"


def parse_scenario(data: Any, *, base_dir: str | Path = ".", where: str = "scenario") -> Scenario:
    """Validate a mapping as a :class:`Scenario`; raises :class:`ScenarioError` naming the key."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where}: a scenario is a YAML mapping, got {type(data).__name__}")
    try:
        return Scenario.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif err.get("type") == "missing":
            msg = "missing required key"
        raise ScenarioError(f"{where}: {_loc(err)}: {msg}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}: malformed YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    return parse_scenario(data, base_dir=path.parent, where=str(path))
