"""The Score widget: score an Image layer (2D or a stack), show what the score means, add the maps.

The widget is thin: the work is :func:`napari_pmt_iqa.scoring.score`, run in a napari thread worker
(a generator that yields each scored plane); the layer data of the maps comes from
:mod:`.overlays`. The worker reports tile progress through a :class:`~._common.JobState` that a
timer on the GUI thread reads, and polls it for cancellation between tiles.
"""

from __future__ import annotations

import contextlib
import html
import time
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .._torch_guard import guard_triton
from ._common import BackgroundJobs, JobState, ModelChooser, TurnQueue, error_text
from .charts import BarPlot, LinePlot
from .names import shown_name
from .overlays import (
    METADATA_KEY,
    OVERLAY_KEY,
    add_keeping_selection,
    check_image_layer,
    class_colors,
    class_labels,
    defect_text,
    is_overlay_of,
    is_plugin_overlay,
    overlay_specs,
    result_metadata,
    score_meaning,
)
from .score_options import ScoreOptions, ScoreRequest, plane_placement


def _layer_placement(layer) -> tuple:
    """``(scale, translate, affine)`` that place an image layer's overlays over it in the world.

    Scale and translate are passed on (and combined with each map's grid), the extra ``affine``
    too. A rotated or sheared layer has its whole data-to-world transform folded into the affine
    (with unit scale and zero translate), because a map's grid offset must be rotated and sheared
    with the image, which per-axis scale and translate cannot express.
    """
    affine = np.asarray(layer.affine.affine_matrix, dtype=float)
    n = len(layer.scale)
    rotate = np.asarray(layer.rotate, dtype=float)
    shear = np.asarray(layer.shear, dtype=float)
    if np.allclose(rotate, np.eye(n)) and np.allclose(shear, 0.0):
        return layer.scale, layer.translate, None if np.allclose(affine, np.eye(n + 1)) else affine
    from napari.utils.transforms import CompositeAffine

    own = CompositeAffine(
        scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear, ndim=n
    )
    return (1.0,) * n, (0.0,) * n, affine @ own.affine_matrix


def score_job(
    request: ScoreRequest, model, device: str, memory_mb: float, maps: bool, state: JobState
):
    """Generator run in the worker: yields ``("model", net)``, ``("rule", rule)``, then
    ``("plane", k, result)`` per plane of a stack.

    The intensity rule is the request's, or the automatic rule of all the data (one for a whole
    stack, also when only its current plane is scored). Lazy data is read tile by tile. Results of
    a pyramid level come back in level-0 pixels. Returns ``("ok", result, seconds)``,
    ``("cancelled", reason)`` or ``("error", message)``; it never raises, so no traceback dialog
    can appear.
    """
    try:
        from ..multiscale import to_full_resolution
        from ..scoring import (
            ScoringCancelled,
            StackResult,
            get_model,
            iter_planes,
            score,
            stack_intensity_rule,
        )

        t0 = time.perf_counter()
        net = get_model(model, device)
        yield ("model", net)
        planes, lead = iter_planes(request.data, rgb=request.rgb)
        rule = request.rule or stack_intensity_rule(planes if lead else [planes[0]])
        yield ("rule", rule)
        n = len(planes)
        kwargs = dict(maps=maps, memory_mb=memory_mb, cancel=state.cancelled, intensity_range=rule)

        def level0(r):
            return to_full_resolution(r, request.factors)

        if not lead or request.plane_index is not None:
            k = int(np.ravel_multi_index(request.plane_index, lead)) if lead else 0
            res = score(planes[k], net, channel_axis=-1, progress=state.progress, **kwargs)
            return ("ok", level0(res), time.perf_counter() - t0)
        results = []
        state.progress(0, n)
        for k in range(n):
            if state.cancelled():
                raise ScoringCancelled("scoring was cancelled")

            def prog(done, total, k=k):
                state.progress(k + done / max(total, 1), n)

            results.append(level0(score(planes[k], net, channel_axis=-1, progress=prog, **kwargs)))
            state.progress(k + 1, n)
            yield ("plane", k, results[-1])
        r0 = results[0]
        res = StackResult(results, tuple(lead), r0.units, r0.score_range, r0.higher_is_better)
        return ("ok", res, time.perf_counter() - t0)
    except ScoringCancelled:
        return ("cancelled", state.reason or "Scoring was cancelled.")
    except Exception as exc:  # every failure becomes a message in the viewer
        return ("error", error_text(exc))


class ScoreWidget(BackgroundJobs, QWidget):
    """Score the quality of an Image layer and show the score, the class probabilities and the maps.

    Parameters
    ----------
    napari_viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        guard_triton()
        super().__init__()
        self.viewer = napari_viewer
        self._init_jobs()
        self.result = None
        self.last_seconds = float("nan")
        self._layer = None  # layer being scored
        self._scored_layer = None  # layer of self.result
        self._stack_axis: int | None = None
        # (OverlaySpec, image, overlay or None) to do, one per turn of the event loop
        self._pending_overlays = TurnQueue(self, self._next_overlay)

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The Image layer to score (2D grayscale/RGB or a stack)")
        self.chooser = ModelChooser(self)
        self.maps_check = QCheckBox("Add quality maps as layers")
        self.maps_check.setChecked(True)
        self.options = ScoreOptions(self)
        self.export_button = QPushButton("Export scores (CSV)…")
        self.export_button.setToolTip(
            "Save the image score, every plane's score and every crop's score, position and class"
        )
        self.export_button.setEnabled(False)
        self.score_button = QPushButton("Score")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.score_label = QLabel("Pick an image layer and press Score.")
        self.score_label.setWordWrap(True)
        self.class_label = QLabel()
        self.class_label.setWordWrap(True)
        self.class_plot = BarPlot()
        self.class_plot.title = "class probabilities (worst to best)"
        self.class_plot.setVisible(False)
        self.stack_plot = LinePlot()
        self.stack_plot.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.chooser)
        lay.addWidget(self.options)
        lay.addWidget(self.maps_check)
        row = QHBoxLayout()
        row.addWidget(self.score_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.score_label)
        lay.addWidget(self.class_plot)
        lay.addWidget(self.class_label)
        lay.addWidget(self.stack_plot)
        lay.addWidget(self.export_button)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.score_button.clicked.connect(self.score)
        self.export_button.clicked.connect(lambda: self.export_scores())
        self.layer_combo.currentTextChanged.connect(self._on_layer_chosen)
        self.cancel_button.clicked.connect(lambda: self.cancel("Scoring was cancelled."))
        self.stack_plot.clicked.connect(self._jump_to_plane)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.events.moved.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._follow_slice)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        self._refresh_layers()
        # models fine-tuned in the GUI (fine-tune widget) are offered and selected at once
        # (a model saved but not chosen is only listed)
        from .training_worker import model_saved, model_trained

        model_trained.connect(self._on_model_trained)
        model_saved.connect(self._on_model_saved)

    def _on_model_trained(self, path: str, meta: dict | None = None) -> None:
        """A model was fine-tuned in the GUI: add it to the model list and select it."""
        self._offer_model(path, select=True)

    def _on_model_saved(self, path: str, meta: dict | None = None) -> None:
        """A fine-tuned model was saved but not chosen: list it, keep the current model."""
        self._offer_model(path, select=False)

    def _offer_model(self, path: str, select: bool) -> None:
        try:
            self.chooser.add_model(path, select=select)
        except RuntimeError:  # this widget's Qt side is gone (its viewer was closed)
            # psygnal 0.9 (the floor) cannot disconnect a method of a deleted Qt object (it raises the
            # same RuntimeError); its weak reference drops the slot once the wrapper is collected
            self._disconnect_models()
        except Exception as exc:
            self._message(f"Could not offer the trained model {path}: {error_text(exc)}", warn=True)

    def _disconnect_models(self) -> None:
        from .training_worker import model_saved, model_trained

        with contextlib.suppress(RuntimeError):
            model_trained.disconnect(self._on_model_trained, missing_ok=True)
        with contextlib.suppress(RuntimeError):
            model_saved.disconnect(self._on_model_saved, missing_ok=True)

    # ------------------------------------------------------------------ layers
    def _image_layers(self) -> list:
        from napari.layers import Image

        return [
            lay
            for lay in self.viewer.layers
            if isinstance(lay, Image) and not is_plugin_overlay(lay)
        ]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        names = [lay.name for lay in self._image_layers()]
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif names:
            active = self.viewer.layers.selection.active
            if active is not None and active.name in names:
                self.layer_combo.setCurrentText(active.name)
        self.layer_combo.blockSignals(False)
        self._on_layer_chosen()

    def _on_layer_chosen(self, name: str = "") -> None:
        layer = self.selected_layer()
        self.options.set_layer(layer if layer in self._image_layers() else None)

    def _follow_active(self, event=None) -> None:
        """Offer the image the user selected (or just opened) in the Image list, unless scoring.

        Otherwise Score would go on scoring the first image after a second one was opened, while
        the rating widget (which follows the selection) rates the new one.
        """
        active = self.viewer.layers.selection.active
        if active is None or self.is_running():
            return
        if active.name in [lay.name for lay in self._image_layers()]:
            if self.layer_combo.currentText() != active.name:
                self.layer_combo.setCurrentText(active.name)

    def selected_layer(self):
        """The layer to score: the one in the combo box, else the viewer's active layer."""
        name = self.layer_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        return self.viewer.layers.selection.active

    def _on_removed(self, event) -> None:
        layer = event.value
        if self.is_running() and layer == self._layer:
            self.cancel(
                f"The layer '{layer.name}' was removed while it was being scored; scoring stopped."
            )
        if self._scored_layer is not None and layer == self._scored_layer:
            self._clear_result(
                f"No score: the scored layer '{html.escape(shown_name(layer.name))}' was deleted."
            )
        self._pending_overlays.items = [
            item for item in self._pending_overlays.items if item[1] != layer
        ]
        self._refresh_layers()

    # ------------------------------------------------------------------ running
    def score(self, layer=None) -> None:
        """Start scoring ``layer`` (default: the selected one) in a background worker."""
        if self.is_running():
            self._message("Scoring is already running; wait or cancel it.", warn=True)
            return
        layer = self.selected_layer() if layer is None or isinstance(layer, bool) else layer
        try:
            check_image_layer(layer)
            model = self.chooser.require_model()
            self.options.set_layer(layer)
            request = self.options.request(layer, self.viewer)
        except Exception as exc:
            self._clear_result("No score: see the message below.")
            self._message(error_text(exc), error=True)
            return
        self._layer = layer
        self._request = request
        self._partial: list[float] = []
        self._clear_result(f"Scoring '{shown_name(layer.name)}'…")
        self._start_job(
            score_job,
            request,
            model,
            self.chooser.device(),
            self.chooser.memory_mb(),
            self.maps_check.isChecked(),
            on_yield=self._on_yielded,
            on_return=self._on_returned,
            text=f"Scoring '{shown_name(layer.name)}'…",
        )

    def cancel(self, reason: str = "Scoring was cancelled.") -> None:
        """Ask the running worker to stop at its next tile."""
        super().cancel(reason)

    def _on_yielded(self, item) -> None:
        if item[0] == "rule":
            self.options.show_rule(item[1], self._request.level)
        if item[0] == "plane" and self._layer is not None:
            res = item[2]
            self._partial.append(res.score)
            lead = self._lead_shape(self._layer)
            vals = np.full(int(np.prod(lead)), np.nan)
            vals[: len(self._partial)] = self._partial
            self._show_stack_plot(vals.reshape(lead), res.score_range, res.units)

    def _on_returned(self, out) -> None:
        kind = out[0]
        if kind == "ok":
            self.last_seconds = out[2]
            self._show_result(out[1], self._layer)
        elif kind == "cancelled":
            self._clear_result("No score: scoring was cancelled.")
            self._message(out[1], warn=True)
        else:
            name = self._layer.name if self._layer is not None else "the image"
            self._clear_result("No score: scoring failed (see the message below).")
            self._message(f"Scoring '{name}' failed: {out[1]}", error=True)

    def _on_job_aborted(self) -> None:
        self._clear_result("No score: scoring was cancelled.")
        super()._on_job_aborted()

    def _clear_result(self, text: str) -> None:
        """Forget the shown result (a new score starts, or one failed): no stale numbers stay."""
        self.result = None
        self._scored_layer = None
        self.export_button.setEnabled(False)
        self.score_label.setText(text)
        self.class_label.setText("")
        self.class_plot.setVisible(False)
        self.stack_plot.setVisible(False)

    def _set_busy(self, busy: bool) -> None:
        self.score_button.setEnabled(not busy)
        if not busy:
            self._layer = None

    # ------------------------------------------------------------------ results
    @staticmethod
    def _lead_shape(layer) -> tuple[int, ...]:
        shape = (layer.data[0] if layer.multiscale else layer.data).shape
        return tuple(shape[: layer.ndim - 2])

    def _show_result(self, result, layer) -> None:
        if layer is None or layer not in self.viewer.layers:
            self._message("The scored layer is gone; the result was discarded.", warn=True)
            return
        self.result = result
        self._scored_layer = layer
        self._result_plane = self._request.plane_index
        self.export_button.setEnabled(True)
        first = result.planes[0] if hasattr(result, "planes") else result
        meta = result_metadata(result, self.chooser.current_model() or "", self.chooser.device())
        if self._result_plane is not None:
            meta["plane"] = list(self._result_plane)
        if self._request.level:
            meta["pyramid_level"] = int(self._request.level)
        layer.metadata[METADATA_KEY] = meta
        prefix = f"Mean of {len(result.planes)} planes: " if hasattr(result, "planes") else ""
        self.score_label.setText(
            f"'{html.escape(shown_name(layer.name))}': <b>{prefix}{score_meaning(result)}</b>"
        )
        probs = (
            np.mean([p.class_probs for p in result.planes], axis=0)
            if hasattr(result, "planes")
            else result.class_probs
        )
        labels = class_labels(first.class_edges)
        self.class_plot.set_values(probs, list(class_colors(len(probs), first.higher_is_better)))
        self.class_plot.setVisible(True)
        top = int(np.argmax(probs))
        self.class_label.setText(
            f"Most likely class {top + 1} of {len(probs)} ({labels[top]} {first.units}), p = {probs[top]:.2f}. "
            + ", ".join(f"{labels[k]}: {probs[k]:.2f}" for k in range(len(probs)))
            + defect_text(result)
        )
        if hasattr(result, "planes"):
            self._show_stack_plot(result.scores, result.score_range, result.units)
        else:
            self.stack_plot.setVisible(False)
        done = f"Scored '{shown_name(layer.name)}' in {self.last_seconds:.2f} s."
        if first.maps is not None:
            self.add_overlays(result, layer)
        elif self.remove_overlays(layer):
            done += " Its maps of an earlier score were removed (they no longer match)."
        self.status.setText(done)

    def remove_overlays(self, layer) -> int:
        """Remove the map layers of ``layer`` (shown and still to come); how many were shown."""
        self._pending_overlays.items = [
            item for item in self._pending_overlays.items if item[1].name != layer.name
        ]
        old = [lay for lay in self.viewer.layers if is_overlay_of(lay, layer.name)]
        for lay in old:
            self.viewer.layers.remove(lay)
        return len(old)

    def add_overlays(self, result, layer) -> None:
        """Put the maps of ``result`` over ``layer``, one layer per turn of the event loop.

        An overlay this image already has (it was scored before) gets the new maps in place: no
        layer is removed or added, which keeps re-scoring free of stalls (napari runs a full
        garbage collection for each removed layer). Missing overlays are added, the shown ones
        first. Each layer is handled in its own turn of the event loop, so that the viewer stays
        responsive: napari takes about 0.1 s to build one layer's visual and controls.
        :meth:`overlays_pending` says whether some are still to come.
        """
        scale, translate, affine = _layer_placement(layer)
        plane = getattr(self, "_result_plane", None)
        if plane is not None and not hasattr(result, "planes"):
            # one plane of a stack: maps with stack axes of length 1, placed at that plane
            from ..scoring import StackResult

            scale, translate = plane_placement(scale, translate, plane)
            result = StackResult(
                [result],
                (1,) * len(plane),
                result.units,
                result.score_range,
                result.higher_is_better,
            )
        specs = overlay_specs(result, layer.name, scale, translate, affine)
        existing = {
            lay.metadata[OVERLAY_KEY].get("key"): lay
            for lay in self.viewer.layers
            if is_overlay_of(lay, layer.name)
        }
        queue = []
        for spec in specs:
            old = existing.pop(spec.key, None)
            if old is not None and not spec.fits(old):
                self.viewer.layers.remove(old)
                old = None
            queue.append((spec, layer, old))
        for stale in existing.values():  # overlays of keys this result does not have
            self.viewer.layers.remove(stale)
        # shown maps first, then updates (cheap) before additions
        queue.sort(key=lambda item: (not item[0].kwargs.get("visible", False), item[2] is None))
        self._pending_overlays.items = queue + [
            item for item in self._pending_overlays.items if item[1].name != layer.name
        ]
        self._pending_overlays.start()

    def overlays_pending(self) -> bool:
        """Whether map layers of the last result are still being added or updated."""
        return bool(self._pending_overlays)

    def _next_overlay(self, item: tuple) -> bool:
        """Add or update one pending overlay (keeping the layer selection as the user left it);
        False when its image is gone (the next one is taken at once)."""
        spec, image, target = item
        if image not in self.viewer.layers:
            return False
        if target is not None and target in self.viewer.layers:
            spec.update(target)
        else:
            add_keeping_selection(self.viewer, spec)
        return True

    # ------------------------------------------------------------------ export
    def export_scores(self, path: str | None = None) -> str | None:
        """Save the shown result as CSV (image, planes, crops; ``napari_pmt_iqa.export``).

        ``path`` None asks with a file dialog. Returns the path written, or None.
        """
        from ..export import write_scores_csv

        if self.result is None or self._scored_layer is None:
            self._message("Nothing to export yet: score an image first.", warn=True)
            return None
        name = self._scored_layer.name
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                self, "Export scores", f"{name}_scores.csv", "CSV (*.csv)"
            )
            if not path:
                return None
        source = name
        if getattr(self, "_result_plane", None) is not None:
            source += f" [plane {','.join(map(str, self._result_plane))}]"
        try:
            write_scores_csv(
                path, self.result, source=source, model=self.chooser.current_model() or ""
            )
        except Exception as exc:
            self._message(f"Could not export the scores: {error_text(exc)}", error=True)
            return None
        self._message(f"Saved the scores of '{name}' to {path}.")
        return str(path)

    # ------------------------------------------------------------------ stack plot
    def _show_stack_plot(self, scores: np.ndarray, score_range, units: str) -> None:
        scores = np.asarray(scores, dtype=float)
        self.stack_plot.y_label = f"score ({units})"
        self._stack_scores = scores
        self.stack_plot.setVisible(True)
        self._follow_slice()

    def _layer_index(self, layer) -> np.ndarray:
        coords = layer.world_to_data(self.viewer.dims.point)
        return np.asarray(np.round(coords), dtype=int)

    def _follow_slice(self, event=None) -> None:
        layer = self._scored_layer if self._scored_layer is not None else self._layer
        scores = getattr(self, "_stack_scores", None)
        if (
            layer is None
            or scores is None
            or self.stack_plot.isHidden()
            or layer not in self.viewer.layers
        ):
            return
        idx = self._layer_index(layer)
        lead = scores.shape
        if len(lead) == 1:
            axis, values = 0, scores
        else:  # two leading axes: plot along the last one at the current index of the first
            i0 = int(np.clip(idx[0], 0, lead[0] - 1))
            axis, values = 1, scores[i0]
        self._stack_axis = axis
        self.stack_plot.x_label = f"plane (axis {axis})"
        self.stack_plot.set_values(values)
        cur = int(idx[axis])
        self.stack_plot.set_current(cur if 0 <= cur < len(values) else None)

    def _jump_to_plane(self, index: int) -> None:
        layer = self._scored_layer
        if layer is None or self._stack_axis is None or layer not in self.viewer.layers:
            return
        world_axis = self.viewer.dims.ndim - layer.ndim + self._stack_axis
        data_point = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        data_point[self._stack_axis] = index
        world = layer.data_to_world(data_point)
        self.viewer.dims.set_point(world_axis, float(world[self._stack_axis]))

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.cancel("The widget was closed.")
        self._pending_overlays.clear()
        self._disconnect_models()
        super().closeEvent(event)


__all__ = ["ScoreWidget", "score_job"]
