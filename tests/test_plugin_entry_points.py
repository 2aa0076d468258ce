"""How core/plugins.py finds third-party plugins, in process: plugin and distribution names, the
[gpuaffinity] section of entry_points.txt, the dist-info and egg-info folders on sys.path, importlib.metadata
where sys.path holds a zip, and the object an entry point names.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
import zipfile

from gpuaffinity import hookimpl
from gpuaffinity.core import plugins as pl
from helpers.fake_strategies import Good

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


# --- plugins._load: the attribute path after ":" is followed dot by dot -----------------------------------------

def test_load_follows_a_dotted_attribute_path(monkeypatch):
    mod = types.ModuleType("gpa_test_load")
    mod.outer = types.SimpleNamespace(inner=types.SimpleNamespace(plugin="found"))
    monkeypatch.setitem(sys.modules, "gpa_test_load", mod)
    assert pl._load("gpa_test_load: outer.inner.plugin ") == "found"
    assert pl._load("gpa_test_load:outer") is mod.outer
    assert pl._load("gpa_test_load") is mod


# --- plugins._metadata_entry_points / build_manager: importlib.metadata when sys.path holds a zip ----------------

def _zip_dist(tmp_path, text):
    path = tmp_path / "plugs.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("Zip_Plug-1.5.dist-info/METADATA", "Metadata-Version: 2.1\nName: Zip-Plug\nVersion: 1.5\n")
        z.writestr("Zip_Plug-1.5.dist-info/entry_points.txt", text)
    return path


def test_metadata_entry_points_reads_the_group_with_distribution_and_version(tmp_path, monkeypatch):
    path = _zip_dist(tmp_path, "[gpuaffinity]\nzp = gpa_test_zip:plugin\n[console_scripts]\nzz = a:b\n")
    monkeypatch.setattr(sys, "path", [str(path)])
    assert pl._metadata_entry_points("gpuaffinity") == [pl.PluginInfo("zp", "gpa_test_zip:plugin", "Zip-Plug", "1.5")]


def test_metadata_entry_points_without_a_distribution_leave_it_empty(monkeypatch):
    ep = importlib.metadata.EntryPoint("bare", "b:c", "gpuaffinity")
    assert getattr(ep, "dist", None) is None
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [ep] if group == "gpuaffinity" else [])
    got = pl._metadata_entry_points("gpuaffinity")
    assert got == [pl.PluginInfo("bare", "b:c", "", "")]
    assert (got[0].distribution, got[0].version) == ("", "")


def test_build_manager_falls_back_to_importlib_metadata_for_a_zip_on_sys_path(tmp_path, monkeypatch):
    mod = types.ModuleType("gpa_test_zip")
    mod.plugin = types.SimpleNamespace(gpuaffinity_strategies=hookimpl(lambda: [Good()]))
    monkeypatch.setitem(sys.modules, "gpa_test_zip", mod)
    path = _zip_dist(tmp_path, "[gpuaffinity]\nzp = gpa_test_zip:plugin\n")
    monkeypatch.setattr(sys, "path", [str(path)])
    assert pl.find_entry_points("gpuaffinity") is None
    pm, infos = pl.build_manager([], frozenset())
    assert pm is not None and infos == [pl.PluginInfo("zp", "gpa_test_zip:plugin", "Zip-Plug", "1.5")]
    assert [s.name for s in pl.collect_strategies(pm, frozenset(), infos)] == ["good"]


# --- plugins._section: the first "=" splits; the value ends at the first "[" ---------------------------------

def test_section_splits_at_the_first_equals_sign_and_cuts_at_the_first_bracket():
    text = "[gpuaffinity]\nk = pkg:f=g\nx = m:f [a] [b]\n"
    assert pl._section(text, "gpuaffinity") == [("k", "pkg:f=g"), ("x", "m:f")]


# --- plugins.find_entry_points: a missing sys.path entry is skipped; entry_points.txt is read as UTF-8 --------

def test_find_entry_points_skips_a_missing_entry_and_reads_utf8_whatever_the_locale(tmp_path, monkeypatch):
    folder = tmp_path / "u_plug-1.0.dist-info"
    folder.mkdir()
    (folder / "entry_points.txt").write_bytes("# café\n[gpuaffinity]\nu = u_plug:plugin\n".encode())
    real_open = open

    def ascii_locale_open(*args, encoding=None, **kw):  # what open() does with no encoding under LANG=C
        return real_open(*args, encoding=encoding or "ascii", **kw)

    monkeypatch.setattr(pl, "open", ascii_locale_open, raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path)])
    got = pl.find_entry_points("gpuaffinity")
    assert [(i.name, i.target, i.distribution, i.version) for i in got] == [("u", "u_plug:plugin", "u-plug", "1.0")]


# --- plugins._section: a ";" comment is skipped even when it holds "="; the value ends at "[" without a space ---

def test_section_skips_semicolon_comments_and_cuts_an_extra_without_a_space():
    text = "[gpuaffinity]\n; off = old.mod:plugin\na = pkg.mod:attr[extra]\n"
    assert pl._section(text, "gpuaffinity") == [("a", "pkg.mod:attr")]


# --- plugins.PluginInfo.__str__: a distribution without a version leaves no trailing space -------------------------

def test_a_plugin_of_a_distribution_without_version_is_named_without_a_trailing_space():
    assert str(pl.PluginInfo("p", "m:a", "foo-dist", "")) == "plugin 'p' (distribution foo-dist, entry point p = m:a)"


# --- plugins._dist_key: only "-", "_" and "." separate -----------------------------------------------------------

def test_dist_key_folds_only_dashes_underscores_and_dots():
    assert pl._dist_key("Xtra.-Pkg_X") == "xtra_pkg_x"


# --- plugins._section: nothing before the group's header; "#" and ";" lines are comments ---------------------------

def test_section_ignores_lines_before_any_header_and_comment_lines():
    text = "a = outside:x\n[gpuaffinity]\n# c = commented:x\n; d = commented:y\nb = m:f\n[other]\ne = o:p\n"
    assert pl._section(text, "gpuaffinity") == [("b", "m:f")]


# --- plugins._metadata_entry_points: an entry point object without a dist attribute -------------------------------

def test_metadata_entry_points_of_an_entry_point_without_a_dist_attribute(monkeypatch):
    import importlib.metadata

    ep = types.SimpleNamespace(name="bare", value="b:c")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == "gpuaffinity" else [])
    assert pl._metadata_entry_points("gpuaffinity") == [pl.PluginInfo("bare", "b:c", "", "")]


# --- plugins.find_entry_points: egg-info too, other files skipped, a distribution once, "" is the working folder ---

def _dist(folder, name, text):
    d = folder / name
    d.mkdir()
    (d / "entry_points.txt").write_text(text, encoding="utf-8")


def test_find_entry_points_reads_dist_info_and_egg_info_once_per_distribution(tmp_path, monkeypatch):
    (tmp_path / "aaa.txt").write_text("not a distribution")
    _dist(tmp_path, "foo_bar-1.0.dist-info", "[gpuaffinity]\nfb = fb_mod:plugin\n")
    _dist(tmp_path, "foo_bar-2.0.dist-info", "[gpuaffinity]\nfb2 = fb2_mod:plugin\n")
    _dist(tmp_path, "zed-3.0-py3.11.egg-info", "[gpuaffinity]\nz = z_mod:plugin\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    got = pl.find_entry_points("gpuaffinity")
    assert [(i.name, i.target, i.distribution) for i in got] == [("fb", "fb_mod:plugin", "foo-bar"),
                                                                 ("z", "z_mod:plugin", "zed")]
    assert got[0] == pl.PluginInfo("fb", "fb_mod:plugin", "foo-bar", "1.0")


def test_find_entry_points_reads_the_working_folder_for_an_empty_path_entry(tmp_path, monkeypatch):
    _dist(tmp_path, "here-1.0.dist-info", "[gpuaffinity]\nh = h_mod:plugin\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [""])
    assert pl.find_entry_points("gpuaffinity") == [pl.PluginInfo("h", "h_mod:plugin", "here", "1.0")]


def test_a_third_party_plugin_cannot_take_a_builtin_s_name(tmp_path, monkeypatch):
    from gpuaffinity.resolvers import builtin_plugins

    _dist(tmp_path, "impostor-1.0.dist-info", "[gpuaffinity]\npci = impostor_mod:plugin\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    pm, infos = pl.build_manager(builtin_plugins(), frozenset())
    assert pm is None  # the impostor is not loaded
    assert [i.name for i in infos] == ["pci", "cvd", "torch"]
