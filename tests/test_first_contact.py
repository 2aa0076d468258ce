"""A new user's first mistakes (issue 19): no silent empty answer, CUDA's quiet truncation explained.

Each case runs the real command line against a simulated machine, as the user ran it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env, run_json
from gpuaffinity.core.cvd import GpuIdentity, apply_cvd, no_device_text, reading_notes


def cli(machine, *args: str, cvd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuaffinity", *args], env=child_env(machine, cvd),
                          capture_output=True, text=True, timeout=120)


def one_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("gpuaffinity: ") and "Traceback" not in out.stderr
    return lines[0]


def test_host_numbers_in_a_job_are_an_error_that_says_what_to_write(sim_factory):
    """slurm-2of8 may open the host's GPUs 2 and 5; a user writes the host's numbers."""
    machine = sim_factory("slurm-2of8")
    host = machine.topology.gpus
    out = cli(machine, "resolve", cvd="2,5")
    assert out.returncode == 1 and out.stdout == ""
    line = one_line(out)
    assert "this process sees no CUDA device" in line
    assert "write CUDA_VISIBLE_DEVICES=0,1" in line
    assert f"0: {host[2].pci_bus_id} ({host[2].uuid[:12]}, nvidia-smi's GPU 2)" in line
    assert f"1: {host[5].pci_bus_id} ({host[5].uuid[:12]}, nvidia-smi's GPU 5)" in line
    out = cli(machine, "bind", "0", "--", "true", cvd="2,5")
    assert out.returncode == 1
    line = one_line(out)
    assert line.startswith("gpuaffinity: CUDA device 0 is not visible: this process sees no CUDA device")
    assert "write CUDA_VISIBLE_DEVICES=0,1" in line
    # the host's numbers in another order map in that order
    assert "write CUDA_VISIBLE_DEVICES=1,0" in one_line(cli(machine, "resolve", cvd="5,2"))


def test_doctor_never_says_no_warnings_over_zero_devices(sim_factory):
    out = cli(sim_factory("slurm-2of8"), "doctor", cvd="2,5")
    assert "No warnings." not in out.stdout
    assert "Devices: this process sees 0 (why, and what to write: below)" in out.stdout
    assert "write CUDA_VISIBLE_DEVICES=0,1" in out.stdout.split("Warnings and errors", 1)[1]


@pytest.mark.parametrize(("cvd", "why"), [
    ("abc", "the driver stops reading where entry 0 ('abc') is not a number"),
    ("GPU-2", "entry 0 ('GPU-2') matches 2 GPU UUIDs (a prefix must be unique)"),  # GPU-25ab…, GPU-29ec…
    ("GPU-ffff", "entry 0 ('GPU-ffff') matches no GPU UUID"),
    ("MIG-abc", "entry 0 ('MIG-abc') names no MIG instance"),
    ("", "CUDA_VISIBLE_DEVICES is empty, which hides every GPU"),
    ("9", "entry 0 ('9') is out of range (this process's GPUs are numbered 0-7)"),
])
def test_no_device_is_one_line_naming_what_this_process_can_open(sim_factory, cvd, why):
    machine = sim_factory("dgx-h100")
    out = cli(machine, "resolve", "--json", cvd=cvd)
    assert out.returncode == 1 and json.loads(out.stdout) == []
    line = one_line(out)
    assert why in line
    assert "it can open 8 GPU(s), numbered here 0: " in line
    assert all(f"{i}: {g.pci_bus_id} ({g.uuid[:12]})" in line for i, g in enumerate(machine.topology.gpus))
    assert "nvidia-smi's GPU" not in line  # here the process may open every GPU: no second numbering


def test_a_range_is_read_as_its_first_number_and_the_warning_says_how_to_write_it(sim_factory):
    machine = sim_factory("dgx-h100")
    out = cli(machine, "resolve", "--json", cvd="0-3")
    assert out.returncode == 0
    assert [d["logical_id"] for d in json.loads(out.stdout)] == [0]
    line = one_line(out)
    assert line == ("gpuaffinity: warning: CUDA_VISIBLE_DEVICES='0-3': entry 0 ('0-3') is read as 0: the driver "
                    "takes the digits and ignores the rest ('-3'); CUDA_VISIBLE_DEVICES has no ranges: write 0,1,2,3")
    out = cli(machine, "bind", "0", "--dry-run", cvd="0-3")
    assert out.returncode == 0 and "write 0,1,2,3" in out.stderr


def test_a_list_cut_short_warns_in_python_too(sim_factory):
    """resolve_all() gives the devices before the stop, and a VisibleDevicesWarning; none at all: NoDeviceWarning."""
    code = ("import json, sys, warnings, gpuaffinity\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    n = len(gpuaffinity.resolve_all())\n"
            "print(json.dumps([n, [(x.category.__name__, str(x.message)) for x in w]]))")
    machine = sim_factory("dgx-h100")
    n, caught = run_json(machine, code, cvd="3,1,x,2")
    assert n == 2
    assert caught == [["VisibleDevicesWarning",
                       "gpuaffinity: CUDA_VISIBLE_DEVICES='3,1,x,2': the driver stops reading where entry 2 ('x') is "
                       "not a number; the 1 entry after it is ignored too; it gives no error, and this process sees "
                       "only the 2 device(s) named before it"]]
    n, caught = run_json(machine, code, cvd="")
    assert n == 0 and [c[0] for c in caught] == ["NoDeviceWarning"]
    n, caught = run_json(machine, code, cvd="3,1")
    assert n == 2 and caught == []  # a plain list: nothing to say


G = [GpuIdentity(f"GPU-{i}{i}000000-0000-0000-0000-000000000000") for i in range(4)]


@pytest.mark.parametrize(("cvd", "notes"), [
    (None, []), ("", []), ("0,1", []), (" 1,+2", []), ("01", []),
    ("0-2", ["entry 0 ('0-2') is read as 0: the driver takes the digits and ignores the rest ('-2'); "
             "CUDA_VISIBLE_DEVICES has no ranges: write 0,1,2"]),
    ("1gpu,2", ["entry 0 ('1gpu') is read as 1: the driver takes the digits and ignores the rest ('gpu')"]),
    ("3-1", ["entry 0 ('3-1') is read as 3: the driver takes the digits and ignores the rest ('-1')"]),
    ("0,5,1", ["the driver stops reading where entry 1 ('5') is out of range (this process's GPUs are numbered "
               "0-3); the 1 entry after it is ignored too; it gives no error, and this process sees only the 1 "
               "device(s) named before it"]),
    ("0,1,2,3,4", ["the driver stops reading where entry 4 ('4') is out of range (this process's GPUs are numbered "
                   "0-3); it gives no error, and this process sees only the 4 device(s) named before it"]),
    ("0,0", []),  # the driver refuses it: an error of its own, not a note
    # found by attacking the change: thousands of leading zeros crashed the range hint (int() refuses them)
    ("0" * 5000 + "1-3", [f"entry 0 ({'0' * 5000 + '1-3'!r:.80}... (5003 characters)) is read as 1: the driver "
                          "takes the digits and ignores the rest ('-3')"]),
    ("1-٣", ["entry 0 ('1-٣') is read as 1: the driver takes the digits and ignores the rest ('-٣')"]),
    ("GPU-00,x,y,z", ["the driver stops reading where entry 1 ('x') is not a GPU- or MIG- UUID; the 2 entries "
                      "after it are ignored too; it gives no error, and this process sees only the 1 device(s) named "
                      "before it"]),
])
def test_reading_notes(cvd, notes):
    assert reading_notes(cvd, apply_cvd(cvd, G)) == notes


def test_no_device_text_maps_host_numbers_only_where_every_entry_is_one_of_ours():
    mine = G[1:3]  # the host's GPUs 1 and 2
    host = [g.uuid for g in G]

    def text(cvd: str) -> str:
        return no_device_text(cvd, apply_cvd(cvd, mine), [_Gpu(g.uuid, f"0000:{i + 1:02x}:00.0")
                                                          for i, g in enumerate(mine)], host)

    assert "write CUDA_VISIBLE_DEVICES=1,0" in text("2,1")
    # found by attacking the change: a suggestion the driver would refuse (a GPU twice), or one as long as the
    # value (a 200 KB list of the same number), is no suggestion
    assert "look like nvidia-smi's numbers" not in text("2,2")
    assert "look like nvidia-smi's numbers" not in text("2,1,2")
    assert "look like nvidia-smi's numbers" not in text("2-3")  # not a plain number: no mapping guessed
    assert "look like nvidia-smi's numbers" not in text("3,1")  # host GPU 3 is not this process's
    assert "look like nvidia-smi's numbers" not in text("7")
    assert "it can open 2 GPU(s), numbered here 0: 0000:01:00.0 (GPU-11000000, nvidia-smi's GPU 1), 1: 0000:02:00.0 " \
           "(GPU-22000000, nvidia-smi's GPU 2)" in text("7")


class _Gpu:
    def __init__(self, uuid: str, bus: str) -> None:
        self.uuid, self.pci_bus_id, self.migs = uuid, bus, ()


def test_a_selector_says_whether_it_matched_nothing_or_too_much(sim_factory):
    machine = sim_factory("dgx-h100")
    assert one_line(cli(machine, "bind", "MIG-abc", "--dry-run")) == (
        "gpuaffinity: 'MIG-abc' names no MIG instance: none of the GPUs this process can open has MIG instances; "
        "this process can open 8 GPU(s) (see `gpuaffinity doctor`)")
    assert "'GPU-2' matches 2 GPU UUIDs (a prefix must be unique)" in one_line(cli(machine, "bind", "GPU-2",
                                                                                   "--dry-run"))
    assert "'GPU-ffff' matches no GPU UUID;" in one_line(cli(machine, "bind", "GPU-ffff", "--dry-run"))
    mig = sim_factory("mig-a100")
    assert "'MIG-ffff' matches no MIG UUID;" in one_line(cli(mig, "bind", "MIG-ffff", "--dry-run"))
    assert one_line(cli(machine, "bind", "99:00", "--dry-run")).startswith(
        "gpuaffinity: '0000:99:00.0' matches no GPU's PCI bus id; this process can open 8 GPU(s)")


@pytest.mark.parametrize("bad", ["gpu0", "é", "x" * 101])
def test_a_selector_that_is_no_device_says_every_form_a_device_takes(bad):
    from gpuaffinity.select import parse_selector

    with pytest.raises(ValueError, match=r"is not a device: .*a logical CUDA id \(0\), a GPU UUID or unique "
                       r"prefix \(GPU-8932f937\), a MIG UUID, or a PCI bus id \(0000:3b:00.0\)$"):
        parse_selector(bad)


def test_bind_usage_names_every_option_bind_takes():
    """Issue 19: the usage line omitted --policy, --disable and --no-subprocess; now it is held to the parser."""
    from gpuaffinity.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["bind"]
    usage = sub.format_usage()
    options = [max(a.option_strings, key=len) for a in sub._actions if a.option_strings and a.dest != "help"]
    assert {"--policy", "--disable", "--no-subprocess", "--memory", "--on-failure"} <= set(options)
    assert [o for o in options if o not in usage] == []


@pytest.mark.parametrize(("command", "default", "says"), [
    ("bind", "preferred", ["preferred (default: allocate on the GPU's node(s), spill to other nodes", "none (see "
                           "docs/numa.md)"]),
    ("check", "any", ["any (default: any policy onto its GPU's node(s), not the default policy)",
                      "none (do not check the policy)"]),
    ("ray-check", "preferred", ["the memory policy they should have (default preferred; none: do not check memory)"]),
])
def test_each_memory_option_says_its_default_and_what_none_means(command, default, says):
    """--help for --memory names the default the parser really uses, and what none does."""
    from gpuaffinity.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    memory = next(a for a in sub._actions if "--memory" in a.option_strings)
    assert memory.default == default
    text = " ".join(sub.format_help().split())
    assert [s for s in says if s not in text] == []


def test_a_topology_path_that_is_no_file_says_what_it_is(tmp_path, monkeypatch):
    """Issue 19: a directory was reported as "no such topology file"; a preset's name in a working directory that
    holds a file or folder of that name still means the preset."""
    def sim_check(arg: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "check", arg], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    (tmp_path / "machines").mkdir()
    out = sim_check(str(tmp_path / "machines"))
    assert out.returncode == 1
    assert one_line(out) == (f"gpuaffinity: {str(tmp_path / 'machines')!r} is a directory, not a topology file: "
                             "name a .toml file in it, or a preset (`gpuaffinity sim list`)")
    assert "is not a regular file" in one_line(sim_check("/dev/null"))
    assert one_line(sim_check(str(tmp_path / "none.toml"))).endswith("none.toml': no such topology file")
    (tmp_path / "dgx-h100").mkdir()  # a hostile or careless working directory
    (tmp_path / "vm-4gpu").write_text('name = "evil"\n')
    assert sim_check("dgx-h100").stdout.split(":", 2)[1].strip() == "dgx-h100"
    assert "vm-4gpu:" in sim_check("vm-4gpu").stdout.splitlines()[0]
    assert "at least one [[numa_node]] is required" in one_line(sim_check("./vm-4gpu"))  # ./NAME: the file


def test_mixed_models_get_uuids_not_numbers(tmp_path):
    env_run = [sys.executable, "-m", "gpuaffinity", "sim", "run", "mixed-4gpu", "--gpus", "0,3", "--others",
               "absent", "--"]

    def run(cvd: str, *cmd: str) -> subprocess.CompletedProcess:
        import os

        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
        env["CUDA_VISIBLE_DEVICES"] = cvd
        return subprocess.run([*env_run, *cmd], env=env, capture_output=True, text=True, timeout=120)

    line = one_line(run("3", sys.executable, "-m", "gpuaffinity", "resolve"))
    assert "numbered here" not in line and "CUDA numbers them fastest first" in line
    suggestion = line.split("write CUDA_VISIBLE_DEVICES=", 1)[1].split(",", 1)[0]
    assert suggestion.startswith("GPU-")
    out = run(suggestion, sys.executable, "-m", "gpuaffinity", "resolve", "--json")
    assert out.returncode == 0, out.stderr
    assert [d["pci_bus_id"] for d in json.loads(out.stdout)] == ["0000:c1:00.0"]  # nvidia-smi's GPU 3, as said
    assert "nvidia-smi's GPU 3" in line and "0000:c1:00.0" in line


def test_the_host_number_suggestion_names_the_gpus_it_says(sim_factory):
    machine = sim_factory("slurm-2of8")
    host = machine.topology.gpus
    line = one_line(cli(machine, "resolve", cvd="5,2"))
    suggestion = line.split("write CUDA_VISIBLE_DEVICES=", 1)[1].split(",", 2)
    cvd = ",".join(suggestion[:2]).split(" ")[0].rstrip(",")
    assert cvd == "1,0"
    out = cli(machine, "resolve", "--json", cvd=cvd)
    assert [d["pci_bus_id"] for d in json.loads(out.stdout)] == [host[5].pci_bus_id, host[2].pci_bus_id]


def test_a_mig_gpu_without_an_instance_is_not_offered_as_a_number(sim_factory):
    machine = sim_factory("mig-a100")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "mig-a100", "--mig",
                          "MIG-234fbb23-dcf9-1c31-18a0-e3334436a18f", "--", sys.executable, "-m", "gpuaffinity",
                          "resolve"], env=child_env(machine, "0"), capture_output=True, text=True, timeout=120)
    line = one_line(out)
    gpus = machine.topology.gpus
    assert f"0: {gpus[1].pci_bus_id}" in line and f"0: {gpus[0].pci_bus_id}" not in line
    assert f"{gpus[0].pci_bus_id} ({gpus[0].uuid[:12]}) in MIG mode show(s) no CUDA device unless named by a " \
           "MIG UUID" in line


def test_why_no_device_is_said_for_the_policy_asked(sim_factory):
    """NVML wrongly reports MIG mode off on mig-a100's GPU 0: its MIG instance names nothing in the process's GPU
    list, so under --policy first (the driver is not asked) no device shows, and the one line says why under that
    policy; under the default policy the CUDA driver shows the instance and there is nothing to explain."""
    machine = sim_factory("mig-a100")
    mig = machine.topology.gpus[0].migs[0].uuid
    env = child_env(machine, mig, GPUAFFINITY_SIM_FAULTS="nvmlDeviceGetMigMode=3")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--policy", "first"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert one_line(out).startswith(f"gpuaffinity: this process sees no CUDA device: CUDA_VISIBLE_DEVICES='{mig}' "
                                    f"names none of its GPUs (the driver stops reading where entry 0 ('{mig}') "
                                    "names no MIG instance); it can open 4 GPU(s)")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [d["pci_bus_id"] for d in json.loads(out.stdout)] == [machine.topology.gpus[0].pci_bus_id]


def test_resolve_json_with_no_device_prints_an_empty_array_and_fails(sim_factory):
    out = cli(sim_factory("dgx-h100"), "resolve", "--json", cvd="")
    assert out.returncode == 1 and json.loads(out.stdout) == [] and len(out.stderr.splitlines()) == 1


def test_a_range_is_spelled_out_only_as_far_as_this_process_numbers_gpus(sim_factory):
    out = cli(sim_factory("slurm-2of8"), "resolve", cvd="0-3")
    assert out.returncode == 0
    assert one_line(out).endswith("CUDA_VISIBLE_DEVICES has no ranges: write 0,1 (this process's GPUs are "
                                  "numbered 0-1)")


def test_a_number_cut_to_32_bits_is_said(sim_factory):
    out = cli(sim_factory("dgx-h100"), "resolve", "--json", cvd="4294967297")
    assert [d["nvml_index"] for d in json.loads(out.stdout)] == [1]
    assert one_line(out) == ("gpuaffinity: warning: CUDA_VISIBLE_DEVICES='4294967297': entry 0 ('4294967297') is "
                             "read as 1: the driver cuts the number to 32 bits")


def test_a_mig_selector_in_the_path_form_is_taken(sim_factory):
    machine = sim_factory("mig-a100")
    gpu = next(g for g in machine.topology.gpus if g.migs)
    mig = gpu.migs[0]
    path = f"MIG-{gpu.uuid}/{mig.gpu_instance}/{mig.compute_instance}"
    out = cli(machine, "resolve", path, "--json")
    assert out.returncode == 0, out.stderr
    assert [(d["pci_bus_id"], d["mig_uuid"]) for d in json.loads(out.stdout)] == [(gpu.pci_bus_id, mig.uuid)]
    bad = f"MIG-{gpu.uuid}/99/0"
    assert "names no MIG instance (MIG-GPU-<uuid>/<gpu instance>/<compute instance>)" in one_line(
        cli(machine, "resolve", bad))


def test_an_ambiguous_prefix_says_a_match_is_a_gpu_this_process_cannot_open(sim_factory):
    line = one_line(cli(sim_factory("slurm-2of8"), "bind", "GPU-2", "--dry-run", cvd="0,1"))
    assert "'GPU-2' matches 2 GPU UUIDs (a prefix must be unique); 1 of them is a GPU of the host this process " \
           "cannot open" in line


def test_an_empty_topology_name_is_no_topology():
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "", "--", "true"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and one_line(out) == ("gpuaffinity: '': no topology given: name a preset "
                                                     "(`gpuaffinity sim list`) or a topology file")


def test_a_misspelt_name_raises_the_attribute_error_that_names_it():
    import gpuaffinity

    with pytest.raises(AttributeError, match=r"^module 'gpuaffinity' has no attribute 'resolv'$"):
        gpuaffinity.resolv  # noqa: B018
    assert not hasattr(gpuaffinity, "resolv")
    assert callable(gpuaffinity.resolve)  # a lazy name still loads
