"""Built-in strategies, each a plugin in a module of its own (called directly: gpuaffinity.core.plugins)."""

from __future__ import annotations


def builtin_plugins() -> list[tuple[str, object]]:
    from gpuaffinity.resolvers import cvd, pci, torch_helper

    return [("pci", pci), ("cvd", cvd), ("torch", torch_helper)]
