"""Plugin settings: read from napari's Preferences (or the environment), followed while widgets are open."""

from __future__ import annotations

import os
import shutil

import napari
import napari.settings
import pytest

from napari_pmt_iqa import _settings
from napari_pmt_iqa._settings import PLUGIN_NAME, get_settings, watch_settings

#: napari 0.5 has no plugin settings (npe2 ``configurations`` appear in the Preferences later)
needs_plugin_settings = pytest.mark.skipif(
    not hasattr(napari.settings, "get_plugin_settings"),
    reason=f"napari {napari.__version__} has no plugin settings",
)


@pytest.fixture
def fresh_plugin_settings(tmp_path, monkeypatch):
    """napari's plugin settings stored under ``tmp_path`` (never in the user's config folder)."""
    from napari import settings as napari_settings

    napari_settings._clear_plugin_settings_cache()
    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(tmp_path / "settings.yaml"))
    yield
    napari_settings._clear_plugin_settings_cache()


def _prefs():
    from napari.settings import get_plugin_settings

    return get_plugin_settings(PLUGIN_NAME).scoring


def test_plugin_settings_and_fallback(monkeypatch):
    s = get_settings()
    assert s.device and s.memory_mb >= 16
    monkeypatch.setenv("PMT_IQA_MEMORY_MB", "333")
    monkeypatch.setenv("PMT_IQA_DEVICE", "cpu")
    fb = _settings._from_env()
    assert fb.memory_mb == 333 and fb.device == "cpu"


@needs_plugin_settings
def test_preferences_changed_at_run_time_reach_open_widgets(
    make_napari_viewer, fresh_plugin_settings, tmp_path, tiny_checkpoint
):
    viewer = make_napari_viewer()
    _, scorer = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Score image quality")
    _, datasets = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Score an IQA data set")
    prefs = _prefs()
    cache_before = os.environ.get("PMT_IQA_CACHE")

    prefs.device = "cpu"
    assert scorer.chooser.device() == "cpu" and datasets.chooser.device() == "cpu"
    prefs.memory_mb = 333
    assert scorer.chooser.memory_mb() == 333 and datasets.chooser.memory_mb() == 333
    # a value chosen in the widget stays until that setting itself changes
    scorer.chooser.memory_spin.setValue(64)
    prefs.reader_max_images = 2
    assert scorer.chooser.memory_mb() == 64 and get_settings().reader_max_images == 2

    # a new cache folder: the models trained in the GUI listed from there appear at once
    cache = tmp_path / "cache"
    (cache / "user-models").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, cache / "user-models" / "mine.safetensors")
    prefs.cache_dir = str(cache)
    assert os.environ["PMT_IQA_CACHE"] == str(cache)
    for chooser in (scorer.chooser, datasets.chooser):
        labels = [chooser.model_combo.itemText(i) for i in range(chooser.model_combo.count())]
        assert "mine.safetensors" in labels
    prefs.cache_dir = ""  # back to what it was
    assert os.environ.get("PMT_IQA_CACHE") == cache_before


@needs_plugin_settings
def test_watch_settings_stops_and_survives_a_deleted_widget(fresh_plugin_settings):
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    seen = []
    stop = watch_settings(lambda s: seen.append(s.memory_mb))
    _prefs().memory_mb = 100
    assert seen == [100]
    stop()
    _prefs().memory_mb = 200
    assert seen == [100]

    def gone(_settings):
        raise RuntimeError("wrapped C/C++ object has been deleted")

    calls = []
    watch_settings(lambda s: (calls.append(1), gone(s)))
    _prefs().memory_mb = 300  # the callback raises: it is disconnected, nothing else happens
    _prefs().memory_mb = 400
    assert calls == [1]
