"""Rate images (or planes of stacks) in the viewer, to fine-tune a model on your own judgement.

Ratings live in the layer's metadata, ``layer.metadata["pmt_iqa_ratings"] = {plane_key: score}``,
where ``plane_key`` is the tuple of indices of the layer's non-displayed axes (``()`` for a 2D
image) and ``score`` is on the quality scale 0-100 (higher is better; the internal scale of the
models). The five-star buttons (and the keys 1-5) map onto it as 1 -> 10, 2 -> 30, 3 -> 50,
4 -> 70, 5 -> 90 (the centres of five equal bins). ``0`` (or the Clear button) removes a rating.

Save writes a CSV in the generic layout (``image,mos`` plus ``layer,plane``) and the rated planes as
image files in a folder next to it (PNG for 8-bit images, TIFF otherwise), so that the CSV can be
used by ``pmt-iqa train`` and by the fine-tune widget; Load reads such a CSV back (onto the layers
of the same name, or as new layers).

What is rated: the Image layer selected in the layer list (napari's active layer), never a map
layer made by this plugin (:func:`~napari_pmt_iqa._widgets.overlays.is_plugin_overlay`); when
nothing is selected and only one image is open, that image. The widget says which layer and plane
it rates, and disables its buttons (with the reason) where no rating can be given: no image
selected, a map or another layer type selected, a 3D view or a rolled/transposed dims order.

Keyboard shortcuts: napari binds 1 and 2 to the Image layer's modes; while "Keys 0-5" is checked,
this widget binds 0-5 on the viewer and on each Image layer (with ``overwrite=True``, so that they
win over the layer's mode keys) and restores the previous bindings when unchecked or closed.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .names import shown_name
from .overlays import is_plugin_overlay, overlay_message

if TYPE_CHECKING:  # pragma: no cover
    import napari

RATINGS_KEY = "pmt_iqa_ratings"
SCALE_LOW, SCALE_HIGH = 0.0, 100.0
SCALE_NAME = "quality (0-100, rated in napari)"
STARS = {1: 10.0, 2: 30.0, 3: 50.0, 4: 70.0, 5: 90.0}
KEYS = ("0", "1", "2", "3", "4", "5")

__all__ = [
    "RATINGS_KEY",
    "STARS",
    "RatingWidget",
    "clear_rating",
    "get_plane",
    "get_rating",
    "load_ratings_csv",
    "plane_key",
    "rated_layers",
    "rated_pairs",
    "ratings_changed",
    "save_ratings_csv",
    "set_rating",
    "stars_to_score",
]


class _Signals:
    changed = Signal(object)  # the layer whose ratings changed (None: several)


_SIGNALS = _Signals()
#: Emitted (with the layer) whenever a rating is set, cleared or loaded.
ratings_changed = _SIGNALS.changed


# --------------------------------------------------------------------------- Qt-free helpers
def stars_to_score(stars: int) -> float:
    """Map 1-5 stars onto the 0-100 quality scale (1 -> 10, ..., 5 -> 90)."""
    if stars not in STARS:
        raise ValueError(f"A star rating is 1 to 5; got {stars!r}.")
    return STARS[stars]


def _is_image(layer: Any) -> bool:
    """An Image layer that is not one of this plugin's maps (works through napari's layer proxies)."""
    from napari.layers import Image

    return isinstance(layer, Image) and not is_plugin_overlay(layer)


def _same(a: Any, b: Any) -> bool:
    """Identity of two layers, seen directly or through napari's ``PublicOnlyProxy``."""
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def plane_text(key: Sequence[int]) -> str:
    """``"plane 3"`` or ``"plane 1, 3"`` for a plane key; ``""`` for a 2D image."""
    return f"plane {', '.join(str(int(k)) for k in key)}" if len(key) else ""


def _level0(layer: Any):
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def plane_key(layer: Any, viewer: Any) -> tuple[int, ...]:
    """The key of the plane of ``layer`` shown now: the indices of its leading axes.

    ``()`` for a 2D image. A key indexes the axes before the last two (e.g. ``(t, z)``).

    Raises
    ------
    ValueError
        The viewer does not show the layer's last two axes in 2D (3D view or a rolled or
        transposed dims order): the shown plane then is not one plane of the stack.
    """
    lead = layer.ndim - 2
    if lead <= 0:
        return ()
    offset = viewer.dims.ndim - layer.ndim
    displayed = sorted(d - offset for d in viewer.dims.displayed)
    if viewer.dims.ndisplay != 2 or displayed != [layer.ndim - 2, layer.ndim - 1]:
        raise ValueError(
            "Only planes of the last two axes can be rated: switch to the 2D view and reset the "
            "dims order (roll/transpose back)."
        )
    pos = layer.world_to_data(viewer.dims.point)
    shape = _level0(layer).shape
    return tuple(int(np.clip(round(float(pos[a])), 0, shape[a] - 1)) for a in range(lead))


def get_plane(layer: Any, key: Sequence[int] = (), axes: Sequence[int] | None = None) -> np.ndarray:
    """The 2D image (``(H, W)`` or ``(H, W, C)`` for RGB) of ``layer`` at ``key``.

    Parameters
    ----------
    layer
        A napari Image layer (multiscale layers use their full-resolution level).
    key
        Indices of the leading axes, as returned by :func:`plane_key`.
    axes
        Which axes ``key`` indexes (layer coordinates); by default the first ``len(key)`` axes.
    """
    data = _level0(layer)
    axes = list(axes) if axes is not None else list(range(len(key)))
    if len(axes) != len(key):
        raise ValueError(f"plane key {tuple(key)} does not match the axes {axes}.")
    index: list[Any] = [slice(None)] * len(data.shape)
    for a, i in zip(axes, key):
        index[a] = int(i)
    plane = np.asarray(data[tuple(index)])
    spatial = plane.ndim - (1 if getattr(layer, "rgb", False) else 0)
    while spatial > 2:  # axes left over (a 3D view): rate the first plane of them
        plane = plane[0]
        spatial -= 1
    return plane


def get_ratings(layer: Any) -> dict:
    """The ratings of ``layer`` (``{plane_key: score}``; empty when none)."""
    r = layer.metadata.get(RATINGS_KEY) if hasattr(layer, "metadata") else None
    return r if isinstance(r, dict) else {}


def get_rating(layer: Any, key: Sequence[int]) -> float | None:
    """The rating of one plane, or None."""
    v = get_ratings(layer).get(tuple(key))
    return None if v is None else float(v)


def set_rating(layer: Any, key: Sequence[int], score: float) -> None:
    """Store ``score`` (0-100) for the plane ``key`` of ``layer`` in its metadata.

    Raises
    ------
    ValueError
        ``layer`` is one of this plugin's maps (maps are not images to rate), or the score is not
        in 0-100.
    """
    if is_plugin_overlay(layer):
        raise ValueError(overlay_message(layer, "rated"))
    score = float(score)
    if not (SCALE_LOW <= score <= SCALE_HIGH) or score != score:
        raise ValueError(f"A rating is between {SCALE_LOW:g} and {SCALE_HIGH:g}; got {score}.")
    ratings = dict(get_ratings(layer))
    ratings[tuple(int(k) for k in key)] = score
    layer.metadata[RATINGS_KEY] = ratings
    ratings_changed.emit(layer)


def clear_rating(layer: Any, key: Sequence[int]) -> bool:
    """Remove the rating of one plane; True if there was one."""
    ratings = dict(get_ratings(layer))
    found = ratings.pop(tuple(key), None) is not None
    if found:
        layer.metadata[RATINGS_KEY] = ratings
        ratings_changed.emit(layer)
    return found


def stale_ratings(layer: Any) -> list[tuple[int, ...]]:
    """Keys of the ratings whose planes no longer exist in ``layer`` (nothing is changed)."""
    shape = tuple(_level0(layer).shape)
    lead = len(shape) - (3 if getattr(layer, "rgb", False) else 2)
    return [
        k
        for k in get_ratings(layer)
        if len(k) != lead or any(not 0 <= int(i) < shape[a] for a, i in enumerate(k))
    ]


def rated_plane_count(layers: Iterable[Any]) -> int:
    """How many planes :func:`rated_pairs` would give: ratings of existing planes of the rated
    Image layers (stale ones are not counted, and not dropped either)."""
    return sum(len(get_ratings(ly)) - len(stale_ratings(ly)) for ly in rated_layers(layers))


def prune_stale_ratings(layer: Any) -> list[tuple[int, ...]]:
    """Drop the ratings of planes that no longer exist; returns their keys.

    A rating points at a plane by its indices along the leading axes; when the layer's data is
    replaced by a smaller stack after rating, those planes are gone and so is what was rated.
    A warning (a notification in napari) names what was dropped.
    """
    ratings = get_ratings(layer)
    stale = stale_ratings(layer)
    if stale:
        shape = tuple(_level0(layer).shape)
        lead = len(shape) - (3 if getattr(layer, "rgb", False) else 2)
        import warnings

        layer.metadata[RATINGS_KEY] = {k: v for k, v in ratings.items() if k not in stale}
        ratings_changed.emit(layer)
        shown = ", ".join("-".join(map(str, k)) for k in stale[:5])
        warnings.warn(
            f"Dropped {len(stale)} rating(s) of '{layer.name}' whose planes no longer exist (its "
            f"data changed after rating; its stack is now {shape[: max(lead, 0)]}): plane {shown}.",
            stacklevel=2,
        )
    return stale


def rated_layers(layers: Iterable[Any]) -> list[Any]:
    """The Image layers that carry at least one rating (never this plugin's maps)."""
    return [ly for ly in layers if _is_image(ly) and get_ratings(ly)]


def rated_pairs(layers: Iterable[Any]) -> list[tuple[np.ndarray, float]]:
    """``(plane, score)`` pairs of every rated plane: the ``data`` of a fine-tuning ``TrainConfig``."""
    out = []
    for layer in rated_layers(layers):
        prune_stale_ratings(layer)
        for key, score in sorted(get_ratings(layer).items()):
            out.append((get_plane(layer, key), float(score)))
    return out


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def _write_plane(path_no_suffix: Path, plane: np.ndarray) -> Path:
    """PNG for 8-bit grey/RGB(A) planes, TIFF (dtype kept) for everything else."""
    from ..atomic import atomic_write_bytes

    if plane.dtype == np.uint8 and (plane.ndim == 2 or plane.shape[-1] in (3, 4)):
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(plane).save(buf, format="PNG")
        path = path_no_suffix.with_suffix(".png")
    else:
        import io

        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ascontiguousarray(plane))
        path = path_no_suffix.with_suffix(".tif")
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_ratings_csv(layers: Iterable[Any], csv_path: str | os.PathLike) -> tuple[Path, int]:
    """Write every rated plane as an image file and a CSV ``image,mos,layer,plane`` next to them.

    The images go to ``<csv folder>/<csv stem>_images/``; paths in the CSV are relative to the
    CSV, so the folder can be moved. ``pmt-iqa train --data <csv>`` and the fine-tune widget read it.

    Returns
    -------
    (Path, int)
        The CSV and the number of rows written.

    Raises
    ------
    ValueError
        No rated image among ``layers``.
    """
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise ValueError(f"{csv_path} is a folder: give the name of the CSV file to write in it.")
    if csv_path.suffix.lower() != ".csv":
        csv_path = csv_path.with_suffix(".csv")
    layers = list(layers)
    for layer in rated_layers(layers):
        prune_stale_ratings(layer)
    layers = rated_layers(layers)
    if not layers:
        raise ValueError(
            "No image is rated yet: rate images with the buttons or the keys 1-5 first."
        )
    img_dir = csv_path.parent / f"{csv_path.stem}_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    used: set[str] = set()
    for layer in layers:
        for key, score in sorted(get_ratings(layer).items()):
            stem = _file_stem(layer.name) + ("_" + "-".join(str(k) for k in key) if key else "")
            base, n = stem, 2
            while stem in used:
                stem, n = f"{base}_{n}", n + 1
            used.add(stem)
            path = _write_plane(img_dir / stem, get_plane(layer, key))
            rows.append(
                {
                    "image": path.relative_to(csv_path.parent).as_posix(),
                    "mos": f"{float(score):.4g}",
                    "layer": layer.name,
                    "plane": "-".join(str(k) for k in key),
                }
            )
    from ..export import write_table_csv

    write_table_csv(csv_path, ("image", "mos", "layer", "plane"), rows)
    return csv_path, len(rows)


def load_ratings_csv(csv_path: str | os.PathLike, viewer: Any) -> int:
    """Read a ratings CSV back: onto layers of the same name, else as new layers from the files.

    Returns
    -------
    int
        The number of ratings restored.

    Raises
    ------
    ValueError
        The file is not a CSV with the columns ``image`` and ``mos``, or a score is not a number.
    """
    from ..imaging import read_image

    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{csv_path} cannot be read as a CSV file ({exc}).") from exc
    if not rows or "image" not in rows[0] or "mos" not in rows[0]:
        raise ValueError(f"{csv_path} needs the columns image,mos (as written by Save).")
    by_name = {ly.name: ly for ly in viewer.layers if _is_image(ly)}
    # every row is checked (and every new image read) first: a bad row changes nothing
    on_layers: list[tuple[Any, tuple, float]] = []
    new_images: list[tuple[str, Path, Any, float]] = []
    for i, row in enumerate(rows, start=2):
        try:
            score = float(row["mos"])
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{csv_path}, line {i}: the score {row['mos']!r} is not a number. No rating "
                "was loaded."
            ) from exc
        if not SCALE_LOW <= score <= SCALE_HIGH:
            raise ValueError(
                f"{csv_path}, line {i}: the score {score} is outside {SCALE_LOW:g}-{SCALE_HIGH:g}, the "
                "scale of ratings given in napari. No rating was loaded."
            )
        plane = (row.get("plane") or "").strip()
        if plane and not re.fullmatch(r"\d+(-\d+)*", plane):
            raise ValueError(
                f"{csv_path}, line {i}: the plane {plane!r} is not plane indices such as 3 or 0-3 "
                "(as written by Save); fix or empty that cell. No rating was loaded."
            )
        key = tuple(int(k) for k in plane.split("-")) if plane else ()
        layer = by_name.get((row.get("layer") or "").strip())
        if layer is not None and len(key) <= max(0, layer.ndim - 2):
            shape = _level0(layer).shape
            if all(0 <= k < shape[a] for a, k in enumerate(key)):
                on_layers.append((layer, key, score))
                continue
        path = (csv_path.parent / (row.get("image") or "")).resolve()
        try:
            data = read_image(path)
        except (ValueError, OSError) as exc:  # ImageError: missing, a folder, unreadable
            raise ValueError(f"{csv_path}, line {i}: {exc} No rating was loaded.") from exc
        new_images.append(((row.get("layer") or "").strip(), path, data, score))
    for layer, key, score in on_layers:
        set_rating(layer, key, score)
    for name, path, data, score in new_images:
        name = name or path.stem
        if name in by_name:
            name = f"{name} [{path.stem}]"
        new = viewer.add_image(data, name=name, metadata={RATINGS_KEY: {(): score}})
        by_name[new.name] = new
        ratings_changed.emit(new)
    return len(on_layers) + len(new_images)


# --------------------------------------------------------------------------- widget
class RatingWidget(QWidget):
    """A compact control to rate the current image or plane (0-100, or 1-5 stars, or keys 0-5).

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._bound: list[tuple[Any, str, Any]] = []  # (keymap owner, key, previous binding)
        self._closed = False
        self.problem = ""
        self.last_rated: tuple[str, tuple[int, ...]] | None = None

        self.target_label = QLabel("No image layer.")
        self.target_label.setWordWrap(True)
        self.rating_label = QLabel("not rated")
        self.spin = QDoubleSpinBox()
        self.spin.setRange(SCALE_LOW, SCALE_HIGH)
        self.spin.setDecimals(1)
        self.spin.setSingleStep(5.0)
        self.spin.setValue(50.0)
        self.spin.setToolTip("Quality on the 0-100 scale of the models (higher is better).")
        self.set_button = QPushButton("Rate")
        self.set_button.setToolTip(
            "Store the value on the left as the rating of the current plane."
        )
        self.star_buttons: list[QPushButton] = []
        stars = QHBoxLayout()
        stars.setSpacing(2)
        for s in range(1, 6):
            b = QPushButton(str(s))
            b.setFixedWidth(34)
            b.setToolTip(f"{s} of 5 (= {STARS[s]:g} of 100); key {s}")
            b.clicked.connect(lambda _=False, s=s: self.rate_stars(s))
            self.star_buttons.append(b)
            stars.addWidget(b)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Remove the rating of the current plane (key 0).")
        stars.addWidget(self.clear_button)
        self.keys_check = QCheckBox("Keys 0-5")
        self.keys_check.setToolTip(
            "Rate with the keys 1-5 (0 clears). While checked they replace napari's layer-mode "
            "keys 1 and 2 of Image layers."
        )
        self.count_label = QLabel("0 rated")
        self.save_button = QPushButton("Save CSV...")
        self.save_button.setToolTip(
            "Save the ratings and the rated planes (image,mos) for training."
        )
        self.load_button = QPushButton("Load CSV...")

        grid = QGridLayout()
        grid.addWidget(QLabel("Image:"), 0, 0)
        grid.addWidget(self.target_label, 0, 1, 1, 2)
        grid.addWidget(QLabel("Rating:"), 1, 0)
        grid.addWidget(self.rating_label, 1, 1, 1, 2)
        grid.addWidget(self.spin, 2, 1)
        grid.addWidget(self.set_button, 2, 2)
        lay = QVBoxLayout(self)
        lay.addLayout(grid)
        lay.addLayout(stars)
        row = QHBoxLayout()
        row.addWidget(self.keys_check)
        row.addStretch(1)
        row.addWidget(self.count_label)
        lay.addLayout(row)
        row2 = QHBoxLayout()
        row2.addWidget(self.save_button)
        row2.addWidget(self.load_button)
        lay.addLayout(row2)
        lay.addStretch(1)

        self.set_button.clicked.connect(lambda: self.rate(self.spin.value()))
        self.clear_button.clicked.connect(self.clear)
        self.keys_check.toggled.connect(self._on_keys_toggled)
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        self.viewer.dims.events.current_step.connect(self.refresh)
        self.viewer.dims.events.ndisplay.connect(self.refresh)
        self.viewer.dims.events.order.connect(self.refresh)
        self.viewer.layers.selection.events.active.connect(self.refresh)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self.refresh)
        ratings_changed.connect(self._on_ratings_changed)
        self.keys_check.setChecked(True)
        self.refresh()

    # ------------------------------------------------------------------ target
    def target_layer(self):
        """The layer rated now: the Image layer selected in the layer list.

        With nothing selected, the only image layer when there is exactly one. None otherwise, and
        when the selected layer is a map of this plugin or not an image; ``self.problem`` then says
        what to do.
        """
        active = self.viewer.layers.selection.active
        if active is not None:
            if _is_image(active):
                return active
            if is_plugin_overlay(active):
                self.problem = overlay_message(active, "rated")
            else:
                kind = type(getattr(active, "__wrapped__", active)).__name__
                self.problem = (
                    f"'{active.name}' is a {kind} layer: select an Image layer in the layer list "
                    "to rate it."
                )
            return None
        images = [ly for ly in self.viewer.layers if _is_image(ly)]
        if len(images) == 1:
            return images[0]
        self.problem = (
            "Select the image to rate in the layer list."
            if images
            else "Open an image (File > Open, or a sample) to rate it."
        )
        return None

    def current(self) -> tuple[Any, tuple[int, ...] | None]:
        """``(layer, plane_key)`` of what a rating applies to now.

        The key is None when the view does not show one plane (see :func:`plane_key`); the
        reason is in ``self.problem``.
        """
        self.problem = ""
        layer = self.target_layer()
        if layer is None:
            return None, None
        try:
            return layer, plane_key(layer, self.viewer)
        except ValueError as exc:
            self.problem = str(exc)
            return layer, None

    # ------------------------------------------------------------------ actions
    def rate(self, score: float) -> bool:
        """Rate the current plane with ``score`` (0-100); False when there is no image."""
        layer, key = self.current()
        if layer is None or key is None:
            self._notify(self.problem)
            return False
        set_rating(layer, key, score)
        self.last_rated = (layer.name, tuple(key))
        return True

    def rate_stars(self, stars: int) -> bool:
        """Rate the current plane with 1-5 stars."""
        return self.rate(stars_to_score(stars))

    def clear(self) -> bool:
        """Remove the rating of the current plane."""
        layer, key = self.current()
        return False if layer is None or key is None else clear_rating(layer, key)

    def save_csv(self, path: str | os.PathLike) -> Path:
        """Save all ratings in the viewer (see :func:`save_ratings_csv`)."""
        out, n = save_ratings_csv(self.viewer.layers, path)
        self._notify(f"Saved {n} ratings to {out}.", info=True)
        return out

    def load_csv(self, path: str | os.PathLike) -> int:
        """Load ratings (see :func:`load_ratings_csv`)."""
        n = load_ratings_csv(path, self.viewer)
        self.refresh()
        return n

    # ------------------------------------------------------------------ display
    def refresh(self, *_: Any) -> None:
        if self._closed:
            return
        layer, key = self.current()
        enabled = layer is not None and key is not None
        for w in (*self.star_buttons, self.clear_button, self.set_button, self.spin):
            w.setEnabled(enabled)
        if not enabled:
            self.target_label.setText(self.problem)
            self.rating_label.setText("-")
        else:
            where = f", {plane_text(key)}" if key else ""
            self.target_label.setText(f"'{shown_name(layer.name)}'{where}")
            r = get_rating(layer, key)
            if r is None:
                self.rating_label.setText("not rated")
            else:
                near = min(STARS, key=lambda s: abs(STARS[s] - r))
                self.rating_label.setText(f"{r:g} / 100  ({'*' * near})")
                self.spin.setValue(r)
        n = sum(len(get_ratings(ly)) for ly in self.viewer.layers if _is_image(ly))
        m = len(rated_layers(self.viewer.layers))
        self.count_label.setText(f"{n} rated in {m} layer{'s' if m != 1 else ''}")

    def _on_ratings_changed(self, layer: Any = None) -> None:
        try:
            self.refresh()
        except RuntimeError:  # the Qt side was deleted with its viewer, without a close event
            self.cleanup()

    def _on_layer_inserted(self, event: Any = None) -> None:
        if self.keys_check.isChecked() and event is not None and _is_image(event.value):
            self._bind_layer(event.value)
        self.refresh()

    # ------------------------------------------------------------------ keys
    def _key_callback(self, key: str):
        def callback(_owner: Any = None) -> None:
            if key == "0":
                self.clear()
            else:
                self.rate_stars(int(key))

        callback.__name__ = f"pmt_iqa_rate_{key}"
        return callback

    def _bind(self, owner: Any) -> None:
        for k in KEYS:
            prev = owner.bind_key(k, self._key_callback(k), overwrite=True)
            self._bound.append((owner, k, prev))

    def _bind_layer(self, layer: Any) -> None:
        if not any(_same(o, layer) for o, _, _ in self._bound):
            self._bind(layer)

    def bind_keys(self) -> None:
        """Bind 0-5 on the viewer and on every Image layer (overwriting, remembering what was there)."""
        if self._bound:
            return
        self._bind(self.viewer)
        for layer in self.viewer.layers:
            if _is_image(layer):
                self._bind_layer(layer)

    def unbind_keys(self) -> None:
        """Remove this widget's key bindings and put back what they replaced."""
        while self._bound:
            owner, k, prev = self._bound.pop()
            try:
                owner.bind_key(k, None, overwrite=True)
                if prev is not None and prev is not ...:
                    owner.bind_key(k, prev, overwrite=True)
            except Exception:  # the layer or viewer is already gone
                pass

    def _on_keys_toggled(self, on: bool) -> None:
        if on:
            self.bind_keys()
        else:
            self.unbind_keys()

    # ------------------------------------------------------------------ dialogs
    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save ratings", "ratings.csv", "CSV (*.csv)")
        if path:
            try:
                self.save_csv(path)
            except (ValueError, OSError) as exc:
                self._notify(str(exc))

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load ratings", "", "CSV (*.csv)")
        if path:
            try:
                n = self.load_csv(path)
                self._notify(f"Loaded {n} ratings from {path}.", info=True)
            except (ValueError, OSError) as exc:
                self._notify(str(exc))

    def _notify(self, msg: str, info: bool = False) -> None:
        from napari.utils.notifications import show_info, show_warning

        (show_info if info else show_warning)(msg)

    # ------------------------------------------------------------------ teardown
    def cleanup(self) -> None:
        """Unbind the keys and disconnect from the viewer (called on close)."""
        if self._closed:
            return
        self._closed = True
        self.unbind_keys()
        for emitter, cb in (
            (self.viewer.dims.events.current_step, self.refresh),
            (self.viewer.dims.events.ndisplay, self.refresh),
            (self.viewer.dims.events.order, self.refresh),
            (self.viewer.layers.selection.events.active, self.refresh),
            (self.viewer.layers.events.inserted, self._on_layer_inserted),
            (self.viewer.layers.events.removed, self.refresh),
        ):
            try:
                emitter.disconnect(cb)
            except Exception:
                pass
        # psygnal < 0.10 cannot disconnect a method of a deleted Qt object (it raises the same
        # RuntimeError); its weak reference drops the slot once the wrapper is collected
        with contextlib.suppress(RuntimeError):
            ratings_changed.disconnect(self._on_ratings_changed)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.cleanup()
        super().closeEvent(event)
