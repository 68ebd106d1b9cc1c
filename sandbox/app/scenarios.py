"""Scenarios as the Sandbox tab takes them: a ready-made one from ``eval/scenarios/`` or an uploaded YAML,
checked with the command line's one-line errors, then the tab's overrides (seed, poison budget or
number of member targets, the collection to attack).

An uploaded scenario (at most :data:`sandbox.scenario.MAX_SCENARIO_BYTES`, YAML aliases limited) may only
point at files inside the scenarios folder, the upload's own folder or the data folder, and may only reach
stores on this machine (:func:`check_upload`): ``data.source`` (``data:NAME`` stays inside the data folder),
``rag.text_encoder``, the image encoder specs (``default:PATH``, ``open_clip:ARCH:CHECKPOINT``) of
``rag.image_encoder``, ``attack.surrogate`` and ``mrm.proxy.encoder``, path-like values in
``rag.generator.options``, ``mrm.proposer.options``, ``attack.editor.options`` and ``defenses[].params``,
and ``rag.store`` (an embedded store, a store path inside those folders, or a server on a loopback host).
Anything else is refused with one line naming the key. Ready-made scenarios are trusted as they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from corpora.base import default_data_dir
from heterag import HeteragError, InvalidInputError, collection_info, parse_store_url

from ..scenario import Scenario, ScenarioError, load_scenario, parse_scenario

#: The repository root: the worker's working folder, where relative model paths are looked up.
WORK_DIR = Path(__file__).resolve().parents[2]
#: The ready-made scenarios (the repository's ``eval/scenarios``).
SCENARIOS_DIR = WORK_DIR / "eval" / "scenarios"
#: Seeds the tab accepts (numpy's seed range).
MAX_SEED = 2**32 - 1
#: Largest poison budget / number of member targets the tab accepts.
MAX_BUDGET = 1_000_000
#: The target choice that means "the scenario's own experiment collection".
EXPERIMENT = "experiment collection (built from the scenario's data)"


def ready_made(folder: Path = SCENARIOS_DIR) -> list[str]:
    """Names (file stems) of the ready-made scenarios, sorted."""
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _inside(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path.is_relative_to(r.resolve()) for r in roots)


def referenced_paths(scn: Scenario) -> list[tuple[str, Path]]:
    """(key, path) of every server file or folder ``scn`` names (see the module docs): a path ``data.source``
    (against the scenario's folder), ``data:NAME`` (in the data folder), and model paths and store paths
    (against :data:`WORK_DIR`, the worker's working folder)."""
    return [(key, path) for key, _, path in _references(scn)]


def _references(scn: Scenario) -> list[tuple[str, str, Path]]:
    """(key, the value as written, path) of every server file or folder ``scn`` names."""
    out: list[tuple[str, str, Path]] = []
    src = scn.data.source
    if src.startswith("data:"):
        out.append(("data.source", src, default_data_dir() / src.removeprefix("data:").strip()))
    elif not src.startswith("synthetic:"):
        p = Path(src).expanduser()
        out.append(("data.source", src, p if p.is_absolute() else Path(scn.base_dir) / p))
    if scn.rag.text_encoder and _model_path(scn.rag.text_encoder):
        out.append(("rag.text_encoder", scn.rag.text_encoder, _at_work(scn.rag.text_encoder)))
    specs = {"rag.image_encoder": scn.rag.image_encoder, "attack.surrogate": scn.attack.surrogate,
             "mrm.proxy.encoder": scn.mrm.proxy.encoder}
    for key, spec in specs.items():
        path = _image_encoder_path(spec)
        if path is not None and spec:
            out.append((key, spec, path))
    options: dict[str, Any] = {"rag.generator.options": scn.rag.generator.options,
                               "mrm.proposer.options": scn.mrm.proposer.options,
                               "attack.editor.options": scn.attack.editor.options}
    options.update({f"defenses.{i}.params": d.params for i, d in enumerate(scn.defenses)})
    for key, value in options.items():
        for where, text in _strings(key, value):
            always = (key == "rag.generator.options" and scn.rag.generator.name == "transformers"
                      and where.rsplit(".", 1)[-1] in ("model", "model_path")) or \
                     (key == "mrm.proposer.options" and where.endswith(".model"))
            if always or _path_like(text):
                out.append((where, text, _at_work(text)))
    store = _store_path(scn.rag.store)
    if store is not None:
        out.append(("rag.store", scn.rag.store, store))
    return out


def _at_work(text: str) -> Path:
    p = Path(text.removeprefix("file://")).expanduser()
    return p if p.is_absolute() else WORK_DIR / p


def _path_like(text: str) -> bool:
    """Whether a free-form option value names a file: absolute, ``~``, ``./``, ``..``, ``file://``, or a
    relative name with a separator that exists under :data:`WORK_DIR`."""
    t = text.strip()
    if not t:
        return False
    if t.startswith("file:"):
        return True
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", t):  # a URL (an endpoint), not a path
        return False
    p = Path(t.replace("\\", "/"))
    if p.is_absolute() or t.startswith(("~", "./", ".\\", "\\")) or ".." in p.parts:
        return True
    return ("/" in t or "\\" in t) and (WORK_DIR / p).exists()


def _model_path(spec: str) -> bool:
    """Whether a text encoder spec is a local folder rather than a hub name (as the encoder loader decides:
    it exists, or is written as a path)."""
    if spec.strip().lower() in ("default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
        return False
    p = Path(spec).expanduser()
    return _path_like(spec) or p.is_absolute() or (WORK_DIR / p).exists()


def _image_encoder_path(spec: str | None) -> Path | None:
    """The file or folder an image encoder spec reads (``default:PATH``, ``open_clip:ARCH:CHECKPOINT``)."""
    if not spec:
        return None
    if spec.startswith("default:") and spec.removeprefix("default:").strip():
        return _at_work(spec.removeprefix("default:").strip())
    if spec.startswith("open_clip:") and not spec.startswith("open_clip:hf-hub:"):
        _, _, tail = spec.removeprefix("open_clip:").partition(":")
        if tail and ("/" in tail or "\\" in tail or tail.startswith(("~", ".")) or
                     tail.endswith((".safetensors", ".pt", ".pth", ".bin")) or Path(tail).is_absolute()):
            return _at_work(tail)
    return None


def _store_path(spec: str) -> Path | None:
    """The folder a ``qdrant:PATH``/``lancedb:PATH``/``milvus:PATH.db`` store spec writes to."""
    head, colon, rest = spec.strip().partition(":")
    if colon and head in ("qdrant", "lancedb", "milvus") and rest.strip() and not rest.startswith("//") \
            and not rest.startswith(("http://", "https://")) and rest != ":memory:":
        return _at_work(rest.strip())
    return None


def _strings(key: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(f"{key}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(f"{key}.{i}", v)


def _loopback(host: str | None) -> bool:
    host = (host or "").strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_store(spec: str, label: str = "scenario") -> None:
    """Refuse (:class:`ScenarioError` naming ``rag.store``) a store that is neither embedded (in the
    collection folder, or at a path checked by :func:`referenced_paths`) nor a server on a loopback host."""
    try:
        url = parse_store_url(spec)
    except HeteragError as exc:
        raise ScenarioError(f"{label}: rag.store: {' '.join(str(exc).split())}") from None
    if url.location is None or url.kind in ("langchain", "llamaindex") or _store_path(spec) is not None \
            or url.location == ":memory:":
        return
    refuse = ScenarioError(f"{label}: rag.store: {url.display()} is not on this machine; an uploaded scenario may use an "
                           "embedded store (faiss, chroma, ...) or a store server on a loopback host (127.0.0.1, localhost)")
    if url.kind == "pgvector":
        parts = urlsplit(spec.strip())
        netloc = parts.netloc.rpartition("@")[2]
        hosts = [h.rsplit(":", 1)[0] if not h.startswith("[") else h.split("]")[0] + "]" for h in netloc.split(",") if h]
        for k, v in parse_qsl(parts.query):
            if k.lower() in ("host", "hostaddr"):
                hosts += [h for h in v.split(",") if not h.startswith("/")]  # a unix-socket folder is local
            elif k.lower() == "service":
                raise refuse
        if not all(_loopback(h) for h in hosts):
            raise refuse
        return
    head, _, rest = spec.strip().partition(":")
    server = rest if head in ("qdrant", "lancedb", "milvus") else spec.strip()
    try:
        host = urlsplit(server).hostname
    except ValueError:
        raise refuse from None
    if not _loopback(host):
        raise refuse


def check_upload(scn: Scenario, roots: list[Path], label: str) -> None:
    """Refuse (:class:`ScenarioError`, one line naming the key) an uploaded scenario that names a server path
    outside ``roots`` or a store on another host."""
    for key, written, p in _references(scn):
        if not _inside(p, roots):  # the value as the user wrote it: never the server's upload path
            raise ScenarioError(f"{label}: {key}: {written!r} is outside the scenarios folder, the upload's folder and "
                                "the data folder; an uploaded scenario may only use files beside it, in eval/scenarios "
                                "or in the data folder")
    check_store(scn.rag.store, label)


def load_choice(name: str | None, upload: str | Path | None, folder: Path = SCENARIOS_DIR) -> Scenario:
    """The scenario to run: the uploaded YAML file ``upload`` if given (confined by :func:`check_upload` to
    ``folder``, its own folder and the data folder; messages name the file by its name, never the server's
    upload path), else the ready-made scenario ``name``. Raises :class:`ScenarioError` with one line."""
    if upload:
        path = Path(upload)
        label = path.name
        scn = load_scenario(path, label=label)  # malformed YAML: line and column; bad keys: named; size and aliases limited
        check_upload(scn, [folder, path.resolve().parent, default_data_dir()], label)
        return scn
    if not name:
        raise ScenarioError("pick a ready-made scenario or upload a scenario YAML")
    if name not in ready_made(folder):
        raise ScenarioError(f"unknown scenario {name!r}; choose one of: {', '.join(ready_made(folder))}")
    return load_scenario(folder / f"{name}.yaml")


def _whole(name: str, value: int | float | str | None, low: int, high: int) -> int | None:
    """``value`` as a whole number in [``low``, ``high``] (None for empty), read exactly: an integer string as
    it is written, ``1e3``-style only where it is exactly a whole number; :class:`InvalidInputError` (one line,
    naming ``name``) otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    bad = InvalidInputError(f"{name} must be a whole number from {low} to {high}, got {str(value).strip()[:40]!r}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        number = Decimal(value)
    else:
        text = str(value).strip().replace("_", "") if isinstance(value, str) else repr(float(value))
        if len(text) > 60 or not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,4})?", text):
            raise bad  # also inf, nan, words
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise bad from None
    if not number.is_finite() or number < low or number > high or number != number.to_integral_value():
        raise bad
    return int(number)


def with_overrides(scn: Scenario, *, seed: int | float | str | None = None, budget: int | float | str | None = None,
                   collection: str | None = None, allow_live: bool = False) -> Scenario:
    """``scn`` with the tab's overrides: ``seed``; ``budget`` (M3Att: poisons, MrM: member targets; empty or None: the
    scenario's); and
    ``collection`` (a live collection to attack instead of the experiment collection, which needs
    ``allow_live`` unless it was made for experiments). Raises :class:`ScenarioError` /
    :class:`InvalidInputError` with one line; a budget larger than a pool the scenario fixes is refused here,
    before any work (one that depends on the data is refused by the run with the same message)."""
    data: dict[str, Any] = scn.model_dump(mode="json", by_alias=True, exclude={"base_dir"}, exclude_unset=True)
    seed = _whole("seed", seed, 0, MAX_SEED)
    n = _whole("the budget (poisons for M3Att, member targets for MrM)", budget, 1, MAX_BUDGET)
    if seed is not None:
        data["seed"] = seed
    if n is not None:
        if scn.attack.name == "mrm":
            data.setdefault("mrm", {})["members"] = n
            kb = scn.data.splits.knowledge_base.count
            if kb is not None and n > kb:
                raise InvalidInputError(f"mrm.members: {n} member targets asked, the knowledge base part has {kb}")
        elif scn.attack.name in ("m3att", "random"):
            attack = data.setdefault("attack", {})
            attack.pop("poison_rate", None)
            attack["poison_count"] = n
            pool = scn.data.splits.candidates.count
            if scn.attack.name == "m3att" and pool is not None and n > pool:
                raise InvalidInputError(f"attack: poison budget {n} is larger than the candidate pool ({pool} images)")
        else:
            raise InvalidInputError(f"attack {scn.attack.name!r} has no poison budget to set")
    if collection:
        info = collection_info(collection)  # CollectionNotFoundError (one line) for a missing one
        rag = data.setdefault("rag", {})
        rag["collection"] = collection
        if info.purpose != "experiment":
            if not allow_live:
                raise InvalidInputError(f"collection {collection!r} is a live collection (not made for experiments); "
                                        "confirm injecting into it (allow_live) first")
            rag["allow_live"] = True
    elif scn.rag.collection and is_live(scn.rag.collection) and not allow_live:
        # the scenario's own rag.allow_live does not count in the app: the tab's confirmation does
        raise InvalidInputError(f"rag.collection: the scenario attacks the live collection {scn.rag.collection!r}; "
                                "choose it as the collection to attack and confirm injecting into it (allow_live)")
    return parse_scenario(data, base_dir=scn.base_dir, where=scn.name)


def is_live(collection: str | None) -> bool:
    """Whether ``collection`` exists and was not made for experiments (injecting into it needs a confirmation)."""
    if not collection or collection == EXPERIMENT:
        return False
    try:
        return collection_info(collection).purpose != "experiment"
    except Exception:  # a missing collection: the run reports it
        return False


__all__ = ["EXPERIMENT", "MAX_BUDGET", "MAX_SEED", "SCENARIOS_DIR", "WORK_DIR", "check_store", "check_upload", "is_live",
           "load_choice", "ready_made", "referenced_paths", "with_overrides"]
