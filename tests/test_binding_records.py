"""The binding record a bound process carries for `gpuaffinity check` (gpuaffinity.intent), read and written in this
process: every field it keeps, every way a damaged or forged record is refused, and the memfd's life."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpuaffinity import intent
from gpuaffinity.numa.bind import BindRecord

GOOD = {"v": 1, "how": "exec", "pid": 4242, "pci_bus_id": "0000:1b:00.0", "logical_id": 3, "mode": "node",
        "memory": "preferred", "bind_cpus": "0-3,8", "memory_nodes": [0], "numa_nodes": [0, 1], "applied": True,
        "failures": ["a", "b"]}


def rec(**changes):
    base = dict(logical_id=2, pci_bus_id="0000:1b:00.0,0000:43:00.0", mode="socket", memory="bind",
                memory_nodes=(0, 1), bind_cpus=frozenset({0, 1, 2, 7}), numa_nodes=(0,), cpus_applied=True,
                failures=["x" * 400] + [f"f{i}" for i in range(10)])
    base.update(changes)
    return BindRecord(**base)


def test_encode_keeps_every_field_and_decode_gives_them_back():
    text = intent.encode(rec(), "exec")
    assert " " not in text and json.loads(text) == {
        "v": 1, "how": "exec", "pid": os.getpid(), "pci_bus_id": "0000:1b:00.0,0000:43:00.0", "logical_id": 2,
        "mode": "socket", "memory": "bind", "bind_cpus": "0-2,7", "memory_nodes": [0, 1], "numa_nodes": [0],
        "applied": True, "failures": ["x" * 300] + [f"f{i}" for i in range(7)]}
    got = intent.decode(text)
    assert got == intent.Intent("0000:1b:00.0,0000:43:00.0", "socket", "bind", frozenset({0, 1, 2, 7}), (0, 1),
                                (0,), True, tuple(["x" * 300] + [f"f{i}" for i in range(7)]), "exec", os.getpid(), 2)
    assert got.buses == ["0000:1b:00.0", "0000:43:00.0"]
    assert json.loads(intent.exec_env(rec(cpus_applied=False, failures=[])))["how"] == "exec"
    assert json.loads(intent.exec_env(rec(cpus_applied=False, failures=[])))["applied"] is False


def test_decode_reads_a_record_as_written_by_another_version_of_the_fields():
    got = intent.decode(json.dumps({**GOOD, "logical_id": "GPU-1234", "how": "in-process" * 5,
                                    "failures": [7, "x" * 500]}))
    assert (got.logical_id, got.how, got.failures) == ("GPU-1234", ("in-process" * 5)[:20], ("7", "x" * 300))
    assert intent.decode(json.dumps({**GOOD, "logical_id": True})).logical_id is None
    assert intent.decode(json.dumps({**GOOD, "logical_id": [1]})).logical_id is None
    assert intent.decode(json.dumps({k: v for k, v in GOOD.items() if k != "logical_id"})).logical_id is None
    assert intent.decode(json.dumps({**GOOD, "bind_cpus": ""})).bind_cpus == frozenset()
    assert intent.decode(json.dumps({**GOOD, "memory_nodes": [], "numa_nodes": [4095]})).numa_nodes == (4095,)


@pytest.mark.parametrize(("changes", "message"), [
    ({"v": 2}, "the record is not a version-1 gpuaffinity binding"),
    ({"v": True}, "the record is not a version-1 gpuaffinity binding"),
    ({"pci_bus_id": 5}, "the record's 'pci_bus_id' is missing or not a str"),
    ({"pci_bus_id": ""}, "the record's pci_bus_id '' is not PCI bus ids"),
    ({"pci_bus_id": "0000:1b:00.0,"}, "the record's pci_bus_id '0000:1b:00.0,' is not PCI bus ids"),
    ({"pci_bus_id": "0000:1b:00.0x"}, "the record's pci_bus_id '0000:1b:00.0x' is not PCI bus ids"),
    ({"pci_bus_id": "1b:00."}, "the record's pci_bus_id '1b:00.' is not PCI bus ids"),
    ({"pci_bus_id": "0" * 17}, "the record's pci_bus_id '00000000000000000' is not PCI bus ids"),
    ({"pci_bus_id": ",".join(["0000:1b:00.0"] * 160)}, "the record's pci_bus_id '0000:1b:00.0,0000:1b:00.0,"),
    ({"mode": "rack"}, "the record's mode 'rack' or memory 'preferred' is unknown"),
    ({"memory": "x" * 40}, f"the record's mode 'node' or memory '{'x' * 20}' is unknown"),
    ({"mode": None}, "the record's 'mode' is missing or not a str"),
    ({"memory_nodes": [0, True]}, "the record's 'memory_nodes' is not node numbers"),
    ({"memory_nodes": [-1]}, "the record's 'memory_nodes' is not node numbers"),
    ({"numa_nodes": [4096]}, "the record's 'numa_nodes' is not node numbers"),
    ({"numa_nodes": "0"}, "the record's 'numa_nodes' is missing or not a list"),
    ({"bind_cpus": "0-"}, "the record's bind_cpus is not a CPU list ("),
    ({"bind_cpus": 3}, "the record's 'bind_cpus' is missing or not a str"),
    ({"failures": "x"}, "the record's 'failures' is missing or not a list"),
    ({"how": 1}, "the record's 'how' is missing or not a str"),
    ({"pid": "1"}, "the record's 'pid' is missing or not a int"),
    ({"pid": True}, "the record's 'pid' is missing or not a int"),
    ({"applied": 1}, "the record's 'applied' is missing or not a bool"),
])
def test_a_damaged_or_forged_record_is_refused_with_what_is_wrong(changes, message):
    with pytest.raises(ValueError) as e:
        intent.decode(json.dumps({**GOOD, **changes}))
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize(("text", "message"), ids=["large", "broken", "deep", "list"], argvalues=[
    ("x" * 65537, "the record is larger than 64 KiB"),
    ("{", "the record is not JSON ("),
    ("[" * 60000, "the record is not JSON (nested too deep)"),
    ("[1]", "the record is not a version-1 gpuaffinity binding"),
])
def test_a_record_that_is_not_one_is_refused(text, message):
    with pytest.raises(ValueError) as e:
        intent.decode(text)
    assert str(e.value).startswith(message)
    assert intent.decode(json.dumps(GOOD).ljust(65536)).pid == 4242  # 64 KiB itself is still read


def _memfds() -> list[str]:
    out = []
    for n in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            continue
        if target.startswith("/memfd:gpuaffinity-binding"):
            out.append(n)
    return out


def test_publish_replaces_the_memfd_withdraw_drops_it_and_current_reads_it(monkeypatch):
    monkeypatch.setattr(intent, "_fd", None)
    monkeypatch.setattr(intent, "_text", None)
    monkeypatch.setattr(intent, "_started_with", lambda: None)
    assert intent.current() is None and _memfds() == []
    intent.publish(rec())
    (first,) = _memfds()
    with open(f"/proc/self/fd/{first}") as f:
        assert json.loads(f.read())["how"] == "in-process"
    assert os.get_inheritable(int(first)) is False  # MFD_CLOEXEC: a program this process execs has none
    assert intent.current().pci_bus_id == "0000:1b:00.0,0000:43:00.0"
    intent.publish(rec(pci_bus_id="0000:43:00.0"))
    (second,) = _memfds()
    assert intent.current().pci_bus_id == "0000:43:00.0"
    intent.withdraw()
    assert _memfds() == [] and intent.current() is None
    intent.withdraw()  # twice: nothing to drop, no error
    monkeypatch.setattr(intent, "_started_with", lambda: json.dumps(GOOD))
    assert intent.current().pid == 4242  # the record the process was started with
    monkeypatch.setattr(intent, "_started_with", lambda: "damaged")
    assert intent.current() is None


def test_the_record_a_process_was_started_with_is_read_from_its_proc_environ(monkeypatch):
    monkeypatch.setenv("GPUAFFINITY_BOUND", "changed since")
    from gpuaffinity import proc

    assert intent._started_with() == proc.read_environ("/proc/self").get("GPUAFFINITY_BOUND")
    assert intent._started_with() != "changed since"
    monkeypatch.setattr(proc, "read_environ", lambda where: (_ for _ in ()).throw(PermissionError(13, "no")))
    assert intent._started_with() == "changed since"  # /proc unreadable: what os.environ holds


@pytest.mark.parametrize(("bus", "ok"), [("0:1b:0", False), ("0:1b:00", True), ("0000:1b:00.0", True),
                                         ("00000000:1B:00.0", True), ("000000000:1b:00.0", False),
                                         ("0000:1g:00.0", False), ("0000:1X:00.0", False)])
def test_what_passes_for_a_bus_id_in_a_record(bus, ok):
    assert intent._bus_like(bus) is ok


def test_the_lengths_a_record_keeps():
    assert intent.decode(json.dumps({**GOOD, "failures": [str(i) for i in range(9)]})).failures == \
        tuple(str(i) for i in range(8))
    two_thousand = ",".join(["0000:1b:00.0"] * 153) + ",0000:1b:00."  # 2000 characters: still read
    assert len(two_thousand) == 2000 and intent.decode(json.dumps({**GOOD, "pci_bus_id": two_thousand}))
    with pytest.raises(ValueError, match="is not PCI bus ids"):
        intent.decode(json.dumps({**GOOD, "pci_bus_id": two_thousand + "0"}))  # 2001
    with pytest.raises(ValueError, match="^the record's pci_bus_id '" + "x" * 60 + "' is not"):
        intent.decode(json.dumps({**GOOD, "pci_bus_id": "x" * 70}))
    with pytest.raises(ValueError, match="^the record's mode '" + "m" * 20 + "' or memory"):
        intent.decode(json.dumps({**GOOD, "mode": "m" * 30}))
    with pytest.raises(ValueError, match="^the record's 'pid' is missing or not a int$"):
        intent.decode(json.dumps({**GOOD, "pid": None}))


def test_a_record_that_cannot_be_written_is_none_and_a_damaged_one_falls_back(monkeypatch):
    monkeypatch.setattr(intent, "_fd", None)
    monkeypatch.setattr(intent, "_text", None)
    monkeypatch.setattr(intent, "_started_with", lambda: json.dumps(GOOD))

    def refuse(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(intent.os, "write", refuse)
    intent.publish(rec())  # never fails the binding
    assert _memfds() == [] and intent._text is None
    monkeypatch.undo()
    monkeypatch.setattr(intent, "_fd", None)
    monkeypatch.setattr(intent, "_text", "damaged")
    monkeypatch.setattr(intent, "_started_with", lambda: json.dumps(GOOD))
    assert intent.current().pid == 4242  # the in-process record cannot be read: the one it started with


HOLDS_A_MEMFD = ("import os, sys, time; fd = os.memfd_create('gpuaffinity-binding'); data = sys.stdin.buffer.read()\n"
                 "while data:\n    data = data[os.write(fd, data):]\nprint('ready', flush=True); time.sleep(60)")


def test_a_memfd_record_past_64_kib_is_refused_as_the_same_text_in_the_environment_is():
    """A record is at most 64 KiB in either form: `gpuaffinity check` refuses a longer one as longer.  The memfd
    was read 64 KiB deep, so a longer one whose first 64 KiB were a record was taken as that record, where the
    same text in GPUAFFINITY_BOUND was refused."""
    from gpuaffinity import live, proc

    record = json.dumps(GOOD).ljust(65536)  # 64 KiB itself is a record
    for text, decoded in ((record, True), (record + "x", False)):
        p = subprocess.Popen([sys.executable, "-c", HOLDS_A_MEMFD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            p.stdin.write(text.encode())
            p.stdin.close()
            assert p.stdout.readline() == b"ready\n"
            view = proc.look(p.pid, root="/proc")
        finally:
            p.kill()
            p.wait()
        got, note = live._intent(view)
        exec_form = live._intent(proc.View(p.pid, "/proc", environ={"GPUAFFINITY_BOUND": text}))
        assert (got is not None, exec_form[0] is not None) == (decoded, decoded), (note, exec_form[1])
        if not decoded:
            assert note == "its in-process binding record cannot be read: the record is larger than 64 KiB"
            assert exec_form[1] == "its exec binding record cannot be read: the record is larger than 64 KiB"
