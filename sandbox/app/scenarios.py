"""Scenarios as the Sandbox tab takes them: a ready-made one from ``eval/scenarios/`` or an uploaded YAML,
checked with the command line's one-line errors, then the tab's overrides (seed, poison budget or
number of targets, the collection to attack).

An uploaded scenario may only point at files inside the scenarios folder or the upload's own folder
(``data.source`` paths, and ``default:PATH`` encoder specs): anything else on the server is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heterag import InvalidInputError, collection_info

from ..scenario import Scenario, ScenarioError, load_scenario, parse_scenario

#: The ready-made scenarios (the repository's ``eval/scenarios``).
SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "eval" / "scenarios"
#: The target choice that means "the scenario's own experiment collection".
EXPERIMENT = "experiment collection (built from the scenario's data)"


def ready_made(folder: Path = SCENARIOS_DIR) -> list[str]:
    """Names (file stems) of the ready-made scenarios, sorted."""
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _inside(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path.is_relative_to(r.resolve()) for r in roots)


def referenced_paths(scn: Scenario) -> list[tuple[str, Path]]:
    """(key, path) of every server file ``scn`` names: a path ``data.source`` (against the scenario's folder)
    and ``default:PATH`` encoder specs (against the working folder)."""
    out = []
    src = scn.data.source
    if not src.startswith(("data:", "synthetic:")):
        p = Path(src).expanduser()
        out.append(("data.source", p if p.is_absolute() else Path(scn.base_dir) / p))
    specs = {"attack.surrogate": scn.attack.surrogate, "rag.image_encoder": scn.rag.image_encoder,
             "mrm.proxy.encoder": scn.mrm.proxy.encoder}
    for key, spec in specs.items():
        if spec and spec.startswith("default:") and spec.removeprefix("default:").strip():
            out.append((key, Path(spec.removeprefix("default:")).expanduser()))
    return out


def load_choice(name: str | None, upload: str | Path | None, folder: Path = SCENARIOS_DIR) -> Scenario:
    """The scenario to run: the uploaded YAML file ``upload`` if given (confined to ``folder`` and its own
    folder), else the ready-made scenario ``name``. Raises :class:`ScenarioError` with one line."""
    if upload:
        path = Path(upload)
        scn = load_scenario(path)  # malformed YAML: line and column; bad keys: named
        roots = [folder, path.resolve().parent]
        for key, p in referenced_paths(scn):
            if not _inside(p, roots):
                raise ScenarioError(f"{path.name}: {key}: {p} is outside the scenarios folder and the upload; "
                                    "an uploaded scenario may only use files beside it or in eval/scenarios")
        return scn
    if not name:
        raise ScenarioError("pick a ready-made scenario or upload a scenario YAML")
    if name not in ready_made(folder):
        raise ScenarioError(f"unknown scenario {name!r}; choose one of: {', '.join(ready_made(folder))}")
    return load_scenario(folder / f"{name}.yaml")


def _whole(name: str, value: int | float | str | None, low: int) -> int | None:
    """``value`` as a whole number >= ``low`` (None for empty); :class:`InvalidInputError` naming ``name`` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a whole number >= {low}, got {value!r}") from None
    if number != int(number) or int(number) < low:
        raise InvalidInputError(f"{name} must be a whole number >= {low}, got {value!r}")
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
    seed, n = _whole("seed", seed, 0), _whole("the budget", budget, 1)
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
    return parse_scenario(data, base_dir=scn.base_dir, where=scn.name)


def is_live(collection: str | None) -> bool:
    """Whether ``collection`` exists and was not made for experiments (injecting into it needs a confirmation)."""
    if not collection or collection == EXPERIMENT:
        return False
    try:
        return collection_info(collection).purpose != "experiment"
    except Exception:  # a missing collection: the run reports it
        return False


__all__ = ["EXPERIMENT", "SCENARIOS_DIR", "is_live", "load_choice", "ready_made", "referenced_paths", "with_overrides"]
