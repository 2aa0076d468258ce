"""Run a function in a child forked from the test process: binding and NVML are process-wide, and a child runs
the very code the parent imported (so a mutation run that changes it in memory is seen there too)."""

from __future__ import annotations

import json
import os
import traceback


def forked(fn, *args):
    """fn(*args) in a forked child: {"value": ...}, {"raised": "Type: message", "trace": ...} or {"signal": N}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = {"value": fn(*args)}
        except BaseException as e:  # reported to the parent
            out = {"raised": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        os.write(w, json.dumps(out, default=lambda x: sorted(x) if isinstance(x, (set, frozenset)) else repr(x))
                 .encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return json.loads(data)


def value(out):
    """The child's value; fails with its traceback (or the signal) when it raised or was killed."""
    assert "raised" not in out and "signal" not in out, out.get("trace", out)
    return out["value"]
