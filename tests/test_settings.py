"""core/settings.py in process: the environment read once into Settings and validated (the policy, the
disabled names, the subprocess switch, the simulator's roots), watch() for variables a plugin declares, and the
warning about simulator variables set outside `gpuaffinity sim run`.
"""

from __future__ import annotations

import os

import pytest

from gpuaffinity.core import settings as st
from gpuaffinity.core.errors import GpuAffinityError

# --- settings.Settings, normalize_disable, make_key: the environment read once, validated ----------------------

def snap(monkeypatch, policy=None, disable=None, allow=True, **env):
    for var in st.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return st.Settings.from_key(st.make_key(policy, disable, allow))


def test_settings_read_the_environment_into_their_fields(monkeypatch):
    s = snap(monkeypatch, "first", ("torch",), True, CUDA_VISIBLE_DEVICES="1,0", CUDA_DEVICE_ORDER="PCI_BUS_ID",
             GPUAFFINITY_POLICY="strict", GPUAFFINITY_DISABLE=" cvd, ,pci", GPUAFFINITY_NO_SUBPROCESS="1",
             GPUAFFINITY_PROCFS_ROOT="/p", GPUAFFINITY_DEV_ROOT="/d", GPUAFFINITY_SYSFS_ROOT="/s",
             GPUAFFINITY_INVENTORY="procfs")
    assert s == st.Settings("1,0", "PCI_BUS_ID", "first", "strict", ("torch",), " cvd, ,pci", True, "1", "/p",
                            "/d", "/s", "procfs")
    assert (s.policy, s.disabled, s.subprocess_allowed) == ("first", frozenset({"torch", "cvd", "pci"}), False)
    assert s.inventory_env == {"GPUAFFINITY_PROCFS_ROOT": "/p", "GPUAFFINITY_DEV_ROOT": "/d",
                               "GPUAFFINITY_SYSFS_ROOT": "/s", "GPUAFFINITY_INVENTORY": "procfs"}


def test_the_policy_defaults_to_verify_and_the_environment_counts_when_no_argument_is_given(monkeypatch):
    assert snap(monkeypatch).policy == "verify"
    assert snap(monkeypatch, GPUAFFINITY_POLICY="strict").policy == "strict"
    s = snap(monkeypatch)
    assert (s.disabled, s.subprocess_allowed, s.cvd) == (frozenset(), True, None)
    assert snap(monkeypatch, GPUAFFINITY_NO_SUBPROCESS="0").subprocess_allowed is True
    assert snap(monkeypatch, allow=False).subprocess_allowed is False


def test_an_unknown_policy_names_its_source(monkeypatch):
    with pytest.raises(GpuAffinityError, match=r"^unknown GPUAFFINITY_POLICY 'fast': choose one of first, verify, "
                                               r"strict$"):
        _ = snap(monkeypatch, GPUAFFINITY_POLICY="fast").policy
    with pytest.raises(GpuAffinityError, match=r"^unknown policy argument 'Strict': choose one of first, verify, "
                                               r"strict$"):
        _ = snap(monkeypatch, "Strict", GPUAFFINITY_POLICY="first").policy


def test_normalize_disable():
    assert st.normalize_disable(None) is None
    assert st.normalize_disable(" a, b,,a ") == ("a", "b")
    assert st.normalize_disable(["x", " y ", "x"]) == ("x", "y")
    assert st.normalize_disable(", ,") is None and st.normalize_disable([]) is None
    with pytest.raises(TypeError, match=r"^disable must hold strategy or plugin names \(strings\), not int$"):
        st.normalize_disable(["a", 3])


def test_stray_simulator_variables_are_named():
    assert st.stray_sim_variables({}) == []
    assert st.stray_sim_variables({"GPUAFFINITY_PROCFS_ROOT": "/tmp/p"}) == [
        "gpuaffinity: GPUAFFINITY_PROCFS_ROOT='/tmp/p' is set outside `gpuaffinity sim run`: gpuaffinity reads that "
        "folder instead of this machine's; unset it unless you mean it"]


# --- settings.stray_sim_variables: inside `gpuaffinity sim run` the roots beside the config are expected -------

def _msg(var, value, what="that folder"):
    return (f"gpuaffinity: {var}={value!r} is set outside `gpuaffinity sim run`: gpuaffinity reads {what} instead "
            "of this machine's; unset it unless you mean it")


def test_simulator_roots_beside_the_config_are_not_stray(tmp_path):
    config = tmp_path / "machine.json"
    config.write_text("{}")
    inside = str(tmp_path / "proc")
    env = {"GPUAFFINITY_SIM_CONFIG": str(config), "GPUAFFINITY_PROCFS_ROOT": inside,
           "GPUAFFINITY_SIM_ALLOWED_CPUS": "0-3"}
    assert st.stray_sim_variables(env) == []
    env["GPUAFFINITY_DEV_ROOT"] = "/elsewhere/dev"
    assert st.stray_sim_variables(env) == [_msg("GPUAFFINITY_DEV_ROOT", "/elsewhere/dev")]


def test_every_stray_variable_is_named_not_only_the_first(tmp_path):
    env = {"GPUAFFINITY_DEV_ROOT": "/d", "GPUAFFINITY_SIM_ALLOWED_CPUS": "0-3"}
    assert st.stray_sim_variables(env) == [_msg("GPUAFFINITY_DEV_ROOT", "/d"),
                                           _msg("GPUAFFINITY_SIM_ALLOWED_CPUS", "0-3", "its CPU list")]


def test_stray_sim_variables_with_a_relative_config(tmp_path, monkeypatch):
    """A relative GPUAFFINITY_SIM_CONFIG is found from the working folder: the roots beside it are not stray, and a
    root anywhere else is.  (Were its folder taken as written, it would be "" for "m.json", which every absolute
    root counts as inside, and "sims" for "sims/m.json", which no absolute root counts as inside.)"""
    from gpuaffinity.core.settings import stray_sim_variables

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "m.json").write_text("{}")
    (tmp_path / "m.json").write_text("{}")
    beside = {"GPUAFFINITY_SIM_CONFIG": "sims/m.json", "GPUAFFINITY_PROCFS_ROOT": str(tmp_path / "sims" / "proc")}
    assert stray_sim_variables(beside) == []
    elsewhere = {"GPUAFFINITY_SIM_CONFIG": "m.json", "GPUAFFINITY_PROCFS_ROOT": "/etc/anywhere"}
    assert stray_sim_variables(elsewhere) == [
        "gpuaffinity: GPUAFFINITY_PROCFS_ROOT='/etc/anywhere' is set outside `gpuaffinity sim run`: gpuaffinity "
        "reads that folder instead of this machine's; unset it unless you mean it"]


# --- settings.stray_sim_variables: a config that is not a file gives no folder for roots to be inside -----------

def test_a_root_beside_a_missing_config_is_still_stray(tmp_path):
    root = str(tmp_path / "proc")
    env = {"GPUAFFINITY_SIM_CONFIG": str(tmp_path / "gone.json"), "GPUAFFINITY_PROCFS_ROOT": root}
    assert st.stray_sim_variables(env) == [
        f"gpuaffinity: GPUAFFINITY_PROCFS_ROOT={root!r} is set outside `gpuaffinity sim run`: gpuaffinity reads "
        "that folder instead of this machine's; unset it unless you mean it"]


# --- settings.stray_sim_variables: the environment by default; values cut to 120 characters ----------------------

def test_stray_sim_variables_reads_the_process_environment_by_default(monkeypatch):
    for var in (*st.SIM_ROOTS, st.SIM_CONFIG_VAR):
        monkeypatch.delenv(var, raising=False)
    assert st.stray_sim_variables() == []
    monkeypatch.setenv("GPUAFFINITY_DEV_ROOT", "/d")
    assert st.stray_sim_variables() == [_msg("GPUAFFINITY_DEV_ROOT", "/d")]


def test_a_stray_value_is_shown_cut_to_120_characters():
    value = "/" + "v" * 200
    assert st.stray_sim_variables({"GPUAFFINITY_DEV_ROOT": value}) == [_msg("GPUAFFINITY_DEV_ROOT", value[:120])]


def test_without_a_config_no_file_of_the_working_folder_stands_for_it(tmp_path, monkeypatch):
    for name in ("XXXX", "machine.json", "None"):
        (tmp_path / name).write_text("{}")
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path / "proc")
    assert st.stray_sim_variables({"GPUAFFINITY_PROCFS_ROOT": root}) == [_msg("GPUAFFINITY_PROCFS_ROOT", root)]
    assert st.stray_sim_variables({"GPUAFFINITY_SIM_CONFIG": "", "GPUAFFINITY_PROCFS_ROOT": root}) == [
        _msg("GPUAFFINITY_PROCFS_ROOT", root)]
    assert os.path.isfile("XXXX")


# --- settings.watch: declared variables join every later key ----------------------------------------------------

def test_watch_adds_variables_to_the_key_once(monkeypatch):
    monkeypatch.setattr(st, "_EXTRA", ())
    monkeypatch.setattr(st, "_EXTRA_KEYS", ())
    monkeypatch.setenv("GPA_TEST_WATCH_A", "a-value")
    monkeypatch.delenv("GPA_TEST_WATCH_B", raising=False)
    base = st.make_key(None, None, True)
    assert st.watch(["GPA_TEST_WATCH_B", "GPA_TEST_WATCH_A"]) is True
    assert st._EXTRA == ("GPA_TEST_WATCH_A", "GPA_TEST_WATCH_B")
    key = st.make_key(None, None, True)
    assert key[:len(base)] == base and len(key) == len(base) + 2
    assert [st._str(v) for v in key[len(base):]] == ["a-value", None]
    assert st.watch(["GPA_TEST_WATCH_A"]) is False and st.watch([]) is False
    assert st.watch(["GPA_TEST_WATCH_C"]) is True
    assert st._EXTRA == ("GPA_TEST_WATCH_A", "GPA_TEST_WATCH_B", "GPA_TEST_WATCH_C")
    assert len(st.make_key(None, None, True)) == len(base) + 3
