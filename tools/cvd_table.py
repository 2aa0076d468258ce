#!/usr/bin/env python3
"""Render the recorded CUDA_VISIBLE_DEVICES cases as the Markdown table in docs/cvd-grammar.md.

    python3 tools/cvd_table.py tests/data/real-h200x4-2026-11-27/cvd_cases.json

Prints the table; tests/test_docs.py checks that the docs hold exactly this output.
"""

from __future__ import annotations

import json
import sys

NAMES = {0: "", 100: "NO_DEVICE", 101: "INVALID_DEVICE"}


def render(data: dict) -> str:
    uuids = data["uuids"]
    buses = data["bus_ids"]

    def show(cvd: str | None) -> str:
        if cvd is None:
            return "*(unset)*"
        text = cvd
        for i, u in enumerate(uuids):
            text = text.replace(u, f"⟨U{i}⟩")
            text = text.replace(u[4:].upper(), f"⟨U{i} upper-case hex⟩")
            text = text.replace(u[4:], f"⟨U{i} without GPU-⟩")
        return "`" + json.dumps(text, ensure_ascii=False)[1:-1].replace("|", "\\|") + "`"

    def result(case: dict) -> str:
        if case["cuInit"]:
            return f"none: cuInit {case['cuInit']} {NAMES.get(case['cuInit'], '')}".rstrip()
        return "[" + ", ".join(str(buses.index(d["pci_bus_id"])) for d in case["devices"]) + "]"

    by_label: dict[str, dict] = {}
    for c in data["cases"]:
        by_label.setdefault(c["label"], {"cvd": c["cvd"]})[c["order"] or "unset"] = c
    lines = ["| case | CUDA_VISIBLE_DEVICES | order unset | FASTEST_FIRST | PCI_BUS_ID |", "|---|---|---|---|---|"]
    for label, row in by_label.items():
        cells = [result(row[k]) if k in row else "" for k in ("unset", "FASTEST_FIRST", "PCI_BUS_ID")]
        if label.startswith("order_"):
            only = next(c for c in data["cases"] if c["label"] == label)
            cells = [f"CUDA_DEVICE_ORDER=`{only['order']}`: {result(only)}", "", ""]
        lines.append(f"| {label} | {show(row['cvd'])} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- ⟨U{i}⟩ = `{u}` (NVML index {i}, PCI {buses[i]})" for i, u in enumerate(uuids)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(json.load(open(sys.argv[1]))), end="")
