"""Notes with a kind: what the command line says out loud is chosen by kind, never by matching words.

A note is a ``str`` (every place that shows or compares notes keeps working), with a ``kind``:

* ``"info"``: how the answer was reached (a file preferred to another, a span of nodes, a split): shown by
  ``--dry-run``, ``doctor`` and ``resolve``;
* ``"attention"``: the binding is weaker than the mode asks, and a user who did not ask for details should
  still hear it: no NUMA preference, CPUs or memory nodes this process may not use, fewer cores than GPUs,
  a plan cut to the real affinity mask.  ``gpuaffinity bind`` prints these on stderr before running the
  command.
"""

from __future__ import annotations

KINDS = ("info", "attention")


class Note(str):
    """A note's text, with its ``kind`` (see the module's docstring)."""

    kind: str

    def __new__(cls, text: str, kind: str = "info") -> Note:
        if kind not in KINDS:
            raise ValueError(f"unknown note kind {kind!r}: choose one of {', '.join(KINDS)}")
        note = super().__new__(cls, text)
        note.kind = kind
        return note

    def __repr__(self) -> str:
        return f"Note({str(self)!r}, {self.kind!r})"


def attention(text: str) -> Note:
    """A note the command line says out loud (``kind="attention"``)."""
    return Note(text, "attention")


def kind_of(note: str) -> str:
    """A note's kind; a plain string (from a plugin or older code) is ``"info"``."""
    return getattr(note, "kind", "info")
