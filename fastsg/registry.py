"""Append-only name -> dense index maps (rule, group, region and instance ids)."""
from __future__ import annotations

import numpy as np


class NameRegistry:
    """Append-only name -> index map: an index never changes meaning."""

    def __init__(self, names=()):
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        for n in names:
            self.get(n)

    def get(self, name: str) -> int:
        """The name's index, added at the end if new."""
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i

    def __len__(self):
        return len(self.names)


class MappedRegistry(NameRegistry):
    """A ``NameRegistry`` with a vectorised map from a caller's name tuple (e.g.
    ``Result.rule_names``, which only ever grows) to its own indexes."""

    def __init__(self, names=()):
        super().__init__(names)
        self._seen: tuple = ()
        self._map = np.zeros(0, np.int64)

    def map(self, names: tuple) -> np.ndarray:
        """int64[len(names)]: the registry index of each of ``names`` (added if new)."""
        if names is self._seen:
            return self._map
        n = len(self._seen)
        if len(names) >= n and names[:n] == self._seen:      # the usual case: names grew
            self._map = np.concatenate((self._map, self._indexes(names[n:])))
        else:
            self._map = self._indexes(names)
        self._seen = names
        return self._map

    def _indexes(self, names) -> np.ndarray:
        """int64 index of each of ``names``, the new ones added in order of first
        appearance.  An empty registry takes distinct names as they come (indexes 0..n-1,
        one dict built at once): a new flow log maps an engine's 10k rule names so in
        1.5 ms, against 2.5-4.7 name by name."""
        if not self.index:
            fresh = dict(zip(names, range(len(names))))
            if len(fresh) == len(names):
                self.index = fresh
                self.names = list(names)
                return np.arange(len(names), dtype=np.int64)
        return np.array([self.get(x) for x in names], np.int64)
