"""Hot reload: the served index is swapped for a newly published version without a failed request.

A request takes the engine current when it starts and keeps it to the end, so a swap never mixes
two versions inside one answer; the old version is freed when its last request finishes. A new
version is loaded beside the old one (reusing the model when the weights are the same) and only
swapped in once it has opened and passed the same checks as at start-up; if it fails, the old one
keeps serving and the failure is reported by /readyz, the admin endpoint and the log.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from indexer.layout import resolve_version_dir

from .engine import SearchEngine
from .settings import Settings

log = logging.getLogger("snap2shop.service")


@dataclass(frozen=True)
class ReloadOutcome:
    reloaded: bool
    version: str
    previous: str
    error: str | None = None
    at: str = ""

    def to_dict(self) -> dict:
        return {"reloaded": self.reloaded, "version": self.version, "previous": self.previous,
                "error": self.error, "at": self.at}


class EngineHolder:
    """The one mutable thing of the service: which loaded index (and model) answers searches."""

    def __init__(self, settings: Settings, engine: SearchEngine) -> None:
        self.settings = settings
        self._engine = engine
        self._reload_lock = threading.Lock()
        self.last_reload: ReloadOutcome | None = None
        self.on_reload = None  # called with (outcome, engine now served) after each attempt (metrics)

    @property
    def engine(self) -> SearchEngine:
        return self._engine

    def published_version(self) -> Path | None:
        """The version folder `current` names now, or None when it cannot be resolved."""
        try:
            return resolve_version_dir(self.settings.index)
        except (OSError, ValueError):
            return None

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Load the published version if it is not the one served (or always, with `force`)."""
        with self._reload_lock:  # one load at a time; a second caller waits and finds it done
            current = self._engine
            published = self.published_version()
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            if not force and published is not None and published == current.index.version_dir:
                return ReloadOutcome(False, current.version, current.version, None, now)
            if published is None and not force:
                outcome = ReloadOutcome(False, current.version, current.version,
                                        f"no index version is published under {self.settings.index}", now)
                self.last_reload = outcome
                return outcome
            try:
                fresh = SearchEngine.from_settings(self.settings, reuse=current.embedder)
            except Exception as exc:  # any failure keeps the old index serving
                outcome = ReloadOutcome(False, current.version, current.version, str(exc), now)
                log.error("reload refused, still serving %s: %s", current.version, exc)
            else:
                self._engine = fresh
                outcome = ReloadOutcome(True, fresh.version, current.version, None, now)
                log.info("reloaded: now serving %s (was %s)", fresh.version, current.version)
            self.last_reload = outcome
            if self.on_reload is not None:
                self.on_reload(outcome, self._engine)
            return outcome

    async def watch(self, interval_s: float) -> None:
        """Poll `current` and reload when it names another version (runs until cancelled)."""
        failed_version: Path | None = None
        while True:
            await asyncio.sleep(interval_s)
            published = self.published_version()
            if published is None or published == self._engine.index.version_dir or published == failed_version:
                continue
            outcome = await asyncio.to_thread(self.reload)
            # A version that failed to load is not retried every tick; a newer one will be.
            failed_version = published if outcome.error else None
