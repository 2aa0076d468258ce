"""The pure core in process: the device model, the cpulist grammar, the CUDA_VISIBLE_DEVICES grammar where the
recorded driver runs do not reach (MIG, FASTEST_FIRST order on mixed models); and the helpers that word
messages (errors.shown, notes).

Boundary cases of the grammars are in test_cpulist_edges.py and test_cvd_grammar_edges.py."""

from __future__ import annotations

import pytest

from gpuaffinity.core import notes as nt
from gpuaffinity.core.cvd import GpuIdentity, Visible, apply_cvd, match_uuid, strtoul32
from gpuaffinity.core.errors import shown
from gpuaffinity.core.model import (
    Abstain,
    Answer,
    GpuInfo,
    Inventory,
    MigInfo,
    PhysicalDevice,
    Verdict,
    normalize_bus_id,
)

MIG_A = MigInfo("MIG-11111111-2222-3333-4444-555555555555", 1, 0)
MIG_B = MigInfo("MIG-aaaaaaaa-2222-3333-4444-555555555555", 2, 0)
GPUS = (GpuInfo(0, "GPU-b9eccfb1-9bb7-c430-154d-cfd6d08463e0", "0000:06:00.0", "NVIDIA H200"),
        GpuInfo(1, "GPU-00eccfb1-9bb7-c430-154d-cfd6d08463e0", "0000:3b:00.0", "NVIDIA H200", (MIG_A, MIG_B)))


@pytest.mark.parametrize(("given", "want"), [
    ("00000000:3B:00.0", "0000:3b:00.0"), ("0000:3b:00.0", "0000:3b:00.0"), ("3b:00.0", "0000:3b:00.0"),
    ("0009:01:00.0\0", "0009:01:00.0"), (" 00000001:C1:00.0 ", "0001:c1:00.0"),
])
def test_bus_ids_normalise_to_the_sysfs_form(given, want):
    assert normalize_bus_id(given) == want


def test_inventory_lookups():
    inv = Inventory(GPUS)
    assert inv.by_uuid("gpu-B9ECCFB1-9bb7-c430-154d-cfd6d08463e0") is GPUS[0]
    assert inv.by_uuid("GPU-b9eccfb1") is None
    assert inv.by_bus("00000000:3B:00.0") is GPUS[1] and inv.by_bus("0000:3c:00.0") is None
    assert inv.mig_owner(MIG_B.uuid.upper().replace("MIG-", "mig-")) == (GPUS[1], MIG_B)
    assert inv.mig_owner("MIG-00000000-2222-3333-4444-555555555555") is None
    assert inv.uniform and inv.source == "nvml"
    mixed = Inventory((GPUS[0], GpuInfo(1, "GPU-1", "0000:07:00.0", "NVIDIA A10")), source="procfs")
    assert not mixed.uniform and mixed.source == "procfs"
    assert Inventory(()).uniform


def test_physical_device_to_dict_has_the_public_fields_only():
    dev = PhysicalDevice(2, 1, GPUS[1].uuid, GPUS[1].pci_bus_id, MIG_A.uuid, "NVIDIA H200", "cvd", ("cvd", "pci"),
                         ("torch",), True, ("cvd", "pci", "torch"), True, "procfs+device-nodes",
                         verdicts=(Verdict("cvd", 50, Answer(GPUS[1].uuid)),))
    assert dev.to_dict() == {
        "logical_id": 2, "nvml_index": 1, "uuid": GPUS[1].uuid, "pci_bus_id": "0000:3b:00.0", "mig_uuid": MIG_A.uuid,
        "name": "NVIDIA H200", "strategy": "cvd", "agreed": ["cvd", "pci"], "disagreed": ["torch"], "fallback": True,
        "answered": ["cvd", "pci", "torch"], "driver_asked": True, "inventory": "procfs+device-nodes"}
    assert dev == PhysicalDevice(2, 1, GPUS[1].uuid, GPUS[1].pci_bus_id, MIG_A.uuid, "NVIDIA H200", "cvd",
                                 ("cvd", "pci"), ("torch",), True, ("cvd", "pci", "torch"), True,
                                 "procfs+device-nodes")  # verdicts do not count in equality
    assert Abstain("why").quiet is False and Answer("GPU-x").mig_uuid is None and Verdict("a", 1, Abstain("b")).ran


def test_normalize_bus_id_keeps_what_it_does_not_strip():
    """Only white space and NUL are stripped: a malformed ID does not become a valid one, nor match a GPU."""
    assert normalize_bus_id("0000:3B:00.0X") == "0000:3b:00.0x"
    inv = Inventory((GpuInfo(0, "GPU-a", "0000:3b:00.0", "A100"),))
    assert inv.by_bus("0000:3B:00.0\0") is inv.gpus[0]
    assert inv.by_bus("0000:3B:00.0X") is None


def test_normalize_bus_id_refuses_an_extra_field():
    """The domain is what precedes the bus: an ID with one field too many has no hex domain and is refused."""
    with pytest.raises(ValueError):
        normalize_bus_id("0000:00:3b:00.0")


# ---- CUDA_VISIBLE_DEVICES where the recorded runs do not reach: MIG (modelled), FASTEST_FIRST, edges ---

M10 = MigInfo("MIG-10000000-0000-0000-0000-000000000000", 1, 0)
M11 = MigInfo("MIG-11000000-0000-0000-0000-000000000000", 2, 0)
M20 = MigInfo("MIG-20000000-0000-0000-0000-000000000000", 1, 0)
G = [GpuIdentity("GPU-a0000000-0000-0000-0000-000000000000"),
     GpuIdentity("GPU-b1000000-0000-0000-0000-000000000000", (M10, M11)),
     GpuIdentity("GPU-b2000000-0000-0000-0000-000000000000", (M20,))]


def visible(res):
    return [(d.gpu, d.mig) for d in res.devices]


@pytest.mark.parametrize(("cvd", "order", "devices", "error", "stopped"), [
    (None, None, [(2, 0), (0, None)], 0,
     'one MIG device a process: a second GPU in MIG mode ends the list'),
    (None, "PCI_BUS_ID", [(0, None), (1, 0)], 0,
     'one MIG device a process: a second GPU in MIG mode ends the list'),
    (None, "FASTEST_FIRST", [(2, 0), (0, None)], 0,
     'one MIG device a process: a second GPU in MIG mode ends the list'),
    ("0,1", "FASTEST_FIRST", [(2, 0), (0, None)], 0,
     ''),
    ("0,1", "PCI_BUS_ID", [(0, None), (1, 0)], 0,
     ''),
    ("2", "FASTEST_FIRST", [(1, 0)], 0,
     ''),
    ("3", None, [], 100,
     "entry 0 ('3') is out of range (this process's GPUs are numbered 0-2)"),
    ("0,x", "PCI_BUS_ID", [(0, None)], 0,
     "entry 1 ('x') is not a number"),
    (M11.uuid, None, [(1, 1)], 0,
     ''),
    ("MIG-11", None, [(1, 1)], 0,
     ''),
    ("MIG-1", None, [], 100,
     "entry 0 ('MIG-1') names no MIG instance"),
    (f"MIG-{G[1].uuid}/2/0", None, [(1, 1)], 0,
     ''),
    (f"MIG-GPU-{G[1].uuid[4:].upper()}/1/0", None, [(1, 0)], 0,
     ''),
    (f"MIG-{G[1].uuid.replace('GPU-', 'gpu-')}/1/0", None, [], 100,
     "entry 0 ('MIG-gpu-b1000000-0000-0000-0000-000000000000/1/0') names no MIG instance"),
    (f"MIG-{G[1].uuid}/9/0", None, [], 100,
     "entry 0 ('MIG-GPU-b1000000-0000-0000-0000-000000000000/9/0') names no MIG instance"),
    (f"MIG-{G[1].uuid}", None, [], 100,
     "entry 0 ('MIG-GPU-b1000000-0000-0000-0000-000000000000') names no MIG instance"),
    (f"{M11.uuid},{M20.uuid}", None, [(1, 1)], 0,
     "entry 1 ('MIG-20000000-0000-0000-0000-000000000000'): one MIG device a process"),
    (f"{G[1].uuid}", None, [(1, 0)], 0,
     ''),
    ("GPU-b1,GPU-b2", None, [(1, 0)], 0,
     "entry 1 ('GPU-b2'): one MIG device a process: a second GPU in MIG mode ends the list"),
    ("GPU-b", None, [], 100,
     "entry 0 ('GPU-b') matches 2 GPU UUIDs (a prefix must be unique)"),
    ("GPU-a0,0", None, [(0, None)], 0,
     "entry 1 ('0') is not a GPU- or MIG- UUID"),
    ("GPU-a0,GPU-A0000000", None, [], 101,
     'a device is named twice'),
    (f"{M10.uuid},{G[1].uuid}", None, [(1, 0)], 0,
     "entry 1 ('GPU-b1000000-0000-0000-0000-000000000000'): one MIG device a process: a second GPU in MIG mode "
     "ends the list"),
    ("0,0", "PCI_BUS_ID", [], 101,
     'a device is named twice'),
    ("0,0", "FASTEST_FIRST", [(2, 0)], 0,
     "entry 1 ('0'): one MIG device a process: a second GPU in MIG mode ends the list"),
    ("", None, [], 100,
     "entry 0 ('') is not a number"),
    ("1", "pci_bus_id", [], 101,
     "CUDA_DEVICE_ORDER='pci_bus_id' is not FASTEST_FIRST or PCI_BUS_ID"),
])

def test_visible_devices_grammar(cvd, order, devices, error, stopped):
    res = apply_cvd(cvd, G, [2, 0, 1], order)
    assert (visible(res), res.error, res.stopped) == (devices, error, stopped)
    assert res.gpus == [g for g, _m in devices]


def test_a_malformed_mig_path_is_no_prefix_of_an_old_drivers_mig_uuid():
    """Drivers before R470 named MIG instances MIG-GPU-<uuid>/<gi>/<ci>: an entry that is not a whole path
    ('MIG-GPU-aa', a path cut short) names no instance, though the old UUID starts with it."""
    legacy = MigInfo("MIG-GPU-aa000000-0000-0000-0000-000000000000/3/0", 3, 0)
    gpus = [GpuIdentity("GPU-aa000000-0000-0000-0000-000000000000", (legacy,))]
    for cvd in ("MIG-GPU-aa", "MIG-GPU-aa000000-0000-0000-0000-000000000000/3"):
        res = apply_cvd(cvd, gpus, None, None)
        assert (visible(res), res.error) == ([], 100), cvd
    whole = apply_cvd("MIG-GPU-aa000000-0000-0000-0000-000000000000/3/0", gpus, None, None)
    assert visible(whole) == [(0, 0)]


def test_every_gpu_and_nothing_stopped_without_mig():
    plain = [GpuIdentity("GPU-a0000000-0000-0000-0000-000000000000"),
             GpuIdentity("GPU-c0000000-0000-0000-0000-000000000000")]
    res = apply_cvd(None, plain, [1, 0])
    assert (visible(res), res.error, res.stopped) == ([(1, None), (0, None)], 0, "")


def test_visible_devices_without_a_base_order_is_pci_order():
    assert visible(apply_cvd("0,1", G)) == [(0, None), (1, 0)]
    assert visible(apply_cvd("0,1", G, None, "FASTEST_FIRST")) == [(0, None), (1, 0)]
    assert apply_cvd("0", G) == apply_cvd("0", G, None, None)
    assert Visible(1) == Visible(1, None)


@pytest.mark.parametrize(("text", "value"), [
    ("7", 7), (" +7", 7), ("\t\n12x", 12), ("007", 7), ("4294967297", 1), ("-4294967295", 1), ("-1", 0xFFFFFFFF),
    ("18446744073709551615", 0xFFFFFFFF), ("18446744073709551616", 0xFFFFFFFF), ("99999999999999999999999", 0xFFFFFFFF),
    ("-18446744073709551616", 0xFFFFFFFF), ("x1", None), ("", None), ("+", None), ("- 1", None),
])
def test_strtoul32_reads_integers_as_c_does(text, value):
    assert strtoul32(text) == value


def test_uuid_prefix_matching():
    bodies = [g.uuid[4:] for g in G]
    assert match_uuid("a0", bodies) == 0 and match_uuid("B1000000-00", bodies) == 1
    assert match_uuid("b", bodies) is None and match_uuid("c", bodies) is None
    assert match_uuid("b100000000000000000000000000000000000000zz", bodies) == 1  # past the 32 digits: ignored
    assert match_uuid("b1-000000", bodies) == 1  # dashes ignored


@pytest.mark.parametrize(("given", "want"), [("000A:01:00.0", "000a:01:00.0"), ("0010:01:00.0", "0010:01:00.0"),
                                             ("00000010:C1:00.0", "0010:c1:00.0")])
def test_hex_domains(given, want):
    assert normalize_bus_id(given) == want


def test_strtoul32_negative_wraps_modulo_two_to_the_64():
    assert strtoul32("-18446744073709551615") == 1 and strtoul32("-18446744073709551614") == 2


# ---- read_cvd: when the reading needs the driver's confirmation, and why (in the test process, for mutmut) ---

P2 = [GpuIdentity("GPU-a0000000-0000-0000-0000-000000000000"), GpuIdentity("GPU-b1000000-0000-0000-0000-000000000000")]
G2 = [P2[0], GpuIdentity("GPU-b1000000-0000-0000-0000-000000000000", (M10, M11))]
UNDOC = ("rests on measured, undocumented driver behaviour: read as documented, entry {i} ({e!r}) is not in a "
         "documented plain form, but the driver's measured grammar reads {n} device(s) from it")
PREFIX_HOST = ("takes a UUID prefix as unique, but the driver compares it with every GPU of the host, and this "
               "process cannot list them all (the driver's /proc lists fewer GPUs than the nvidia driver has bound)")
MIG_PATH = "MIG-GPU-b1000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(("cvd", "gpus", "kw", "devices", "unsure", "unknown"), [
    ("0,1", P2, {}, [(0, None), (1, None)], "", ""),  # the documented plain form: nothing to check
    (" 1", P2, {}, [(1, None)], UNDOC.format(i=0, e=" 1", n=1), ""),
    ("01", P2, {}, [(1, None)], UNDOC.format(i=0, e="01", n=1), ""),
    ("1,0x", P2, {}, [(1, None), (0, None)], UNDOC.format(i=1, e="0x", n=2), ""),
    ("GPU-A0000000-0000-0000-0000-000000000000", P2, {}, [(0, None)],
     UNDOC.format(i=0, e="GPU-A0000000-0000-0000-0000-000000000000", n=1), ""),
    ("GPU-ffff", P2, {}, [], "ends at entry 0 ('GPU-ffff') matches no GPU UUID: whether that entry "
     "names a device rests on this process's GPU list alone", ""),
    ("GPU-a0", P2, {}, [(0, None)], "", ""),  # a prefix, every GPU of the host known
    ("GPU-a0", P2, {"host_complete": False}, [(0, None)], PREFIX_HOST, PREFIX_HOST),
    ("MIG-11", G2, {}, [(1, 1)], "takes a MIG UUID prefix as unique (modelled, not measured)", ""),
    (f"{MIG_PATH}/2/0", G2, {}, [(1, 1)], "", ""),
    (f"{MIG_PATH}/01/0", G2, {}, [(1, 0)], UNDOC.format(i=0, e=f"{MIG_PATH}/01/0", n=1), ""),
    ("0", P2, {"doubt": "the list is odd"}, [(0, None)], "rests on a GPU list in doubt: the list is odd", ""),
    ("0", P2, {"base_order": [1, 0]}, [(1, None)], "", ""),  # CUDA's own order (FASTEST_FIRST), both readings
    ("0", P2, {"base_order": [1, 0], "device_order": "PCI_BUS_ID"}, [(0, None)], "", ""),  # PCI order wins
    # a GPU of the host this process cannot open makes the prefix ambiguous, in both readings
    ("GPU-a", P2, {"hidden": ["GPU-a1000000-0000-0000-0000-000000000000"]}, [],
     "ends at entry 0 ('GPU-a') matches 2 GPU UUIDs (a prefix must be unique): whether that entry names a "
     "device rests on "
     "this process's GPU list alone", ""),
    ("0,1", P2, {"doubt": ""}, [(0, None), (1, None)], "", ""),
])
def test_read_cvd_says_when_and_why_the_driver_must_confirm(cvd, gpus, kw, devices, unsure, unknown):
    from gpuaffinity.core.cvd import read_cvd

    res = read_cvd(cvd, gpus, **kw)
    assert (visible(res), res.unsure, res.unknown) == (devices, unsure, unknown)


def test_read_cvd_on_a_gpu_in_mig_mode_without_instances():
    from gpuaffinity.core.cvd import read_cvd

    gpus = [GpuInfo(0, P2[0].uuid, "0000:01:00.0", "A100"), GpuInfo(1, P2[1].uuid, "0000:02:00.0", "A100", (), True)]
    res = read_cvd("0", gpus)
    assert visible(res) == [(0, None)]
    assert res.unsure == ("counts on a GPU in MIG mode showing no device, as NVML gives it no MIG instance this "
                          "process may use (modelled, not measured)")


# ---- messages: errors.shown (a value's repr, cut to its limit) and notes (a text with its kind) -------------------

def test_shown_is_the_repr_cut_to_its_limit():
    assert shown(None) == "None"
    assert shown("0,1") == "'0,1'"
    assert shown("x" * 10, limit=5) == "'xxxx... (10 characters)"


def test_shown_keeps_a_repr_of_exactly_200_characters_and_cuts_one_of_201():
    assert shown("a" * 198) == "'" + "a" * 198 + "'"
    assert shown("a" * 199) == "'" + "a" * 199 + "... (199 characters)"


def test_kind_of_reads_a_notes_kind_and_calls_a_plain_string_info():
    assert nt.kind_of(nt.attention("fewer cores than GPUs")) == "attention"
    assert nt.kind_of(nt.Note("split", "info")) == "info"
    assert nt.kind_of("from a plugin") == "info"


def test_a_notes_repr_shows_its_text_and_kind():
    assert repr(nt.Note("look here", "attention")) == "Note('look here', 'attention')"
