"""What every interaction works with: settings, the store and the search registry.

Assembled once by :func:`server.create_app` (or the CLI) and passed to the domain functions;
they hold no global state of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.cache import QueryCache
from server.config import Config
from server.search.registry import Registry
from server.store.base import Store

__all__ = ["FhirContext"]


@dataclass
class FhirContext:
    config: Config
    store: Store
    registry: Registry
    cache: QueryCache | None = None

    @property
    def lenient(self) -> bool:
        return self.config.validation == "lenient"
