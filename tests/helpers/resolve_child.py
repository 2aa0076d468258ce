"""Child process for the resolver tests: resolve under several environments, print JSON.

argv[1]: JSON list of [CUDA_VISIBLE_DEVICES or null, CUDA_DEVICE_ORDER or null, options dict]
Set T_IMPORT_TORCH=1 to import torch first (T_TORCH_WITHOUT_HELPER=1: then take its
_get_nvml_device_index away, as torch 2.0 lacks it), T_CUINIT=1 to initialise CUDA first, T_FLIP_IN_TORCH=VALUE to set
CUDA_VISIBLE_DEVICES to VALUE the first time torch's helper is entered (torch's code runs unchanged: a profile
hook sees the call), as another thread of a program may change it at that moment; T_FLIP_AT=FILE:FUNCTION to do
it on entering another function (FILE: how its file name ends).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

if os.environ.get("T_IMPORT_TORCH"):
    import torch

    if os.environ.get("T_TORCH_WITHOUT_HELPER"):  # torch before 2.1, modelled (the torch20 tox env runs the real one)
        del torch.cuda._get_nvml_device_index
if os.environ.get("T_CUINIT"):
    import ctypes

    assert ctypes.CDLL("libcuda.so.1").cuInit(0) == 0

import gpuaffinity
from gpuaffinity.core.model import Answer

if os.environ.get("T_FLIP_IN_TORCH") is not None:
    import threading

    _where = os.environ.get("T_FLIP_AT", ":_get_nvml_device_index").split(":")  # FILE-ENDING:FUNCTION

    def _flip(frame, event, arg):
        if event == "call" and frame.f_code.co_name == _where[1] and frame.f_code.co_filename.endswith(_where[0]):
            os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.pop("T_FLIP_IN_TORCH")
            sys.setprofile(None)
            threading.setprofile(None)

    sys.setprofile(_flip)
    threading.setprofile(_flip)


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
