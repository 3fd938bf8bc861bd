"""Plugin settings: device, weights cache folder, memory budget, reader limit.

In napari >= 0.9 they are declared in the manifest (``contributions.configurations.scoring``) and
edited in napari's Preferences; :func:`get_settings` reads them through
``napari.settings.get_plugin_settings``. With an older napari (no plugin settings) the same values
come from environment variables (``PMT_IQA_DEVICE``, ``PMT_IQA_CACHE``, ``PMT_IQA_MEMORY_MB``,
``PMT_IQA_READER_MAX_IMAGES``) or the defaults below.

Changes made in Preferences while widgets are open reach them at once: :func:`watch_settings`
subscribes to the events napari emits for plugin settings.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

PLUGIN_NAME = "napari-pmt-iqa"
CONFIG_KEY = "scoring"


@dataclass
class Settings:
    """The plugin's settings with their defaults.

    Attributes
    ----------
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    cache_dir
        Folder for downloaded weights; empty means the default (``~/.cache/napari-pmt-iqa``).
    memory_mb
        Memory budget of one backbone pass; larger images are scored in tiles.
    reader_max_images
        How many images of a data set the reader opens at most.
    """

    device: str = "auto"
    cache_dir: str = ""
    memory_mb: int = 1024
    reader_max_images: int = 24
    source: str = "defaults"


def _from_env() -> Settings:
    s = Settings(source="environment")
    s.device = os.environ.get("PMT_IQA_DEVICE", s.device) or "auto"
    s.cache_dir = os.environ.get("PMT_IQA_CACHE", s.cache_dir)
    for attr, var in (
        ("memory_mb", "PMT_IQA_MEMORY_MB"),
        ("reader_max_images", "PMT_IQA_READER_MAX_IMAGES"),
    ):
        raw = os.environ.get(var)
        if raw:
            try:
                setattr(s, attr, max(1, int(float(raw))))
            except ValueError:
                pass
    return s


def get_settings() -> Settings:
    """The current settings: napari's plugin settings when available, else the environment.

    Returns
    -------
    Settings
        ``source`` says where they came from (``"napari"``, ``"environment"``).
    """
    try:
        from napari.settings import get_plugin_settings  # napari >= 0.9
    except ImportError:
        return _from_env()
    try:
        group = getattr(get_plugin_settings(PLUGIN_NAME), CONFIG_KEY)
    except Exception:  # plugin not registered with npe2 (e.g. a bare checkout), no settings model
        return _from_env()
    s = Settings(source="napari")
    for attr in ("device", "cache_dir", "memory_mb", "reader_max_images"):
        val = getattr(group, attr, None)
        if val is not None:
            setattr(s, attr, val)
    s.device = str(s.device or "auto")
    s.cache_dir = str(s.cache_dir or "")
    s.memory_mb = max(16, int(s.memory_mb))
    s.reader_max_images = max(1, int(s.reader_max_images))
    return s


#: The ``$PMT_IQA_CACHE`` value :func:`apply_cache_dir` set (and the one it replaced).
_CACHE_ENV: dict[str, str | None] = {}


def apply_cache_dir(settings: Settings | None = None) -> None:
    """Point :func:`napari_pmt_iqa.weights.cache_dir` at the configured folder.

    An empty setting gives back whatever ``$PMT_IQA_CACHE`` was before this function set it.
    """
    settings = settings or get_settings()
    if settings.cache_dir:
        if "set" not in _CACHE_ENV:
            _CACHE_ENV["before"] = os.environ.get("PMT_IQA_CACHE")
        _CACHE_ENV["set"] = os.path.expanduser(settings.cache_dir)
        os.environ["PMT_IQA_CACHE"] = _CACHE_ENV["set"]
    elif "set" in _CACHE_ENV:
        if os.environ.get("PMT_IQA_CACHE") == _CACHE_ENV.pop("set"):
            before = _CACHE_ENV.pop("before", None)
            if before is None:
                os.environ.pop("PMT_IQA_CACHE", None)
            else:
                os.environ["PMT_IQA_CACHE"] = before


def watch_settings(callback: Callable[[Settings], None]) -> Callable[[], None]:
    """Call ``callback(settings)`` whenever the plugin's settings change in napari's Preferences.

    Parameters
    ----------
    callback
        Gets the new :class:`Settings`. If it raises ``RuntimeError`` (its Qt widget is gone) it is
        disconnected.

    Returns
    -------
    Callable
        Call it to stop watching. With a napari without plugin settings (< 0.9), or when the plugin
        is not registered with napari, nothing is watched and it does nothing.
    """
    try:
        from napari.settings import get_plugin_settings

        events = getattr(get_plugin_settings(PLUGIN_NAME), CONFIG_KEY).events
    except Exception:  # no plugin settings in this napari, or the plugin is not registered
        return lambda *_: None

    def on_change(event=None) -> None:
        try:
            callback(get_settings())
        except RuntimeError:  # the widget's Qt side was deleted
            stop()

    def stop(*_: object) -> None:
        try:
            events.disconnect(on_change)
        except Exception:  # already disconnected
            pass

    events.connect(on_change)
    return stop
