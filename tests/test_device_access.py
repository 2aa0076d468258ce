"""GPUs a process cannot use although something lists them: a device node that opens for reading only, and a GPU
the driver excludes.  NVML opens its nodes read-write and never brings an excluded GPU up, so neither is a device
here, and no index after them may shift."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GPUS = {0: "0000:10:00.0", 1: "0000:20:00.0", 2: "0000:30:00.0", 3: "0000:40:00.0"}


def machine(tmp_path, excluded=()):
    text = 'name = "four"\n[[numa_node]]\nid = 0\ncpus = "0-7"\n'
    for i, bus in GPUS.items():
        text += (f'[[gpu]]\nuuid = "GPU-0000000{i}-1111-2222-3333-444444444444"\npci_bus_id = "{bus}"\n'
                 f'name = "NVIDIA H100 80GB HBM3"\nnuma_node = 0\n' + ("excluded = true\n" if i in excluded else ""))
    path = tmp_path / "four.toml"
    path.write_text(text)
    return path


def resolve(topology, *sim_args, cvd=None):
    env = {k: v for k, v in __import__("os").environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", *sim_args, str(topology), "--",
                          sys.executable, "-m", "gpuaffinity", "resolve", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    return [(d["logical_id"], d["pci_bus_id"], d["nvml_index"], d["inventory"]) for d in json.loads(out.stdout)]


@pytest.mark.parametrize("others", ["readonly", "denied", "absent"])
def test_a_node_that_does_not_open_read_write_hides_its_gpu(tmp_path, others):
    topo = machine(tmp_path)
    got = resolve(topo, "--gpus", "1,3", "--others", others)
    assert got == [(0, GPUS[1], 0, "nvml"), (1, GPUS[3], 1, "nvml")], got
    assert resolve(topo, "--gpus", "1,3", "--others", others, cvd="1") == [(0, GPUS[3], 1, "nvml")]


def test_an_excluded_gpu_is_no_device_and_shifts_no_index(tmp_path):
    topo = machine(tmp_path, excluded={1})
    got = resolve(topo)
    assert got == [(0, GPUS[0], 0, "nvml"), (1, GPUS[2], 1, "nvml"), (2, GPUS[3], 2, "nvml")], got
    assert resolve(topo, cvd="1") == [(0, GPUS[2], 1, "nvml")]
    # the driver's /proc still lists it, saying so
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", str(topo), "--", "sh", "-c",
                          'cat "$GPUAFFINITY_PROCFS_ROOT/driver/nvidia/gpus/0000:20:00.0/information"'],
                         capture_output=True, text=True, timeout=60)
    assert "GPU Excluded:\t Yes" in out.stdout


def test_an_excluded_gpu_in_a_topology_with_mig_is_refused(tmp_path):
    from gpuaffinity.core.errors import TopologyError
    from gpuaffinity.sim.topology import load_topology

    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[[numa_node]]\nid = 0\ncpus = "0"\n[[gpu]]\n'
                    'uuid = "GPU-00000000-1111-2222-3333-444444444444"\npci_bus_id = "0000:10:00.0"\n'
                    'name = "NVIDIA A100-SXM4-80GB"\nnuma_node = 0\nexcluded = true\n[[gpu.mig]]\n'
                    'uuid = "MIG-00000000-1111-2222-3333-444444444444"\ngpu_instance = 1\ncompute_instance = 0\n')
    with pytest.raises(TopologyError, match=r"gpu\[0\]\.excluded: an excluded GPU has no MIG instances"):
        load_topology(str(path))


def test_real_character_nodes_of_the_control_device_s_major_are_the_listed_gpus(tmp_path):
    """On a real host the nodes are character devices: a GPU's node counts only with nvidiactl's major and the
    GPU's own minor. (Here major 1, whose minors 3 and 5 are /dev/null and /dev/zero, stands for the driver's:
    they open read-write anywhere.)"""
    import os
    import stat

    from gpuaffinity.inventory import _device_nodes_mismatch

    def node(name, major, minor):
        try:
            os.mknod(tmp_path / name, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        except OSError as e:
            pytest.skip(f"cannot make a device node here ({e.strerror})")

    node("nvidiactl", 1, 3)
    node("nvidia3", 1, 3)
    node("nvidia5", 1, 5)
    assert _device_nodes_mismatch(str(tmp_path), (3, 5), simulated=False) is None
    assert _device_nodes_mismatch(str(tmp_path), (3, 5), simulated=True) is None
    os.unlink(tmp_path / "nvidia5")
    node("nvidia5", 1, 7)  # /dev/full: of the driver's major, but not minor 5
    assert _device_nodes_mismatch(str(tmp_path), (3, 5), simulated=False) == (
        f"{tmp_path}/nvidia5 is not the device node of GPU minor 5")


def test_a_driver_listing_that_cannot_be_read_says_which_file_and_why(tmp_path):
    """The driver's /proc is the fast source; where one GPU's information file refuses a read (EACCES, as a
    hardened /proc gives even to root: here a link to /proc/sys/vm/drop_caches, which refuses every reader), the
    listing is none and the reason names that file."""
    import os

    from gpuaffinity.inventory import ProcListing

    gpus = tmp_path / "driver" / "nvidia" / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    info = gpus / "0000:01:00.0" / "information"
    os.symlink("/proc/sys/vm/drop_caches", info)
    listing = ProcListing.read({"GPUAFFINITY_PROCFS_ROOT": str(tmp_path)})
    assert listing.gpus == ()
    assert listing.problem == f"{info} cannot be read (Permission denied)"


@pytest.mark.skipif(__import__("os").path.exists("/dev/nvidiactl"), reason="a host with the NVIDIA driver: its own "
                    "device nodes answer")
def test_a_listing_is_checked_against_the_hosts_own_dev_where_no_other_is_named(tmp_path):
    """Outside the simulator (no GPUAFFINITY_DEV_ROOT) the driver's /proc listing is proven against /dev itself: on
    this host, which has no NVIDIA driver, the proof fails at /dev/nvidiactl, and that is the reason given."""
    from gpuaffinity.core.settings import DEV_VAR, PROCFS_VAR
    from gpuaffinity.inventory import ProcListing
    from gpuaffinity.sim import simulated

    with simulated(machine(tmp_path)) as m:
        env = {PROCFS_VAR: m.env[PROCFS_VAR]}
        listing = ProcListing.read(env)
        assert [g.pci_bus_id for g in listing.gpus] == list(GPUS.values())
        assert listing.why_not_nvml_equal(env) == "/dev/nvidiactl does not open (ENOENT)"
        assert listing.why_not_nvml_equal({**env, DEV_VAR: m.env[DEV_VAR]}) is None  # the simulated /dev proves it
