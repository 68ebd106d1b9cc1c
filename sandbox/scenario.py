"""Scenarios: what one sandbox run does, as YAML validated by pydantic.

A scenario names its ``seed``; its ``data`` (a built-in corpus or a folder in any image layout
``heterag ingest`` reads) and how that data is split *by image* into the knowledge base, the
attacker's reference pool, the attacker's candidate pool (clean images the poisons start from)
and the test queries; the ``rag`` system under attack (a fresh experiment collection built from
the knowledge base, or ``collection: NAME`` to attack an existing live one); the ``attack``;
the ``defenses``; which ``metrics`` to report and how many ``bootstrap`` resamples give their
95% confidence intervals. See ``eval/scenarios/*.yaml`` for complete examples.

Every error (malformed YAML, an unknown key, a wrong type, a missing file, an unknown attack or
defense) is one :class:`ScenarioError` line that names the offending key. Types are strict: a number
written as a string (``masks: "3"``) or a boolean written as a number is refused, not converted
(integers are accepted where a float is expected; YAML exponents such as ``1e-3`` are read as
numbers). A block for another attack is refused too: ``mrm:`` under ``attack: m3att``, or M3Att
options (``attack.steps``...) under ``attack: mrm``.

A scenario file is read with limits, the same for the command line and the web app: at most
:data:`MAX_SCENARIO_BYTES` bytes, at most :data:`MAX_YAML_ALIASES` aliases (``*name``) and at most
:data:`MAX_YAML_NODES` values once every alias is expanded (a "billion laughs" document of 1 KB would
otherwise expand to gigabytes). ``data: {source: data:NAME}`` must name something inside the data folder
(no ``..``, no absolute path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from heterag import HeteragError, InvalidInputError

#: Attacks a scenario may name.
ATTACKS = ("m3att", "random", "query_copy", "none", "mrm")
#: Membership-inference methods an ``mrm`` scenario may run (MrM and the baselines).
MIA_METHODS = ("mrm", "qb-mia", "sb-mia-0.25", "sb-mia-0.5", "sb-mia-0.75", "mba")
#: Defenses only membership-inference scenarios use (the generator's refusal policy, an augmented store).
MIA_DEFENSES = ("refusal", "augmented_store")
#: Membership-inference metric names (each reported as ``NAME[method=M]`` and ``NAME[method=M,defense=D]``).
MIA_METRICS = ("auc", "tpr@1%fpr", "tpr@5%fpr", "set_auc@K", "queries_per_target")
#: Defense names (kept in sync with :data:`sandbox.defenses.DEFENSES`, checked at validation).
METRICS = ("asr@k", "asr_bound@k", "poisoned_per_query@k", "accuracy_clean", "accuracy_attacked",
           "accuracy_drop_normalised", "misinformation_rate", "poison_rate")
TASKS = ("auto", "classify", "vqa_closed", "scene_background")
PARTS = ("knowledge_base", "reference", "candidates", "test")
#: Largest scenario file read (bytes).
MAX_SCENARIO_BYTES = 2**20
#: Most YAML aliases (``*name``) a scenario file may use.
MAX_YAML_ALIASES = 100
#: Most values (mappings, lists, scalars) a scenario file may hold once its aliases are expanded.
MAX_YAML_NODES = 100_000
#: What a scenario ``name`` may be (it names report folders and run ids).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class ScenarioError(InvalidInputError):
    """A scenario that cannot be run as written (one line, naming the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Part(_Strict):
    """One part of the split: taken from source split ``from`` (a named split of a COCO folder or a
    MedMNIST ``.npz``: ``val2017``, ``train``; ``all``: every split together, the only choice for other
    layouts, and then every part's), ``count`` items or a ``fraction`` of what is left of that split;
    neither = the rest."""

    from_: str = Field("all", alias="from")
    count: int | None = Field(None, ge=0)
    fraction: float | None = Field(None, gt=0, le=1)

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

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
    the scenario file); a COCO folder or a MedMNIST ``.npz`` is read split by split."""

    source: str
    task: Literal["auto", "classify", "vqa_closed", "scene_background"] = "auto"
    splits: Splits = Splits()
    #: classify: per label, descriptions the reader compares a text with (default: the label text)
    #: (label keys may be digit strings, as JSON writes them)
    label_descriptions: dict[Annotated[int, Strict(False)], list[str]] | None = None
    max_test_queries: int | None = Field(None, ge=1)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.startswith("synthetic"):
            if not re.fullmatch(r"synthetic:\d+", v) or int(v.split(":")[1]) < 10:
                raise ValueError("synthetic sources are written synthetic:N with N >= 10")
        elif v.startswith("data:"):
            check_data_name(v)
        elif not v.strip():
            raise ValueError("empty source")
        return v


def check_data_name(source: str) -> str:
    """The NAME of ``data:NAME`` if it stays inside the data folder (relative, no ``..``); raises
    :class:`ValueError` (one line) otherwise."""
    name = source.removeprefix("data:").strip()
    parts = Path(name.replace("\\", "/")).parts
    if not name or Path(name).is_absolute() or name.startswith(("~", "/", "\\")) or ".." in parts:
        raise ValueError(f"{source!r}: data:NAME names a file or folder inside the data folder "
                         "(a relative name without '..')")
    return name


class GeneratorConfig(_Strict):
    name: Literal["extractive", "openai", "transformers"] = "extractive"
    options: dict[str, Any] = {}


class RagConfig(_Strict):
    collection: str | None = None
    allow_live: bool = False
    store: str = "faiss"  # a store spec: chroma, faiss, chroma-http://HOST:PORT, postgresql://..., lancedb, milvus...
    text_encoder: str | None = None
    image_encoder: str = "default"
    view: Literal["naive", "heterag", "late"] = "heterag"
    fusion: str = "weighted"
    #: how a query's text is searched: dense, keyword or hybrid (image queries keep dense image search). Dense by
    #: default, unlike heterag's own default: runs stay comparable with earlier reports, and the attacks' upper
    #: bound (sandbox.runner.fused_scores) models dense scoring.
    retrieval: Literal["dense", "keyword", "hybrid"] = "dense"
    hybrid: str | None = None  # hybrid fusion, e.g. rrf:k=60,weight=0.5 (default: heterag's)
    top_k: int = Field(5, ge=1, le=100)
    generator: GeneratorConfig = GeneratorConfig()


    @field_validator("store")
    @classmethod
    def _store_spec(cls, v: str) -> str:
        from heterag import parse_store_url

        try:
            parse_store_url(v)  # an unknown scheme lists the accepted forms
        except HeteragError as exc:  # unknown scheme (listing the choices) or a malformed URL
            raise ValueError(str(exc).strip("'\"")) from None
        return v


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

        if v not in DEFENSES and v not in MIA_DEFENSES:
            raise ValueError(f"unknown defense {v!r}; choose one of: {', '.join(sorted([*DEFENSES, *MIA_DEFENSES]))}")
        return v


class ProposerConfig(_Strict):
    """MrM object proposals: ``segmentation`` (scikit-image, default), ``annotations`` (upper bound) or
    ``transformers`` (a local model folder); ``options`` go to the proposer."""

    name: Literal["segmentation", "annotations", "transformers"] = "segmentation"
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _options(self) -> ProposerConfig:
        from .attacks.proposals import check_proposer_options

        check_proposer_options(self.name, self.options)  # ValueError naming options.KEY
        return self


class ProxyConfig(_Strict):
    """The counterfact proxy: zero-shot with ``encoder`` (an image encoder spec; default: the collection's)."""

    encoder: str | None = None
    template: str = "a {}"
    tau: float = Field(0.05, gt=0)


class MrMConfig(_Strict):
    """Membership inference (``attack: {name: mrm}``): members are ``members`` images of the knowledge
    base part (default: half of it; the rest is other knowledge), non-members the test part (never in
    the knowledge base), the shadow set ``shadow`` images of the reference part."""

    methods: list[str] = ["mrm", "qb-mia", "sb-mia-0.25", "sb-mia-0.5", "sb-mia-0.75"]
    members: int | None = Field(None, ge=1)
    shadow: int = Field(20, ge=1)
    proposer: ProposerConfig = ProposerConfig()
    min_area: float = Field(0.02, gt=0, lt=1)
    max_area: float = Field(0.25, gt=0, le=1)
    proxy: ProxyConfig = ProxyConfig()
    #: object vocabulary of the proxy: ``annotations`` (labels in the data), ``synthetic``, ``coco`` or a list
    vocabulary: str | list[str] = "annotations"
    #: object labels built from these annotation attributes (e.g. ``[colour, shape]``), else the annotation's label
    label_keys: list[str] | None = None
    #: the attacker sends targets at most this many pixels on the longer side (downscaled first)
    max_side: int = Field(512, ge=32)
    masks: int = Field(3, ge=1)  # K
    trials: int = Field(5, ge=1)  # Q
    prompt: Literal["paper", "plain"] = "paper"
    set_sizes: list[int] = [1, 5, 10, 20]
    sets: int = Field(200, ge=1)
    synonyms: dict[str, list[str]] = {}
    augmentation_probing: bool = True
    mba_words: int = Field(5, ge=1)
    retries: int = Field(3, ge=0)
    backoff: float = Field(0.5, ge=0)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in MIA_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(MIA_METHODS)}")
        if not v:
            raise ValueError(f"give at least one method; choose from: {', '.join(MIA_METHODS)}")
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"method(s) {', '.join(map(repr, dup))} listed more than once")
        return v

    @field_validator("label_keys")
    @classmethod
    def _label_keys(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) < len(v) or any(not k.strip() for k in v)):
            raise ValueError("give distinct, non-empty annotation attribute names (e.g. [colour, shape])")
        return v

    @field_validator("set_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("set sizes must be >= 1")
        return v

    @field_validator("vocabulary")
    @classmethod
    def _vocab(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str) and v not in ("annotations", "synthetic", "coco"):
            raise ValueError(f"unknown vocabulary {v!r}; choose annotations, synthetic, coco or give a list of labels")
        if isinstance(v, list) and not v:
            raise ValueError("an empty vocabulary")
        return v

    @model_validator(mode="after")
    def _areas(self) -> MrMConfig:
        if self.min_area >= self.max_area:
            raise ValueError(f"min_area ({self.min_area}) must be below max_area ({self.max_area})")
        return self


class Scenario(_Strict):
    name: str = "scenario"
    seed: int = 0
    data: DataConfig
    rag: RagConfig = RagConfig()
    attack: AttackConfig = AttackConfig()
    defenses: list[DefenseConfig] = []
    mrm: MrMConfig = MrMConfig()
    metrics: list[str] = list(METRICS)
    bootstrap: int = Field(1000, ge=0)
    #: probe queries (clean knowledge-base items) that defenses calibrate on
    defense_probes: int = Field(200, ge=10)
    #: where ``source`` paths are resolved (the scenario file's folder); set by :func:`load_scenario`
    base_dir: str = "."

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v):
            raise ValueError(f"{v[:60]!r}: use 1 to 40 characters from A-Z, a-z, 0-9, '_', '.' and '-', "
                             "starting with a letter or digit")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METRICS and m not in MIA_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from: {', '.join(METRICS + MIA_METRICS)}")
        return v

    @model_validator(mode="after")
    def _mia_defenses(self) -> Scenario:
        if self.attack.name != "mrm":
            for i, d in enumerate(self.defenses):
                if d.name in MIA_DEFENSES:
                    raise ValueError(f"defenses.{i}: {d.name!r} is a membership-inference defense (attack: mrm only)")
            if "mrm" in self.model_fields_set:
                raise ValueError(f"mrm: a membership-inference block, but attack.name is {self.attack.name!r} "
                                 "(it would be ignored); use attack: {name: mrm} or remove the block")
        else:
            other = sorted(self.attack.model_fields_set - {"name"})
            if other:
                raise ValueError(f"attack.{other[0]}: an M3Att option, but attack.name is 'mrm' (it would be ignored); "
                                 "MrM settings go in the mrm: block")
        return self


#: Parts of a pydantic error location that name a union member or a dict key slot, not a key.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|\[key\]|(list|dict)\[.*\])$")


def _loc(err: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if p != "from_" and not _TYPE_TAG.match(str(p)))


class YAMLBombError(yaml.YAMLError):
    """A document whose aliases expand beyond the limits (:data:`MAX_YAML_ALIASES`, :data:`MAX_YAML_NODES`)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (``1e-3`` is a number, not the string "1e-3") that refuses
    documents with more than :data:`MAX_YAML_ALIASES` aliases or more than :data:`MAX_YAML_NODES` values once
    the aliases are expanded (checked on the node graph, before any Python object is built)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YAMLBombError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name); write the values out")
        return super().compose_node(parent, index)

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Raise :class:`YAMLBombError` if ``root`` holds more than :data:`MAX_YAML_NODES` values with every alias
    expanded, or refers to itself."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise YAMLBombError("a YAML alias refers to the value that contains it")
        visiting.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        else:
            children = []
        for child in children:
            n += size(child)
            if n > MAX_YAML_NODES:
                raise YAMLBombError(f"the YAML aliases expand to more than {MAX_YAML_NODES} values "
                                    f"(limit {MAX_YAML_ALIASES} aliases, {MAX_YAML_NODES} values)")
        visiting.discard(key)
        sizes[key] = n
        return n

    size(root)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_scenario(data: Any, *, base_dir: str | Path = ".", where: str = "scenario") -> Scenario:
    """Validate a mapping as a :class:`Scenario`; raises :class:`ScenarioError` naming the key."""
    if data is None:
        raise ScenarioError(f"{where}: the file is empty; a scenario is a YAML mapping (see eval/scenarios)")
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
        loc = _loc(err)
        raise ScenarioError(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}") from None


def load_yaml(text: str) -> Any:
    """``text`` parsed with the scenario loader (YAML 1.2 floats, alias limits); raises :class:`yaml.YAMLError`."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def load_scenario(path: str | Path, *, label: str | None = None) -> Scenario:
    """Read and validate a scenario YAML file (at most :data:`MAX_SCENARIO_BYTES`; aliases limited, see the
    module docs). ``label``: how messages name the file (default: its path; the web app gives the user's
    file name, not the server's upload path)."""
    path = Path(path)
    where = label or str(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file {where} does not exist")
    size = path.stat().st_size
    if size > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{where}: {size / 2**20:.1f} MiB; a scenario file may be at most "
                            f"{MAX_SCENARIO_BYTES // 2**20} MiB")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except YAMLBombError as exc:
        raise ScenarioError(f"{where}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(" ".join(f"{where}: malformed YAML{at}: {problem}".split())) from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise ScenarioError(f"{where}: refused: the YAML is nested too deeply") from None
    return parse_scenario(data, base_dir=path.parent, where=where)
