"""Child process for the resolver tests: resolve under several environments, print JSON.

argv[1]: JSON list of [CUDA_VISIBLE_DEVICES or null, CUDA_DEVICE_ORDER or null, options dict]
Set T_IMPORT_TORCH=1 to import torch first, T_CUINIT=1 to initialise CUDA first.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

if os.environ.get("T_IMPORT_TORCH"):
    import torch  # noqa: F401
if os.environ.get("T_CUINIT"):
    import ctypes

    assert ctypes.CDLL("libcuda.so.1").cuInit(0) == 0

import gpuaffinity
from gpuaffinity.core.model import Answer


def one(options: dict) -> dict:
    rec: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            devices = gpuaffinity.resolve_all(**options)
            rec["devices"] = []
            for d in devices:
                row = d.to_dict()
                row["verdicts"] = {v.strategy: (v.result.uuid if isinstance(v.result, Answer) else None,
                                                v.ran, getattr(v.result, "reason", "") or v.result.detail)
                                   for v in d.verdicts}
                rec["devices"].append(row)
        except gpuaffinity.GpuAffinityError as e:
            rec["error"] = type(e).__name__
            rec["message"] = str(e)
    rec["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
    return rec


out = []
for cvd, order, options in json.loads(sys.argv[1]):
    for var, value in (("CUDA_VISIBLE_DEVICES", cvd), ("CUDA_DEVICE_ORDER", order)):
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    out.append(one(options))
print(json.dumps(out))
