"""The napari manifest: valid for npe2, and every contribution resolves."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_npe2_validate():
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    assert exe, "the npe2 command is not installed"
    out = subprocess.run(
        [exe, "validate", str(ROOT / "napari.yaml")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout.lower()


def test_package_manifest_is_the_top_level_one():
    pkg = ROOT / "src" / "napari_pmt_iqa" / "napari.yaml"
    assert pkg.resolve() == (ROOT / "napari.yaml").resolve()


def test_contributions_resolve():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-pmt-iqa")
    for cmd in mf.contributions.commands:
        if cmd.id.startswith("napari-pmt-iqa.") and cmd.python_name:
            mod, attr = cmd.python_name.split(":")
            __import__(mod)
            assert hasattr(sys.modules[mod], attr), cmd.python_name
    keys = {w.command for w in mf.contributions.widgets}
    assert {"napari-pmt-iqa.score_widget", "napari-pmt-iqa.dataset_widget"} <= keys
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("npe2")) < Version("0.9"):
        return  # npe2 < 0.9 knows no plugin settings (`configurations`); _settings falls back
    props = mf.contributions.configurations["scoring"].properties
    assert {"device", "cache_dir", "memory_mb"} <= set(props)


def test_torch_guard_does_not_import_torch():
    code = (
        "import sys; from napari_pmt_iqa._torch_guard import guard_triton, has_nvidia_gpu;"
        "r = guard_triton(); assert 'torch' not in sys.modules;"
        "assert r == (not has_nvidia_gpu()); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize(
    "module",
    [
        "napari_pmt_iqa._widgets",
        "napari_pmt_iqa._widgets.docks",
        "napari_pmt_iqa._sample_data",
        "napari_pmt_iqa._reader",
        "napari_pmt_iqa._writer",
        "napari_pmt_iqa._widgets.triage_widget",
        "napari_pmt_iqa._widgets.score_options",
    ],
)
def test_startup_modules_do_not_import_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_map_writers_are_in_the_manifest():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-pmt-iqa")
    writers = {(w.command, tuple(w.layer_types)) for w in mf.contributions.writers}
    assert ("napari-pmt-iqa.write_map", ("image",)) in writers
    # every map is an Image layer (the class map too): no Labels writer
    assert ("napari-pmt-iqa.write_maps", ("image+",)) in writers
    assert not any("labels" in t for _, types in writers for t in types)
    # plain .tif stays with napari's own writer: the plugin claims .csv and the compound .map.tif
    exts = {e for w in mf.contributions.writers for e in w.filename_extensions}
    assert ".tif" not in exts and {".csv", ".map.tif"} <= exts
    assert "napari-pmt-iqa.triage_widget" in {w.command for w in mf.contributions.widgets}


def test_menus_put_the_widgets_under_layers_measure_and_annotate(make_napari_viewer):
    """The manifest's ``menus`` reach napari's Layers menu (napari registers them with the plugin)."""
    import napari

    try:
        from napari._app_model import get_app_model
    except ImportError:  # napari < 0.6
        from napari._app_model import get_app as get_app_model

    viewer = make_napari_viewer()
    app = get_app_model()
    if "napari/layers/measure" not in app.menus._menu_items:
        pytest.skip(
            f"napari {napari.__version__} has no Layers > Measure menu (the entries are ignored)"
        )

    def commands(menu_id):
        return {
            getattr(item, "command", None) and item.command.id
            for item in app.menus.get_menu(menu_id)
        }

    def entry(menu_id, command, title):
        """The menu's command for a widget: its manifest id (napari >= 0.6) or, in napari 0.5,
        the id napari makes of the plugin and the widget's display name."""
        found = commands(menu_id)
        for cid in (command, f"napari-pmt-iqa:{title}"):
            if cid in found:
                return cid
        raise AssertionError(f"{command} is not in {menu_id}: {sorted(map(str, found))}")

    for command, title in (
        ("score_widget", "Score image quality"),
        ("dataset_widget", "Score an IQA data set"),
        ("finetune_widget", "Fine-tune a quality model"),
        ("triage_widget", "Score a folder of images"),
    ):
        entry("napari/layers/measure", f"napari-pmt-iqa.{command}", title)
    rate = entry("napari/layers/annotate", "napari-pmt-iqa.rating_widget", "Rate image quality")
    # choosing the menu entry docks the widget
    app.commands.execute_command(rate).result()
    docks = getattr(viewer.window, "dock_widgets", None) or viewer.window._dock_widgets
    assert any("Rate image quality" in name for name in docks)
