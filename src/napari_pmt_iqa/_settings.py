"""Plugin settings: device, weights cache folder, memory budget, reader limit.

In napari >= 0.9 they are declared in the manifest (``contributions.configurations.scoring``) and
edited in napari's Preferences; :func:`get_settings` reads them through
``napari.settings.get_plugin_settings``. With an older napari (no plugin settings) the same values
come from environment variables (``PMT_IQA_DEVICE``, ``PMT_IQA_CACHE``, ``PMT_IQA_MEMORY_MB``,
``PMT_IQA_READER_MAX_IMAGES``) or the defaults below.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import os
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


def apply_cache_dir(settings: Settings | None = None) -> None:
    """Point :func:`napari_pmt_iqa.weights.cache_dir` at the configured folder (if one is set)."""
    settings = settings or get_settings()
    if settings.cache_dir:
        os.environ["PMT_IQA_CACHE"] = os.path.expanduser(settings.cache_dir)
