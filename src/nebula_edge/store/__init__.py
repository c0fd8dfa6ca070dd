"""The content-addressed module store on disk. Synchronous, no network."""

from nebula_edge.store.modules import ModuleStore

__all__ = ["ModuleStore"]
