"""How gpuaffinity starts a Python child of its own: isolated, so the caller's directory cannot inject code.

``python -m gpuaffinity…`` puts the working directory first on the child's
``sys.path``: a ``json.py``, ``ctypes.py`` or ``cuda/`` there would run inside
the child, as whoever runs gpuaffinity (often root).  Every child of ours runs
``python -I`` (no working directory, no PYTHONPATH, no user site) and is told
where this package lives, nothing else.  The command it may run afterwards
(``gpuaffinity bind … -- CMD``) gets the caller's environment unchanged.
"""

from __future__ import annotations

import os
import sys

#: the folder holding the gpuaffinity package (src/ in a checkout, site-packages when installed)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_argv(code: str, *args: str) -> list[str]:
    """argv for ``code`` in an isolated interpreter that can import gpuaffinity; ``sys.argv[1:]`` there is
    ``args``."""
    boot = f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); del sys.argv[1]; " + code
    return [sys.executable, "-I", "-c", boot, PACKAGE_PARENT, *args]


def cli_argv(*args: str) -> list[str]:
    """argv for ``gpuaffinity ARGS`` in an isolated interpreter."""
    return python_argv("from gpuaffinity.cli import main; raise SystemExit(main())", *args)
