"""Nebula-Edge: a peer-to-peer WebAssembly function mesh."""

__version__ = "0.1.0"

__all__ = ["__version__"]
