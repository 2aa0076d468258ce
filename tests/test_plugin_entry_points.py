"""How core/plugins.py finds third-party plugins, in process: plugin and distribution names, the
[gpuaffinity] section of entry_points.txt, the dist-info and egg-info folders on sys.path, importlib.metadata
where sys.path holds a zip, and the object an entry point names.
"""

from __future__ import annotations

import sys

from gpuaffinity.core import plugins as pl

# --- plugins.valid_name, _dist_key, PluginInfo: the names a plugin and its distribution go by -----------------------

def test_valid_name_and_dist_key():
    assert [pl.valid_name(n) for n in ("a", "launcher-2.x_y", "a" * 40, "a" * 41, "", "2a", "_a", "a b", "é")] == [
        True, True, True, False, False, False, False, False, False]
    assert pl._dist_key("My.Pkg--name__x") == "my_pkg_name_x"


def test_plugin_info_names_where_it_came_from():
    assert str(pl.PluginInfo("cvd")) == "built-in plugin 'cvd'"
    assert str(pl.PluginInfo("x", "m:f", "x-dist", "1.0")) == (
        "plugin 'x' (distribution x-dist 1.0, entry point x = m:f)")
    assert str(pl.PluginInfo("x", "m:f")) == "plugin 'x' (distribution ?, entry point x = m:f)"


# --- plugins._section, find_entry_points: the [gpuaffinity] group of each distribution on sys.path ------------------

def test_section_reads_one_group():
    text = "[console_scripts]\na = b:c\n\n# note\n[gpuaffinity]\n one = pkg.mod:attr [extra]\n;x\ntwo=m\n[other]\nz=y\n"
    assert pl._section(text, "gpuaffinity") == [("one", "pkg.mod:attr"), ("two", "m")]


def test_find_entry_points_reads_the_dist_info_folders(tmp_path, monkeypatch):
    for folder, text in (("my_plug-1.2.dist-info", "[gpuaffinity]\nmine = my_plug:plugin\n"),
                         ("My.Plug-9.0.dist-info", "[gpuaffinity]\nshadowed = x:y\n"),
                         ("other-0.1.dist-info", "[console_scripts]\nz = q:r\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "entry_points.txt").write_text(text)
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing")])
    got = pl.find_entry_points("gpuaffinity")
    # folders in sorted order (upper case first): the first of a normalised name wins, shown with "-" for "_"
    assert [(i.name, i.target, i.distribution, i.version) for i in got] == [("shadowed", "x:y", "My.Plug", "9.0")]
    (tmp_path / "My.Plug-9.0.dist-info" / "entry_points.txt").unlink()
    (tmp_path / "a_b-3.dist-info").mkdir()
    (tmp_path / "a_b-3.dist-info" / "entry_points.txt").write_text("[gpuaffinity]\nab = a_b.x:y [opt]\n")
    got = pl.find_entry_points("gpuaffinity")
    assert [(i.name, i.target, i.distribution, i.version) for i in got] == [("ab", "a_b.x:y", "a-b", "3")]
