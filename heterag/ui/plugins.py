"""Plug points of the web app for packages above it: extra tabs and chat overlays.

The app (:mod:`heterag.ui.webapp`) never imports the packages that plug into it, the same way the
``heterag`` command line never imports the sandbox (:data:`heterag.cli.commands.COMMAND_GROUP`): a
package names a tab builder in the :data:`TAB_GROUP` entry-point group (``pyproject.toml``)::

    [project.entry-points."heterag.app_tabs"]
    sandbox = "sandbox.app:build_tab"

The entry point loads to a callable ``build(ctx: AppContext) -> None`` that lays out its Gradio
components; the app calls it inside ``with gr.Tab(title)``, where ``title`` is the callable's
``title`` attribute (default: the entry point's name, capitalised). A plugin that fails to load or
to build costs only its own tab: the app logs one line and goes on.

A tab can also change what the chat shows, through a :class:`ChatOverlay` it registers with
:meth:`AppContext.add_chat_overlay`: a banner above the chat (e.g. "an attack is running on this
collection"), a flag on some sources (e.g. "injected by run X"), and defenses the chat can switch
on (hit filters). Everything an overlay returns is plain text; the app escapes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from heterag.core.errors import HeteragError
from heterag.core.results import Hit
from heterag.retrieval.hit_filters import HitFilter, check_hit_filter

if TYPE_CHECKING:
    from heterag.ui.service import ChatService

log = logging.getLogger(__name__)

#: Entry-point group of the app's extra tabs (each value loads to ``build(ctx: AppContext) -> None``).
TAB_GROUP = "heterag.app_tabs"


@runtime_checkable
class ChatOverlay(Protocol):
    """What a plugin adds to the chat tab, per collection (the resolved name the chat asks)."""

    def banner(self, collection: str) -> str | None:
        """Plain text shown above the chat while it applies (None or "": nothing)."""
        ...

    def marks(self, collection: str, hits: Sequence[Hit]) -> Mapping[str, str]:
        """A flag for some of ``hits``: document id -> plain-text label (e.g. ``injected by run X``)."""
        ...

    def defenses(self) -> Sequence[str]:
        """Names of the defenses the chat can switch on (empty: none)."""
        ...

    def defense_filters(self, collection: str, name: str) -> Sequence[HitFilter]:
        """The hit filters of defense ``name`` fitted for ``collection`` (may take seconds);
        raises :class:`HeteragError` with one line when it cannot be used there."""
        ...


@dataclass(frozen=True)
class AppTab:
    """A tab a plugin adds: its title, its builder, and the entry point it came from."""

    name: str
    title: str
    build: Callable[[AppContext], None]


@dataclass
class AppContext:
    """What a tab plugin gets: the app's :class:`~heterag.ui.service.ChatService`, the chat overlays,
    and notes to show in the app's status line (e.g. what was cleaned up at start)."""

    service: ChatService
    overlays: list[ChatOverlay] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: collection -> the hit filters the pipeline had before a chat defense was switched on
    _base_filters: dict[str, list[HitFilter]] = field(default_factory=dict)

    def add_chat_overlay(self, overlay: ChatOverlay) -> None:
        if not isinstance(overlay, ChatOverlay):
            raise TypeError(f"{overlay!r} is not a ChatOverlay (banner, marks, defenses, defense_filters)")
        self.overlays.append(overlay)

    def collections(self) -> list[str]:
        return self.service.collections()

    # ---- used by the chat tab --------------------------------------------------------------
    def banner(self, collections: Sequence[str]) -> list[str]:
        """The banner lines of every overlay for ``collections`` (a failing overlay logs one line)."""
        out: list[str] = []
        for overlay in self.overlays:
            for name in dict.fromkeys(collections):
                try:
                    text = overlay.banner(name)
                except Exception as exc:  # a broken plugin must not break the chat
                    log.warning("chat overlay %r: banner failed: %s", overlay, _one_line(exc))
                    continue
                if text:
                    out.append(str(text))
        return out

    def marks(self, collection: str, hits: Sequence[Hit]) -> dict[str, str]:
        """Document id -> flag label for ``hits``, from every overlay."""
        out: dict[str, str] = {}
        for overlay in self.overlays:
            try:
                out.update({str(k): str(v) for k, v in overlay.marks(collection, hits).items()})
            except Exception as exc:
                log.warning("chat overlay %r: marks failed: %s", overlay, _one_line(exc))
        return out

    def defenses(self) -> list[str]:
        return [name for overlay in self.overlays for name in overlay.defenses()]

    def set_chat_defense(self, collection: str, name: str | None) -> str:
        """Switch defense ``name`` on for the chat's questions to ``collection`` (None or "off": off again);
        returns a status line. Raises :class:`HeteragError` (one line) when it cannot be used there."""
        pipe = self.service.pipeline(collection)
        base = self._base_filters.setdefault(collection, list(pipe.hit_filters))
        if not name or name == "off":
            pipe.hit_filters = list(base)
            self._base_filters.pop(collection, None)
            return f"no defense on the chat's questions to {collection}"
        owner = next((o for o in self.overlays if name in o.defenses()), None)
        if owner is None:
            raise HeteragError(f"unknown chat defense {name!r}; choose one of: {', '.join(self.defenses()) or 'none'}")
        filters = [check_hit_filter(f) for f in owner.defense_filters(collection, name)]
        pipe.hit_filters = [*base, *filters]  # one assignment: a question in flight sees the old or the new list
        return f"defense {name} is on for the chat's questions to {collection}"


def _one_line(message: object) -> str:
    return " ".join(str(message).split()) or type(message).__name__


def load_tabs(group: str = TAB_GROUP) -> list[AppTab]:
    """The tabs named in entry-point ``group``, sorted by name; one that cannot be loaded is logged
    (one line) and left out."""
    from importlib.metadata import entry_points

    tabs = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            build = entry.load()
            if not callable(build):
                raise TypeError(f"{entry.value} is not callable")
        except Exception as exc:  # a stale or broken plugin must not take the app down
            log.warning("app tab %r (%s) not loaded: %s", entry.name, entry.value, _one_line(exc))
            continue
        title = str(getattr(build, "title", "") or entry.name.replace("_", " ").capitalize())
        tabs.append(AppTab(entry.name, title, build))
    return tabs


def build_tab(tab: AppTab, ctx: AppContext) -> str | None:
    """Call ``tab.build(ctx)`` (inside the caller's ``gr.Tab``); returns one line if it failed, else None."""
    try:
        tab.build(ctx)
    except Exception as exc:
        log.warning("app tab %r failed to build: %s", tab.name, _one_line(exc))
        return f"this tab could not be built: {_one_line(exc)}"
    return None


__all__ = ["TAB_GROUP", "AppContext", "AppTab", "ChatOverlay", "build_tab", "load_tabs"]
