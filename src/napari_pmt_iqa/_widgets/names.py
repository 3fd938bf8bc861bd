"""Layer names as the docks show them (Qt-free, so that the overlay helpers can use it)."""

from __future__ import annotations

#: Characters of a layer name shown in a widget's labels (longer names are cut in the middle).
NAME_CHARS = 32


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    tail = max(4, (limit - 1) // 2)
    return text[: limit - 1 - tail] + "\u2026" + text[-tail:]


def shown_name(name: str, limit: int = NAME_CHARS) -> str:
    """A layer name as a dock's labels show it: no word longer than ``limit`` characters, and at
    most ``2 * limit`` characters in all.

    File names of microscopes and scanners run to 80 characters without a space; a label cannot
    wrap such a name, and one long word would make the dock wider than the screen's share of it.
    Such words keep their start and end (``2026-11-30_slide-04…stitched.ome.tif``); names with
    spaces wrap and stay whole up to ``2 * limit`` characters. The layer list shows every name
    whole.
    """
    words = [_cut(w, limit) for w in str(name).split(" ")]
    return _cut(" ".join(words), 2 * limit)
