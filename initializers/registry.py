"""The initializers an administrator defined, as last seen: fed by a ConfigMap watch, read by
every admission request. Thread-safe; no I/O."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec import Initializer, InvalidInitializer, initializer_name, parse


@dataclass(frozen=True)
class Snapshot:
    usable: Mapping[str, Initializer] = field(default_factory=dict)
    broken: Mapping[str, str] = field(default_factory=dict)  # name -> why it cannot be used


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # ConfigMap name -> (initializer name, parsed initializer or the reason it is unusable)
        self._entries: dict[str, tuple[str, Initializer | str]] = {}
        self._snapshot = Snapshot()
        self.synced = threading.Event()  # set once the first full list arrived

    @staticmethod
    def _entry(configmap: Mapping[str, Any]) -> tuple[str, Initializer | str] | None:
        name = initializer_name(configmap)
        if name is None:
            return None
        try:
            return name, parse(name, configmap)
        except InvalidInitializer as exc:
            return name, str(exc)

    def _publish(self) -> None:
        usable: dict[str, Initializer] = {}
        broken: dict[str, str] = {}
        sources: dict[str, list[str]] = {}
        for cm_name, (name, value) in sorted(self._entries.items()):
            sources.setdefault(name, []).append(cm_name)
            if isinstance(value, str):
                broken[name] = value
            else:
                usable[name] = value
        for name, cms in sources.items():
            if len(cms) > 1:  # which one would win is a guess: refuse both until resolved
                usable.pop(name, None)
                broken[name] = f"defined by more than one ConfigMap: {', '.join(cms)}"
        self._snapshot = Snapshot(usable, broken)

    def replace(self, configmaps: Iterable[Mapping[str, Any]]) -> dict[str, str]:
        """Start over from a full list; return {ConfigMap name: problem} for unusable ones."""
        with self._lock:
            self._entries = {}
            for cm in configmaps:
                if (entry := self._entry(cm)) is not None:
                    self._entries[cm["metadata"]["name"]] = entry
            self._publish()
        self.synced.set()
        return {cm: v for cm, (_, v) in self._entries.items() if isinstance(v, str)}

    def upsert(self, configmap: Mapping[str, Any]) -> str | None:
        """Take a created or edited ConfigMap; return the problem when it is unusable."""
        with self._lock:
            cm_name = configmap["metadata"]["name"]
            entry = self._entry(configmap)
            if entry is None:
                self._entries.pop(cm_name, None)  # e.g. its marking label was removed
            else:
                self._entries[cm_name] = entry
            self._publish()
        return entry[1] if entry is not None and isinstance(entry[1], str) else None

    def delete(self, configmap: Mapping[str, Any]) -> None:
        with self._lock:
            self._entries.pop(configmap["metadata"]["name"], None)
            self._publish()

    def snapshot(self) -> Snapshot:
        return self._snapshot  # replaced whole under the lock, so readers need none
