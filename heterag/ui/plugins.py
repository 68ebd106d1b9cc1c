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

A chat defense is per browser session (one browser tab, Gradio's ``session_hash``): the collection's shared
pipeline gets one hit filter, :class:`SessionDefenses`, that applies to each question the defense its
asking session switched on, and nothing for other sessions (other users, other tabs, the API). The session
is that of the Gradio event being handled (:func:`current_session`: the app's handlers run retrieval in the
event's own context), so the app passes nothing for it. The banner tells each session its defense and how
many sources it dropped from the session's last question. Outside a Gradio event (scripts, tests) the
session is ``None``, one session of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from heterag.core.errors import HeteragError
from heterag.core.results import Hit
from heterag.retrieval.hit_filters import HitFilter, RetrievalQuery, check_hit_filter

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


def current_session() -> str | None:
    """The Gradio session (``session_hash``: one browser tab) of the event being handled; None outside one."""
    try:
        from gradio.context import LocalContext
    except ImportError:  # no gradio: no sessions
        return None
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) if request is not None else None


@dataclass(frozen=True)
class DefenseOutcome:
    """What a session's chat defense did to its last question: the candidates it saw, the ``top_k`` the question
    asked, and the (document id, reason) of each dropped candidate that would have been among those ``top_k``
    (``dropped_top``) or anywhere among the candidates (``dropped``)."""

    defense: str
    candidates: int
    top_k: int
    dropped: tuple[tuple[str, str], ...]
    dropped_top: tuple[tuple[str, str], ...]
    at: float

    def line(self, collection: str) -> str:
        if not self.dropped:
            return (f"Defense {self.defense} (this browser tab only) dropped none of the sources of your last question "
                    f"to {collection}.")
        ids = ", ".join(dict.fromkeys(d for d, _ in self.dropped_top)) or "none of them"
        return (f"Defense {self.defense} (this browser tab only) dropped {len(self.dropped_top)} of the top {self.top_k} "
                f"sources of your last question to {collection} ({len(self.dropped)} of {self.candidates} candidates "
                f"checked): {ids}.")


class SessionDefenses:
    """The hit filter of one collection's shared pipeline that applies, to each question, the chat defense the
    asking session switched on (:func:`current_session`); questions of other sessions pass untouched. It
    records, per session, what the defense dropped from the last question (:meth:`outcome`)."""

    name = "chat defense"
    #: sessions remembered at most (the oldest is forgotten first)
    MAX_SESSIONS = 1000

    def __init__(self, collection: str):
        self.collection = collection
        self._lock = threading.Lock()
        self._chosen: OrderedDict[str | None, tuple[str, list[HitFilter]]] = OrderedDict()
        self._outcomes: OrderedDict[str | None, DefenseOutcome] = OrderedDict()

    def __repr__(self) -> str:
        return f"SessionDefenses({self.collection!r}, {len(self._chosen)} session(s))"

    def choose(self, session: str | None, name: str | None, filters: Sequence[HitFilter] = ()) -> None:
        """Switch defense ``name`` (its fitted ``filters``) on for ``session``; None: off."""
        with self._lock:
            self._outcomes.pop(session, None)
            if name is None:
                self._chosen.pop(session, None)
                return
            self._chosen[session] = (name, list(filters))
            self._chosen.move_to_end(session)
            while len(self._chosen) > self.MAX_SESSIONS:
                self._chosen.popitem(last=False)

    def chosen(self, session: str | None) -> str | None:
        """The defense ``session`` switched on (None: none)."""
        with self._lock:
            got = self._chosen.get(session)
        return got[0] if got else None

    def filters(self, session: str | None) -> list[HitFilter]:
        """The fitted hit filters of the defense ``session`` switched on (empty: none)."""
        with self._lock:
            got = self._chosen.get(session)
        return list(got[1]) if got else []

    def active(self) -> bool:
        with self._lock:
            return bool(self._chosen)

    def outcome(self, session: str | None) -> DefenseOutcome | None:
        with self._lock:
            return self._outcomes.get(session)

    @property
    def overfetch(self) -> int:  # read by the retriever in the asking session's context
        with self._lock:
            got = self._chosen.get(current_session())
        return max((int(f.overfetch) for f in got[1]), default=1) if got else 1

    def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Any) -> list[Hit]:
        session = current_session()
        with self._lock:
            got = self._chosen.get(session)
        if not got:
            return list(hits)
        name, filters = got
        kept, dropped = list(hits), []
        for f in filters:  # each filter sees what the previous one kept, as the retriever runs them
            out = []
            for h in f.filter(query, kept, pipeline):
                (dropped if h.dropped else out).append(h)
            kept = out
        top = {(h.doc_id, h.chunk_id) for h in list(hits)[:query.k]}
        outcome = DefenseOutcome(name, len(hits), query.k, tuple((h.doc_id, h.dropped) for h in dropped),
                                 tuple((h.doc_id, h.dropped) for h in dropped if (h.doc_id, h.chunk_id) in top), time.time())
        with self._lock:
            self._outcomes[session] = outcome
            self._outcomes.move_to_end(session)
            while len(self._outcomes) > self.MAX_SESSIONS:
                self._outcomes.popitem(last=False)
        return [*kept, *dropped]  # dropped hits carry their reason: the retriever leaves them out and reports them


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
    #: collection -> its per-session chat defenses (a hit filter on its pipeline while any session has one on)
    _sessions: dict[str, SessionDefenses] = field(default_factory=dict)
    #: (collection, defense) -> (the collection's item count when fitted, the fitted hit filters)
    _fitted: dict[tuple[str, str], tuple[int, list[HitFilter]]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def add_chat_overlay(self, overlay: ChatOverlay) -> None:
        if not isinstance(overlay, ChatOverlay):
            raise TypeError(f"{overlay!r} is not a ChatOverlay (banner, marks, defenses, defense_filters)")
        self.overlays.append(overlay)

    def collections(self) -> list[str]:
        return self.service.collections()

    # ---- used by the chat tab --------------------------------------------------------------
    def banner(self, collections: Sequence[str]) -> list[str]:
        """The banner lines of every overlay for ``collections`` (a failing overlay logs one line), then, for the
        asking session, its chat defense and what it dropped from the session's last question."""
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
        session = current_session()
        for name in dict.fromkeys(collections):
            disp = self._sessions.get(name)
            chosen = disp.chosen(session) if disp is not None else None
            if chosen is None:
                continue
            outcome = disp.outcome(session)
            out.append(outcome.line(name) if outcome is not None else
                       f"Defense {chosen} is on for this browser tab's questions to {name} (not for other tabs or users).")
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

    def set_chat_defense(self, collection: str, name: str | None, session: Any = ...) -> str:
        """Switch defense ``name`` on for the questions to ``collection`` from ``session`` (default: the session of
        the Gradio event being handled, :func:`current_session`; other sessions are not affected); None or
        "off": off again for that session. Returns a status line. Raises :class:`HeteragError` (one line) when
        it cannot be used there."""
        session = current_session() if session is ... else session
        pipe = self.service.pipeline(collection)
        if not name or name == "off":
            with self._lock:
                disp = self._sessions.get(collection)
                if disp is not None:
                    disp.choose(session, None)
                    if not disp.active():  # no session uses it: off the pipeline again
                        pipe.hit_filters = [f for f in pipe.hit_filters if f is not disp]
                        del self._sessions[collection]
            return f"no defense on this browser tab's questions to {collection}"
        owner = next((o for o in self.overlays if name in o.defenses()), None)
        if owner is None:
            raise HeteragError(f"unknown chat defense {name!r}; choose one of: {', '.join(self.defenses()) or 'none'}")
        filters = self._fit(collection, name, owner, pipe)
        with self._lock:
            disp = self._sessions.get(collection)
            if disp is None:
                disp = self._sessions[collection] = SessionDefenses(collection)
            disp.choose(session, name, filters)
            if not any(f is disp for f in pipe.hit_filters):
                pipe.hit_filters = [*pipe.hit_filters, check_hit_filter(disp)]  # one assignment: a question in flight
        return f"defense {name} is on for this browser tab's questions to {collection} (not for other tabs or users)"

    def _fit(self, collection: str, name: str, owner: ChatOverlay, pipe: Any) -> list[HitFilter]:
        """The fitted filters of defense ``name`` on ``collection``, fitted again only when its item count changed."""
        try:
            count = int(pipe.count())
        except Exception:  # a store that cannot count: fit again
            count = -1
        with self._lock:
            cached = self._fitted.get((collection, name))
        if cached is not None and cached[0] == count >= 0:
            return cached[1]
        filters = [check_hit_filter(f) for f in owner.defense_filters(collection, name)]
        with self._lock:
            self._fitted[(collection, name)] = (count, filters)
        return filters

    def chat_defense(self, collection: str, session: Any = ...) -> str | None:
        """The defense ``session`` (default: the current one) has on for ``collection`` (None: none)."""
        disp = self._sessions.get(collection)
        return disp.chosen(current_session() if session is ... else session) if disp is not None else None


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


__all__ = ["TAB_GROUP", "AppContext", "AppTab", "ChatOverlay", "DefenseOutcome", "SessionDefenses", "build_tab",
           "current_session", "load_tabs"]
