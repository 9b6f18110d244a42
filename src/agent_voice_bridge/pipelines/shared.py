"""Models that calls share: loaded once per process, and kept only while a chain or a call holds them.

A stage's ``warm_up`` returns what it loaded and its :class:`~agent_voice_bridge.pipelines.chain.Chain`
keeps it (``Chain.held``); a call's service holds the model it runs on. This cache finds a model only
while one of them still does, so a reload that drops the last chain naming a model lets the model go once
the last call on that chain ends, instead of keeping every model a configuration ever named until the
process exits.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Model = TypeVar("Model")


class SharedModels(Generic[Model]):
    """``get(key, load)``: the loaded model for ``key`` if something still holds it, else ``load()`` now."""

    def __init__(self) -> None:
        self._models: weakref.WeakValueDictionary[Hashable, Model] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # one load at a time: two threads asking for one model load it once

    def get(self, key: Hashable, load: Callable[[], Model]) -> Model:
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = load()
                self._models[key] = model
            return model

    def __len__(self) -> int:
        return len(self._models)
