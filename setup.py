"""Build step: the README as the package index shows it (the long description), and the project URLs.

Everything else is in pyproject.toml.  README.md links the docs relatively (``docs/resolving.md``): that
works in a checkout and in the unpacked source distribution, which ships ``docs/``, but on a package index
page a relative link points into the index itself, and breaks.  So the copy of the README that goes into
the package metadata has each relative link rewritten:

- once ``[tool.gpuaffinity] home`` in pyproject.toml names the project's public repository, to
  ``{home}/blob/main/PATH``; the project URLs (Homepage, Source, Documentation) come from the same value;
- until then, to plain text that names the file in the source distribution: no link rather than a dead
  one, and no project URLs rather than made-up ones.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# [text](target) where target is a path in this repository: no scheme, not absolute, not an #anchor
RELATIVE_LINK = re.compile(r"\[([^\]\n]+)\]\((?![a-zA-Z][a-zA-Z0-9+.-]*:|/|#)([^)\s]+)\)")


def home_url(pyproject: Path = HERE / "pyproject.toml") -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    with open(pyproject, "rb") as f:
        return tomllib.load(f).get("tool", {}).get("gpuaffinity", {}).get("home", "").rstrip("/")


def _offline(m: re.Match) -> str:
    text, path = m[1], m[2].removeprefix("./")
    if text.strip("`") == path:
        return f"`{path}` (in the source distribution)"
    return f"{text} (`{path}` in the source distribution)"


def index_readme(text: str, home: str) -> str:
    """README.md with every relative link made safe for a package index page (see the module doc)."""
    if home:
        return RELATIVE_LINK.sub(lambda m: f"[{m[1]}]({home}/blob/main/{m[2].removeprefix('./')})", text)
    return RELATIVE_LINK.sub(_offline, text)


def project_urls(home: str) -> dict[str, str]:
    if not home:
        return {}
    return {"Homepage": home, "Source": home, "Documentation": f"{home}/blob/main/README.md#documentation"}


if __name__ == "__main__":
    from setuptools import setup

    home = home_url()
    setup(long_description=index_readme((HERE / "README.md").read_text(encoding="utf-8"), home),
          long_description_content_type="text/markdown", project_urls=project_urls(home))
