"""What reaches a terminal: the one place text from outside is made safe to print, and tables are laid out.

Every report (``resolve``, ``doctor``, ``check``, ``ray-check``) prints values it did not write: a GPU's name, a
worker's host name, CUDA_VISIBLE_DEVICES, a process's name, an error's text.  Any of them may hold a control
character; an escape sequence (``ESC [``, or the one-byte C1 introducer 0x9b) would move the cursor, recolour or
retitle the operator's terminal, and a newline would forge a line of the report.  ``clean`` escapes every C0 and
C1 control character and DEL, naming newline, tab and carriage return; every table cell and every message line
goes through it.

Owns: what reaches a terminal (escaping, tables).
"""

from __future__ import annotations

import sys

#: C0 controls, DEL and C1 controls, as escapes; the three common ones by name
ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))} | {10: "\\n", 9: "\\t", 13: "\\r"}


def clean(text: object) -> str:
    """``text`` with every control character escaped: one printable line."""
    return str(text).translate(ESCAPES)


def cut(text: str, limit: int = 200) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def say(text: str, limit: int = 2000) -> None:
    """One line on stderr, whatever the text holds: control characters escaped, the length capped."""
    line = clean(text)
    if len(line) > limit:
        line = line[:limit] + f"... ({len(line)} characters)"
    print(line, file=sys.stderr)


def out(text: str) -> None:
    """One line of a report on stdout, whatever its values hold (control characters escaped, so a value's newline
    forges no line); a leading newline is kept, as the blank line before a section."""
    if text.startswith("\n"):
        print()
        text = text[1:]
    print(clean(text))


def lay_out(rows: list[tuple[str, ...]], indent: str = "") -> list[str]:
    """The rows as aligned columns, two spaces apart, each cell cleaned first; no line for no rows."""
    if not rows:
        return []
    cells = [tuple(clean(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def cannot_run(verb: str, cmd: list[str], e: OSError) -> int:
    """One line, and the shell's status: 127 not found, 126 not executable."""
    if isinstance(e, FileNotFoundError):
        say(f"gpuaffinity: {verb}: command not found: {cmd[0]}")
        return 127
    say(f"gpuaffinity: {verb}: cannot run {cmd[0]}: {e.strerror or e}")
    return 126
