"""`gpuaffinity sim list|run|check`: pass-through, exit status, one-line errors, nothing left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_env, run_json
from gpuaffinity import cli
from gpuaffinity.core.cpulist import format_cpulist
from gpuaffinity.sim.build import CFLAGS, COMMON, CSRC, LIBRARIES, find_compiler


def gpuaffinity(*args: str, env: dict | None = None, stdin: str | None = None, tmpdir: Path | None = None):
    e = dict(os.environ if env is None else env)
    if tmpdir is not None:
        tmpdir.mkdir(exist_ok=True)
        e["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "gpuaffinity", *args], env=e, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_list_names_every_preset():
    out = gpuaffinity("sim", "list")
    assert out.returncode == 0
    rows = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[1:]}
    assert rows["dgx-h100"] == "8" and rows["mig-a100"] == "4"


def test_run_passes_environment_stdin_and_exit_status(tmp_path):
    code = ("import os, sys, json; data = sys.stdin.read();"
            "print(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], os.environ['MY_VAR'], data,"
            " os.environ['GPUAFFINITY_SIM_CONFIG'], os.environ['GPUAFFINITY_SYSFS_ROOT']])); sys.exit(7)")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="1,0", MY_VAR="kept")
    out = gpuaffinity("sim", "run", "vm-4gpu", "--", sys.executable, "-c", code, env=env, stdin="hello",
                      tmpdir=tmp_path / "t")
    assert out.returncode == 7
    cvd, var, data, config, sysfs = json.loads(out.stdout)
    assert (cvd, var, data) == ("1,0", "kept", "hello")
    assert config.startswith(str(tmp_path / "t")) and sysfs.startswith(str(tmp_path / "t"))
    assert list((tmp_path / "t").iterdir()) == []  # the machine's folder is gone afterwards


def test_run_reports_a_signal_as_128_plus_n():
    out = gpuaffinity("sim", "run", "vm-4gpu", "--", sys.executable, "-c",
                      "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert out.returncode == 128 + 15


def test_run_fault_and_counters_options(tmp_path):
    code = "import pynvml\ntry:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError as e:\n    print(type(e).__name__)"
    out = gpuaffinity("sim", "run", "--fault", "nvmlInit=9", "--counters", str(tmp_path), "dgx-h100", "--",
                      sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NVMLError_DriverNotLoaded"
    counts = [p.read_text() for p in tmp_path.glob("*.nvml.counts")]
    assert counts == ["nvmlInitWithFlags 1\n"]


@pytest.mark.parametrize(("args", "status", "text"), [
    (["sim", "run", "dgx-h100"], 2, "no command given"),
    (["sim", "run", "--fault", "cuInit", "dgx-h100", "--", "true"], 2, "bad fault 'cuInit'"),
    (["sim", "run", "dgx-h100", "--", "/no/such/program"], 127, "command not found: /no/such/program"),
    (["sim", "run", "no-such-preset", "--", "true"], 1, "neither a topology file nor a preset"),
    (["sim", "frobnicate"], 2, "invalid choice"),
])
def test_errors_are_one_line_with_their_status(args, status, text):
    out = gpuaffinity(*args)
    assert out.returncode == status
    assert text in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


FAULT_GRAMMAR = ("want NAME=CODE or NAME=CODE:TIMES, e.g. cuInit=999 or nvmlDeviceGetHandleByIndex=15:1")


@pytest.mark.parametrize("spec", [
    "cuInit=abc",  # the code is no number strtol reads
    "cuInit=",
    "cuInit=2147483648",  # past a C int
    "cuInit=9:x",  # TIMES is no count
    "cuInit=9:-1",
    "cu-Init=9",  # the name is no C identifier
    "=9",
])
def test_sim_run_refuses_a_malformed_fault_in_one_line(spec, capsys):
    assert cli.main(["sim", "run", "--fault", spec, "dgx-h100", "--", "true"]) == 2
    assert capsys.readouterr().err == f"gpuaffinity sim run: bad fault {spec!r}: {FAULT_GRAMMAR}\n"


@pytest.mark.parametrize("name", [
    "gpuaffinitySimCallCount",  # the simulator's own counter export is no entry point a program's call fails
    "nvmlInitX",
    "cuDeviceTotal",  # a prefix covers only its _vN and WithFlags variants
])
def test_sim_run_refuses_a_fault_on_no_entry_point(name, capsys):
    assert cli.main(["sim", "run", "--fault", f"{name}=999", "dgx-h100", "--", "true"]) == 2
    assert capsys.readouterr().err == (
        f"gpuaffinity sim run: unknown fault name {name!r}: the simulator has no such entry point (see "
        "docs/simulator.md; e.g. nvmlInit, nvmlDeviceGetHandleByIndex, cuInit)\n")


def test_bad_topology_file_leaves_nothing_behind(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[numa_node]]\nid = 0\ncpus = "0-3"\n[[gpu]]\nuuid = "GPU-1"\n'
                   'pci_bus_id = "0000:01:00.0"\nname = "NVIDIA H100"\nnuma_node = 0\n')
    out = gpuaffinity("sim", "run", str(bad), "--", "true", tmpdir=tmp_path / "t")
    assert out.returncode == 1
    assert out.stderr.strip() == (f"gpuaffinity: {bad}: gpu[0].uuid: malformed GPU UUID 'GPU-1' "
                                  "(want GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    assert list((tmp_path / "t").iterdir()) == []


def test_no_compiler_is_one_clear_line(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = dict(os.environ, PATH=str(bindir), GPUAFFINITY_SIM_CACHE=str(tmp_path / "cache"))
    env.pop("CC", None)
    out = gpuaffinity("sim", "run", "dgx-h100", "--", "true", env=env)
    assert out.returncode == 1
    assert out.stderr.startswith("gpuaffinity: no C compiler found")
    assert out.stderr.strip().endswith("install one (e.g. `apt-get install gcc`) or set CC")
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_first_use_builds_both_libraries_into_a_private_folder(tmp_path):
    import stat

    env = dict(os.environ, GPUAFFINITY_SIM_CACHE=str(tmp_path / "cache"))
    out = gpuaffinity("sim", "run", "dgx-h100", "--", sys.executable, "-c",
                      "import ctypes; ctypes.CDLL('libnvidia-ml.so.1'); ctypes.CDLL('libcuda.so.1'); print('ok')",
                      env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    (built,) = (tmp_path / "cache").iterdir()  # the build folder renamed into place, nothing else left
    assert built.name.startswith("sim-")
    assert sorted(p.name for p in built.iterdir()) == sorted(LIBRARIES)
    assert stat.S_IMODE(built.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((built / lib).stat().st_mode) == 0o755 for lib in LIBRARIES)


def test_failed_build_is_reported_and_cleaned_up(tmp_path):
    env = dict(os.environ, CC="false", GPUAFFINITY_SIM_CACHE=str(tmp_path / "cache"))
    out = gpuaffinity("sim", "run", "dgx-h100", "--", "true", env=env)
    assert out.returncode == 1
    assert "building the simulated" in out.stderr
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_build_shows_the_compiler_s_error_line_not_its_notes(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'nvml.c: In function f:' >&2\necho 'nvml.c:3:1: error: boom' >&2\n"
                  "echo 'nvml.c:3:1: note: a later note' >&2\nexit 1\n")
    cc.chmod(0o755)
    env = dict(os.environ, CC=str(cc), GPUAFFINITY_SIM_CACHE=str(tmp_path / "cache"))
    out = gpuaffinity("sim", "run", "dgx-h100", "--", "true", env=env)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"gpuaffinity: building the simulated sim_common.c with {cc} failed: nvml.c:3:1: error: boom"]


def test_the_simulator_cache_defaults_to_the_user_s_cache_folder(tmp_path, monkeypatch):
    from gpuaffinity.sim.build import cache_root

    monkeypatch.delenv("GPUAFFINITY_SIM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "gpuaffinity"
    monkeypatch.setenv("XDG_CACHE_HOME", "rel/cache")  # relative: made absolute, never left to the working folder
    assert cache_root() == Path(os.path.abspath("rel/cache")) / "gpuaffinity"


def test_sources_compile_without_warnings(tmp_path):
    """The shared code is compiled once and linked into both libraries, which export no shared symbol."""
    common = tmp_path / "sim_common.o"
    proc = subprocess.run([find_compiler(), *CFLAGS, "-Werror", "-c", "-o", str(common), str(CSRC / COMMON)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for lib, src in LIBRARIES.items():
        proc = subprocess.run([find_compiler(), *CFLAGS, "-shared", "-Werror", "-o", str(tmp_path / lib),
                               str(CSRC / src), str(common), "-lpthread", "-ldl"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        nm = shutil.which("nm")
        if nm:
            exported = subprocess.run([nm, "-D", "--defined-only", str(tmp_path / lib)], capture_output=True,
                                      text=True).stdout
            assert " sim_" not in exported


def test_check_prints_the_machine():
    out = gpuaffinity("sim", "check", "mixed-4gpu")
    assert out.returncode == 0
    assert "nvml 1  cuda(FASTEST_FIRST) 0  0000:21:00.0" in out.stdout


def test_help_teaches():
    out = gpuaffinity("sim", "run", "--help", env=dict(os.environ, COLUMNS="1000"))
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for needle in ("TOPOLOGY", "--fault", "--counters", "examples:", "sim run dgx-h100 --",
                   "--gpus LIST the GPUs whose device node opens, comma-separated: PCI-order positions, bus ids or "
                   "UUIDs (e.g. --gpus 2,5); NVML and CUDA number only these"):
        assert needle in text


def test_demo_finds_the_wrong_nodes():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3,6,5,4,0,7,1,2")
    out = gpuaffinity("sim", "run", "dgx-h100", "--", sys.executable, "-m", "gpuaffinity.sim.demo", env=env)
    assert out.returncode == 0, out.stderr
    assert "8 of 8 devices would be pinned to the wrong GPU" in out.stdout
    assert out.stdout.count("wrong NUMA node") == 6


def demo(cvd: str | None, order: str | None = None) -> list[str]:
    env = dict(os.environ)
    for var, value in (("CUDA_VISIBLE_DEVICES", cvd), ("CUDA_DEVICE_ORDER", order)):
        env.pop(var, None)
        if value is not None:
            env[var] = value
    out = gpuaffinity("sim", "run", "dgx-h100", "--", sys.executable, "-W", "ignore", "-m", "gpuaffinity.sim.demo",
                      env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize(("cvd", "order"), [("3,6,5,4,0,7,1,2", None), ("0,1", "PCI_BUS_ID"), ("4", None)])
def test_the_demo_marks_each_device_the_naive_mapping_gets_wrong(cvd, order):
    from gpuaffinity.sim.topology import load_topology

    gpus = sorted(load_topology("dgx-h100").gpus, key=lambda g: g.pci_bus_id)  # NVML's order here: by bus id
    lines = demo(cvd, order)
    assert lines[0] == f"CUDA_VISIBLE_DEVICES={cvd}  CUDA_DEVICE_ORDER={order or '<unset>'}"
    rows = lines[2:-2]
    indices = [int(i) for i in cvd.split(",")]
    assert len(rows) == len(indices)
    wrong = 0
    for i, (row, j) in enumerate(zip(rows, indices, strict=True)):
        mine, naive = gpus[j], gpus[i]
        cells = row.split()
        assert cells[:9] == [str(i), "nvml", str(j), mine.pci_bus_id, str(mine.numa_node), "|", "nvml", str(i),
                             naive.pci_bus_id], row
        assert cells[9] == str(naive.numa_node)
        mark = "" if i == j else "  <- wrong GPU" + (", wrong NUMA node" if mine.numa_node != naive.numa_node else "")
        assert row.endswith(f"{naive.numa_node}{mark}"), row
        wrong += i != j
    assert lines[-2] == f"{wrong} of {len(indices)} devices would be pinned to the wrong GPU by the naive mapping."
    assert lines[-1] == "(gpuaffinity's answer: strategies pci, cvd agree; `gpuaffinity doctor` explains each one)"


def test_the_demo_with_no_device_says_so_and_names_no_strategy():
    lines = demo("")
    assert lines[0] == "CUDA_VISIBLE_DEVICES=  CUDA_DEVICE_ORDER=<unset>"
    assert lines[2:] == ["0 of 0 devices would be pinned to the wrong GPU by the naive mapping.",
                         "(gpuaffinity's answer: strategies - agree; `gpuaffinity doctor` explains each one)"]
    assert demo(None)[0] == "CUDA_VISIBLE_DEVICES=<unset>  CUDA_DEVICE_ORDER=<unset>"


def test_import_is_light():
    code = ("import sys, gpuaffinity; bad = [m for m in ('torch', 'pynvml', 'cuda', 'ctypes', 'pluggy')"
            " if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


NOTES = r"""
import json, sys, gpuaffinity
from gpuaffinity.core.notes import kind_of
rec = gpuaffinity.plan(int(sys.argv[1]), mode=sys.argv[2])
print(json.dumps([[kind_of(n), str(n)] for n in rec.notes]))
"""


@pytest.mark.parametrize(("preset", "cpuset", "mode", "said"), [
    ("vm-4gpu", None, "node", ["no NUMA preference: every allowed CPU",
                               "memory policy left alone: the GPU has no NUMA node"]),
    ("dgx-h100", "0-2,112-114", "exclusive", ["3 allowed cores for 4 GPUs on node(s) 0: split by hardware thread"]),
    # GPUs sharing a core: said by a BindWarning naming them (test_bind_policy.py), the note is plain info
    ("dgx-h100", "0,1", "exclusive", []),
    ("dgx-h100", None, "exclusive", []),
])
def test_bind_says_the_attention_notes_by_kind(sim_factory, preset, cpuset, mode, said):
    """bind prints exactly the notes of kind "attention" on stderr (no text matching), the others only in
    --dry-run; and each note of the plan has a kind."""
    machine = sim_factory(preset)
    extra = {} if cpuset is None else {"GPUAFFINITY_SIM_ALLOWED_CPUS": cpuset}
    notes = run_json(machine, NOTES, "0", mode, **extra)
    assert notes and all(kind in ("info", "attention") for kind, _ in notes)
    loud = [text for kind, text in notes if kind == "attention"]
    assert len(loud) == len(said) and all(any(text.startswith(s) for text in loud) for s in said)
    env = child_env(machine, **extra)
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "bind", "0", "--mode", mode, "--", "true"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cut = "gpuaffinity: note: the simulated plan's CPUs"  # bind's own attention note: this host has fewer CPUs
    shared = "gpuaffinity: warning: exclusive is not exclusive"
    lines = [ln for ln in out.stderr.splitlines() if not ln.startswith(cut)]
    assert [ln for ln in lines if not ln.startswith(shared)] == [f"gpuaffinity: note: {text}" for text in loud]
    assert len([ln for ln in lines if ln.startswith(shared)]) == (cpuset == "0,1")
    dry = subprocess.run([sys.executable, "-m", "gpuaffinity", "bind", "0", "--mode", mode, "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert [ln[len("  note: "):] for ln in dry.stdout.splitlines() if ln.startswith("  note: ")] == \
        [text for _, text in notes]


def test_a_note_is_a_string_with_a_kind():
    import pickle

    from gpuaffinity.core.notes import Note, attention, kind_of

    n = attention("x")
    assert n == "x" and isinstance(n, str) and kind_of(n) == "attention" and kind_of("plain") == "info"
    back = pickle.loads(pickle.dumps(n))
    assert back == "x" and kind_of(back) == "attention"
    with pytest.raises(ValueError, match="unknown note kind 'loud'"):
        Note("x", "loud")


def test_started_with_sigchld_ignored(sim_factory):
    """A parent that ignores SIGCHLD passes that on across exec: the kernel then reaps children at once, and a
    wait finds none.  `sim run` still reports its job's status and hands the job the disposition it would have
    had; strict `resolve` still gets the driver's answer from its probe."""
    import signal

    def ignore() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    job = [sys.executable, "-c", "import signal, sys; sys.exit(7 if signal.getsignal(signal.SIGCHLD) == "
           "signal.SIG_IGN else 8)"]
    run = subprocess.run([sys.executable, "-m", "gpuaffinity", "sim", "run", "dgx-h100", "--", *job],
                         capture_output=True, text=True, timeout=120, preexec_fn=ignore)
    assert (run.returncode, run.stderr) == (7, "")
    env = child_env(sim_factory("mixed-4gpu"), "0,1")
    run = subprocess.run([sys.executable, "-m", "gpuaffinity", "resolve", "--policy", "strict", "--json"],
                         env=env, capture_output=True, text=True, timeout=120, preexec_fn=ignore)
    assert run.returncode == 0, run.stderr
    assert [r["nvml_index"] for r in json.loads(run.stdout)] == [1, 3]


def test_doctor_with_every_strategy_disabled(sim_factory):
    """Found by the long fuzz run: the strategies table had no row to size its columns by (IndexError)."""
    env = child_env(sim_factory("dgx-h100"), "x")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor", "--disable", "pci", "--disable", "cvd",
                          "--disable", "torch"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unexpected" not in out.stderr
    assert "  none: every strategy is disabled, so nothing can resolve" in out.stdout


def test_disable_takes_names_joined_by_commas_as_the_variable_does(sim_factory):
    """`--disable pci,cvd` is read as GPUAFFINITY_DISABLE=pci,cvd is (it named one unknown strategy "pci,cvd", left
    both enabled and warned): each name, beside a repeated --disable."""
    env = child_env(sim_factory("dgx-h100"), "x")
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor", "--disable", "pci,cvd", "--disable",
                          "torch"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "  none: every strategy is disabled, so nothing can resolve" in out.stdout
    assert "nothing is named" not in out.stderr


def doctor_gpu_table(stdout: str) -> list[list[str]]:
    """The rows of doctor's "GPUs this process can use" table, header first, each cut into its cells."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  NVML "))
    end = lines.index("", start)
    return [re.split(r" {2,}", line.strip()) for line in lines[start:end]]


#: doctor run in a child that imported torch first, as a training script calling gpuaffinity.cli.main would
DOCTOR_AFTER_TORCH = ("import sys, torch; from gpuaffinity.cli import main; status = main(['doctor']); "
                      "print(torch.__version__); sys.exit(status)")


@pytest.mark.parametrize("torch_imported", [False, True], ids=["plain", "torch-imported"])
def test_doctor_lists_every_gpu_in_pci_order_with_its_node_and_cpus(sim_factory, torch_imported):
    """The GPU table, cell by cell against the topology: NVML's order is the PCI order whatever
    CUDA_VISIBLE_DEVICES says, and each GPU's node's CPUs are its local CPUs.  With torch imported the report
    says which torch, and still runs to the end."""
    if torch_imported and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed here")
    machine = sim_factory("dgx-h100")
    topo = machine.topology
    argv = ["-c", DOCTOR_AFTER_TORCH] if torch_imported else ["-m", "gpuaffinity", "doctor"]
    out = subprocess.run([sys.executable, *argv], env=child_env(machine, "3,6,5,4,0,7,1,2"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    gpus = sorted(topo.gpus, key=lambda g: g.pci_bus_id)
    assert doctor_gpu_table(out.stdout) == [
        ["NVML", "PCI", "UUID", "MODEL", "NODES", "LOCAL CPUS"],
        *([str(i), g.pci_bus_id, g.uuid, g.name, str(g.numa_node), format_cpulist(topo.node(g.numa_node).cpus)]
          for i, g in enumerate(gpus))]
    said = "yes, " + out.stdout.splitlines()[-1] if torch_imported else "no (gpuaffinity never imports it)"
    assert f"  {'torch imported':<28} {said}" in out.stdout.splitlines()


def test_doctor_names_every_node_of_a_gpu_that_spans_several(tmp_path_factory, sim_factory):
    """A GPU without a numa_node file whose local CPUs are every CPU takes NVML's nodes, here both: its NODES
    cell lists them comma-separated, next to a GPU on one node."""
    path = tmp_path_factory.mktemp("span") / "span.toml"
    path.write_text('name = "span"\nsysfs_quirks = ["no-numa-node"]\n'
                    '[[numa_node]]\nid = 0\ncpus = "0-3"\n[[numa_node]]\nid = 1\ncpus = "4-7"\n'
                    '[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-000000000001"\npci_bus_id = "0000:01:00.0"\n'
                    'name = "NVIDIA H100"\nnuma_node = 1\n'
                    '[[gpu]]\nuuid = "GPU-00000000-0000-0000-0000-000000000002"\npci_bus_id = "0000:02:00.0"\n'
                    'name = "NVIDIA H100"\nnuma_node = -1\n')
    out = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=child_env(sim_factory(str(path))),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [(row[1], row[4], row[5]) for row in doctor_gpu_table(out.stdout)[1:]] == [
        ("0000:01:00.0", "1", "4-7"), ("0000:02:00.0", "0,1", "0-7")]


def test_every_variable_the_code_reads_is_in_the_registry_doctor_prints():
    """core.settings.VARIABLES is the one list of gpuaffinity's variables: every GPUAFFINITY_ name in the package
    (Python and the simulator's C) is in it, and it names nothing the package does not use."""
    from gpuaffinity.core.settings import VARIABLES

    src = Path(__file__).resolve().parent.parent / "src" / "gpuaffinity"
    used = set()
    for path in [*src.rglob("*.py"), *src.rglob("*.c"), *src.rglob("*.h")]:
        used |= set(re.findall(r"\bGPUAFFINITY_[A-Z_]*[A-Z]\b", path.read_text()))
    registered = {name for name, _always, _what in VARIABLES if name.startswith("GPUAFFINITY_")}
    used.discard("GPUAFFINITY_SIM_COMMON_H")  # the C header's include guard
    assert used == registered, used ^ registered
    assert len({name for name, _a, _w in VARIABLES}) == len(VARIABLES)


def test_doctor_shows_a_rare_variable_when_it_is_set_and_not_when_it_is_not(sim_factory):
    env = child_env(sim_factory("dgx-h100"), "0")
    shown = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"],
                           env={**env, "GPUAFFINITY_ON_FAILURE": "error"}, capture_output=True, text=True,
                           timeout=120).stdout
    plain = subprocess.run([sys.executable, "-m", "gpuaffinity", "doctor"], env=env, capture_output=True, text=True,
                           timeout=120).stdout
    assert "  GPUAFFINITY_ON_FAILURE" in shown and "'error'" in shown
    assert "GPUAFFINITY_ON_FAILURE" not in plain
    assert re.search(r"^  GPUAFFINITY_POLICY +<unset>$", plain, re.M)  # the common ones, set or not
