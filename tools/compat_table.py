#!/usr/bin/env python3
"""docs/compat.md from tools/torch_compat.py's results (one JSON file per tox env).

    python3 tools/compat_table.py .tox/compat docs/compat.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from torch_compat import agrees  # noqa: E402


def cell(answers: list) -> str:
    parts = []
    for a in answers:
        parts.append(str(a) if isinstance(a, int) else "✗")
    while parts and parts[-1] == "✗":
        parts.pop()
    return "[" + ", ".join(parts) + "]" if parts else "refuses"


def main() -> int:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    runs = [r for r in runs if r.get("torch")]
    runs.sort(key=lambda r: [int(x) if x.isdigit() else 0 for x in r["torch"].split("+")[0].split(".")])
    real = {c["label"]: c for c in json.loads(
        (ROOT / "tests/data/real-h200x4-2026-11-27b/torch_cases.json").read_text())}
    cases = runs[-1]["cases"] if runs else []
    lines = ["# torch compatibility", "",
             "`torch.cuda._get_nvml_device_index` across torch releases, next to the CUDA driver's own answer.",
             "Made by `tox -m matrix` (the tox envs run the whole test suite against the simulator, then",
             "`tools/torch_compat.py`), then `tools/compat_table.py`. Each column asks torch for logical",
             "devices 0-4 on every `CUDA_VISIBLE_DEVICES` value recorded from the real driver (dataset",
             "`real-h200x4-2026-11-27b`, replayed on its captured machine, `CUDA_DEVICE_ORDER=PCI_BUS_ID`).",
             "`[a, b]` lists the NVML indices torch returns for devices 0, 1, …; `refuses` means it raised for",
             "all. **Bold** marks an answer that differs from the driver's: torch answering for a device",
             "the driver does not show, missing one it shows, or naming another GPU. Where torch is wrong,",
             "gpuaffinity's chain still gives the driver's answer (`tests/test_torch_compat.py`)."]
    suites = {}
    for xml in sorted(folder.glob("*.xml")):
        import xml.etree.ElementTree as ET
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is not None:
            a = suite.attrib
            suites[xml.stem] = (int(a.get("tests", 0)), int(a.get("failures", 0)) + int(a.get("errors", 0)),
                                int(a.get("skipped", 0)))
    if suites:
        lines += ["", "The full test suite in each tox env, the same run:", "",
                  "| tox env | tests | failed | skipped |", "|---|---|---|---|"]
        lines += [f"| {env} | {t} | {f} | {s} |" for env, (t, f, s) in suites.items()]
        lines += ["", "| torch | Python | date | helper | cases where it differs from the driver |",
                  "|---|---|---|---|---|"]
    else:
        lines += ["", "| torch | Python | date | helper | cases where it differs from the driver |",
                  "|---|---|---|---|---|"]
    for r in runs:
        wrong = sum(1 for c in r["cases"] if r["has_helper"] and not agrees(c))
        lines.append(f"| {r['torch']} | {r['python']} | {r['date']} | {'yes' if r['has_helper'] else 'no'} | "
                     f"{wrong if r['has_helper'] else '— (the chain answers without it)'} |")
    lines.append("| 2.11.0+cu130 (real 4x H200, in `tests/data/real-h200x4-2026-11-27b/torch_cases.json`) | 3.12.3 "
                 "| 2026-11-27 | yes | see the last column |")
    lines += ["", "| case | CUDA_VISIBLE_DEVICES | driver | " + " | ".join(f"torch {r['torch']}" for r in runs)
              + " | torch 2.11 (real) |", "|---|---|---|" + "---|" * (len(runs) + 1)]
    for i, c in enumerate(cases):
        driver = c["driver"] if isinstance(c["driver"], str) else "[" + ", ".join(map(str, c["driver"])) + "]"
        row = [c["label"], "`" + json.dumps(c["cvd"])[1:-1][:48] + "`" if c["cvd"] is not None else "*(unset)*",
               driver.replace("cuInit 100", "none").replace("cuInit 101", "cuInit fails")]
        for r in runs:
            rc = r["cases"][i]
            if not r["has_helper"]:
                row.append("—")
                continue
            text = cell(rc.get("answers", []))
            row.append(text if agrees(rc) else f"**{text}**")
        rt = real.get(c["label"])
        if rt:
            text = cell([a if isinstance(a, int) else "x" for a in rt["helper"]])
            row.append(text if agrees({"driver": c["driver"], "answers": [a if isinstance(a, int) else "x"
                                                                          for a in rt["helper"]]}) else f"**{text}**")
        else:
            row.append("")
        lines.append("| " + " | ".join(row) + " |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(runs)} torch releases x {len(cases)} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
