"""The data-set widget: open an IQA data set, score it, compare the predictions with the MOS.

Loading reads the annotations with :func:`napari_pmt_iqa.data.datasets.load_dataset` (generic CSV,
LIVE-C, BIQ2021) and the images with :func:`napari_pmt_iqa.imaging.read_image` in a worker, up to a
limit, as one layer per image or as one stack. Scoring runs :func:`napari_pmt_iqa.scoring.score` on
every image in a worker; the scatter plot (predicted score against MOS) and SRCC/PLCC
(:func:`napari_pmt_iqa.metrics.iqa_metrics`) update as the scores arrive. Clicking a point shows
that image.

Parts: LIVE-C's are the default recipe's seeded 80/20 split
(:func:`~napari_pmt_iqa.data.datasets.livec_recipe_parts`, seed 0), BIQ2021's its official Train and
Test CSVs. When loaded images are in the chosen model's training data (its checkpoint metadata,
``training``, says which parts it was trained and selected on) the widget says so beside the SRCC:
such a figure is not a test result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._torch_guard import guard_triton
from ._common import BackgroundJobs, JobState, ModelChooser, TurnQueue, error_text
from .charts import ScatterPlot
from .overlays import METADATA_KEY

DATASET_KEY = "pmt_iqa_dataset"
PARTS = ["test", "train", "all"]
#: The seed of the default recipe's LIVE-C split (the shipped models' training part).
LIVEC_SPLIT_SEED = 0
_FAMILY_NAMES = {"livec": "LIVE-C", "biq2021": "BIQ2021"}


# --------------------------------------------------------------------------- Qt-free helpers
def check_path_and_layout(path: str, layout: str) -> None:
    """Raise a :class:`~napari_pmt_iqa.data.datasets.DatasetError` that says what to change in the
    widget when the path and the layout cannot go together (before anything is read)."""
    from ..data.datasets import DatasetError

    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(
            f"{p} does not exist: choose the data set's folder (or CSV) with Browse…, or correct "
            "the path in 'Data set'."
        )
    if layout in ("livec", "biq2021") and p.is_file():
        where = (
            "its folder (ChallengeDB_release, with Data/ and Images/ inside)"
            if layout == "livec"
            else "its folder (with Images/ and the Train/Test CSVs inside)"
        )
        raise DatasetError(
            f"'Layout' is {layout}, but {p.name} is a file: {_FAMILY_NAMES[layout]} is opened from "
            f"{where}. Choose that folder in 'Data set', or set 'Layout' to csv for a CSV of "
            "image,mos."
        )
    if layout == "csv" and p.is_dir() and not any(p.glob("*.csv")):
        raise DatasetError(
            f"'Layout' is csv, but the folder {p.name} holds no CSV file: choose the CSV of "
            "image,mos in 'Data set', or set 'Layout' to auto for a LIVE-C or BIQ2021 folder."
        )


def trained_parts(training: Any) -> list[dict] | None:
    """The data a checkpoint was trained (and selected) on, from its ``training`` metadata.

    Returns a list of ``{"name", "part", "split_seed"}`` (names lower-case, e.g. ``livec``,
    ``biq2021``; ``part`` ``train``, ``test`` or ``all``), or None when the metadata does not say.
    Two descriptions are read: a list of such entries under ``data`` (the current one; the
    registry's summary of a model holds that list itself), and the
    older counts per part (``{"livec_train": 832, "livec_val": 92, "livec_split_seed": 0, ...}``,
    under ``data`` or at the top), where the validation part was drawn from the training part.
    """
    if isinstance(training, list):  # the registry's summary holds the list itself
        training = {"data": training}
    if not isinstance(training, dict):
        return None
    data = training.get("data", training)
    out: list[dict] = []
    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict) and entry.get("name"):
                out.append(
                    {
                        "name": str(entry["name"]).lower(),
                        "part": str(entry.get("part") or "all").lower(),
                        "split_seed": entry.get("split_seed"),
                    }
                )
    elif isinstance(data, dict):
        for key in data:
            m = re.fullmatch(r"([a-z0-9]+)_(train|val|test|all)", str(key).lower())
            if not m:
                continue
            part = "test" if m.group(2) == "test" else "all" if m.group(2) == "all" else "train"
            entry = {
                "name": m.group(1),
                "part": part,
                "split_seed": data.get(f"{m.group(1)}_split_seed"),
            }
            if entry not in out:
                out.append(entry)
    return out or None


def sample_parts(ds, family: str) -> dict[str, str]:
    """The part (``train``/``test``/``left out``) of each image of a full data set, by path."""
    from ..data.datasets import LIVEC_LEFT_OUT, livec_recipe_parts

    if family == "livec":
        parts = livec_recipe_parts(ds, seed=LIVEC_SPLIT_SEED)
        where = {str(s.path): "left out" for s in ds.samples if s.content in LIVEC_LEFT_OUT}
        for name, part in parts.items():
            where.update({str(s.path): name for s in part.samples})
        return where
    if family == "biq2021":
        return {str(s.path): s.split or "" for s in ds.samples}
    return {}


def training_overlap(family: str, parts: list[str], trained: list[dict] | None) -> dict:
    """How many of the images (their ``parts``) the model was trained or selected on.

    Returns ``{"known": bool, "n_in": int, "desc": str}``; ``known`` is False when the model's
    metadata does not say, or describes another split of this data set.
    """
    if family not in _FAMILY_NAMES or not parts:
        return {"known": False, "n_in": 0, "desc": ""}
    if trained is None:
        return {"known": False, "n_in": 0, "desc": ""}
    mine = [e for e in trained if e["name"] == family]
    if not mine:
        return {"known": True, "n_in": 0, "desc": f"no {_FAMILY_NAMES[family]} images"}
    used: set[str] = set()
    for e in mine:
        seed = e.get("split_seed")
        if (
            family == "livec"
            and e["part"] != "all"
            and seed is not None
            and seed != LIVEC_SPLIT_SEED
        ):
            return {"known": False, "n_in": 0, "desc": f"another LIVE-C split (seed {seed})"}
        used |= {"train", "test", "left out"} if e["part"] == "all" else {e["part"]}
    n_in = sum(p in used for p in parts)
    desc = f"{_FAMILY_NAMES[family]} " + " and ".join(sorted(used)) + " part"
    return {"known": True, "n_in": n_in, "desc": desc}


def model_training(model: str | None) -> Any:
    """The ``training`` metadata of a model (registered name or checkpoint path), or None."""
    if not model:
        return None
    from ..weights import REGISTRY, CheckpointError, read_metadata

    try:
        if model in REGISTRY:
            return REGISTRY[model].meta.get("training")
        return read_metadata(model).get("training")
    except (CheckpointError, OSError, ValueError):
        return None


def load_job(path: str, layout: str, part: str, limit: int, state: JobState):
    """Worker: read the annotations, then yield ``("image", k, array, sample)`` for each image.

    ``part`` (``train``, ``test``, ``all``) selects LIVE-C's recipe part or BIQ2021's official one;
    a BIQ2021 CSV chosen as the path loads its own part. Yields ``("dataset", ds, n, family,
    parts)`` first (``parts``: the part of each image that will be loaded). Returns ``("ok",
    dataset, failed)``, ``("cancelled", reason)`` or ``("error", message)``.
    """
    try:
        from .._reader import dataset_target
        from ..data.datasets import load_dataset
        from ..imaging import read_image

        check_path_and_layout(path, layout)
        root, own_part = path, None
        if layout == "auto":
            target = dataset_target(path)
            if target is not None:
                root, layout, own_part = str(target[0]), target[1], target[2]
                own_part = own_part if own_part in ("train", "test") else None
            else:
                layout = "csv"
        family = "livec" if layout == "livec" else "biq2021" if layout == "biq2021" else "csv"
        part = own_part or part
        if family == "biq2021":
            ds = load_dataset(root, layout="biq2021", part=part)
            where = sample_parts(ds, family)
        else:
            ds = load_dataset(root, layout=layout)
            where = sample_parts(ds, family)
            if family == "livec" and part != "all":
                from ..data.datasets import livec_recipe_parts

                ds = livec_recipe_parts(ds, seed=LIVEC_SPLIT_SEED)[part]
        samples = ds.samples[: max(1, int(limit))]
        failed = []
        state.progress(0, len(samples))
        yield ("dataset", ds, len(samples), family, [where.get(str(s.path), "") for s in samples])
        for k, s in enumerate(samples):
            if state.cancelled():
                return ("cancelled", state.reason or "Loading was cancelled.")
            try:
                arr = read_image(s.path)
            except Exception as exc:
                failed.append(f"{s.path.name}: {error_text(exc)}")
                continue
            state.progress(k + 1, len(samples))
            yield ("image", k, arr, s)
        return ("ok", ds, failed)
    except Exception as exc:
        return ("error", error_text(exc))


def score_all_job(images: list, model, device: str, memory_mb: float, rgb: list, state: JobState):
    """Worker: yield ``("score", k, score, units)`` for each image; returns like :func:`load_job`."""
    try:
        from ..scoring import ScoringCancelled, get_model, score

        net = get_model(model, device)
        n = len(images)
        state.progress(0, n)
        for k, img in enumerate(images):
            if state.cancelled():
                return ("cancelled", state.reason or "Scoring was cancelled.")
            if img is None:
                yield ("score", k, float("nan"), "")
                continue

            def prog(done, total, k=k):
                state.progress(k + done / max(total, 1), n)

            try:
                res = score(
                    img,
                    net,
                    maps=False,
                    memory_mb=memory_mb,
                    rgb=rgb[k],
                    progress=prog,
                    cancel=state.cancelled,
                )
            except ScoringCancelled:
                return ("cancelled", state.reason or "Scoring was cancelled.")
            state.progress(k + 1, n)
            yield ("score", k, float(res.score), res.units)
        return ("ok", None, [])
    except Exception as exc:
        return ("error", error_text(exc))


class DatasetWidget(BackgroundJobs, QWidget):
    """Open an IQA data set (CSV / LIVE-C / BIQ2021), score it, plot predicted against MOS.

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
        self.dataset = None
        self.samples: list = []  # Sample of each loaded image
        self.layers: list = []  # one layer per image (layer mode)
        # loaded images wait here and go in as layers one per turn of the event loop (the
        # worker's yields reach the GUI thread back to back: adding each at once stalled it)
        self._layer_jobs = TurnQueue(self, self._add_layer)
        self.stack_layer = None  # the stack (stack mode)
        self.mos = np.zeros(0)
        self.pred = np.zeros(0)
        self.metrics: dict = {}
        self._images: list = []
        self.family = ""  # livec, biq2021 or csv
        self.parts: list[str] = []  # part of each loaded image (train, test, left out)
        self._all_parts: list[str] = []
        self.overlap: dict = {}

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("data set folder or CSV")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        self.layout_combo = QComboBox()
        self.layout_combo.addItems(["auto", "csv", "livec", "biq2021"])
        self.layout_combo.setToolTip(
            "auto: recognised from the files; csv: a CSV of image,mos; livec: the "
            "ChallengeDB_release folder; biq2021: the folder with the Train/Test CSVs"
        )
        self.part_combo = QComboBox()
        self.part_combo.addItems(PARTS)
        self.part_combo.setToolTip(
            "LIVE-C: the default recipe's seeded 80/20 split (seed 0); BIQ2021: its official "
            "Train/Test CSVs. 'test' holds images the shipped model was never trained on."
        )
        self.limit_spin = QSpinBox()
        self.limit_spin.setRange(1, 1_000_000)
        self.limit_spin.setValue(50)
        self.limit_spin.setToolTip("Load at most this many images (data sets have thousands)")
        self.stack_check = QCheckBox("Load as one stack (images of equal size)")
        self.load_button = QPushButton("Load")
        self.chooser = ModelChooser(self)
        self.score_button = QPushButton("Score all")
        self.score_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.plot = ScatterPlot()
        self.plot.x_label = "MOS"
        self.plot.title = "predicted vs MOS (click a point)"
        self.metrics_label = QLabel()
        self.export_button = QPushButton("Export predictions (CSV)…")
        self.export_button.setToolTip("Save every loaded image's MOS and predicted score as CSV")
        self.export_button.setEnabled(False)
        self.metrics_label.setWordWrap(True)
        self.training_label = QLabel()
        self.training_label.setWordWrap(True)
        self.training_label.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Data set", row)
        form.addRow("Layout", self.layout_combo)
        form.addRow("Part", self.part_combo)
        form.addRow("Max. images", self.limit_spin)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.stack_check)
        lay.addWidget(self.load_button)
        lay.addWidget(self.chooser)
        row2 = QHBoxLayout()
        row2.addWidget(self.score_button)
        row2.addWidget(self.cancel_button)
        lay.addLayout(row2)
        lay.addWidget(self.progress)
        lay.addWidget(self.plot)
        lay.addWidget(self.metrics_label)
        lay.addWidget(self.export_button)
        lay.addWidget(self.training_label)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.load_button.clicked.connect(lambda: self.load())
        self.score_button.clicked.connect(lambda: self.score_all())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.plot.clicked.connect(self.show_image)
        self.export_button.clicked.connect(lambda: self.export_predictions())
        self.chooser.changed.connect(self._update_training_note)
        self.chooser.model_combo.currentIndexChanged.connect(self._update_training_note)

    # ------------------------------------------------------------------ helpers
    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose an IQA data set folder")
        if path:
            self.path_edit.setText(path)

    def _set_busy(self, busy: bool) -> None:
        self.load_button.setEnabled(not busy)
        self.score_button.setEnabled(not busy and bool(self.samples))
        self.export_button.setEnabled(not busy and bool(np.isfinite(self.pred).any()))

    # ------------------------------------------------------------------ loading
    def load(self, path: str | None = None) -> None:
        """Load the data set at ``path`` (default: the path field) in a worker."""
        if self.is_running():
            self._message("A job is running; wait or cancel it.", warn=True)
            return
        path = str(path or self.path_edit.text()).strip()
        if not path:
            self._message("Choose a data set folder (or CSV) first.", error=True)
            return
        self.path_edit.setText(path)
        self.samples, self.layers, self.stack_layer, self._images = [], [], None, []
        self._layer_jobs.clear()
        self.parts, self._all_parts, self.family = [], [], ""
        self.training_label.setVisible(False)
        self.mos = np.zeros(0)
        self.pred = np.zeros(0)
        self.plot.set_points([], [])
        self.metrics_label.setText("")
        self._start_job(
            load_job,
            path,
            self.layout_combo.currentText(),
            self.part_combo.currentText(),
            self.limit_spin.value(),
            on_yield=self._on_loaded_item,
            on_return=self._on_loaded,
            text=f"Loading {path}…",
        )

    def _on_loaded_item(self, item) -> None:
        if item[0] == "dataset":
            self.dataset = item[1]
            self.family, self._all_parts = item[3], item[4]
            return
        _, k, arr, sample = item
        self.samples.append(sample)
        self.parts.append(self._all_parts[k] if k < len(self._all_parts) else "")
        self._images.append(arr)
        if not self.stack_check.isChecked():
            meta = {
                DATASET_KEY: {
                    "mos": float(sample.mos),
                    "path": str(sample.path),
                    "dataset": self.dataset.name,
                    "units": self.dataset.scale.name,
                    "index": len(self.samples) - 1,
                }
            }
            self._layer_jobs.items.append((len(self._images) - 1, sample.path.name, meta))
            self._layer_jobs.start()

    def is_running(self) -> bool:
        """Whether a job runs, or loaded images are still going in as layers."""
        return super().is_running() or bool(self._layer_jobs)

    def _add_layer(self, job: tuple) -> None:
        """Add a loaded image as a layer (only the first one shown)."""
        k, name, meta = job
        try:
            layer = self.viewer.add_image(
                self._images[k], name=name, metadata=meta, visible=not self.layers
            )
        except Exception as exc:  # (one failed layer does not hold up the others)
            layer = None  # (kept in line with the samples: scored as missing)
            self._message(f"Could not show {name}: {error_text(exc)}", warn=True)
        self.layers.append(layer)
        self._images[k] = None  # the layer holds it

    def _on_loaded(self, out) -> None:
        kind = out[0]
        if kind == "error":
            self._message(f"Could not load the data set: {out[1]}", error=True)
            self._update_training_note()
            return
        if kind == "cancelled":
            self._message(f"{out[1]} {len(self.samples)} images were loaded.", warn=True)
        failed = out[2] if kind == "ok" else []
        self.mos = np.array([s.mos for s in self.samples], dtype=float)
        self.pred = np.full(len(self.samples), np.nan)
        if self.stack_check.isChecked() and self._images:
            shapes = {a.shape for a in self._images}
            if len(shapes) == 1:
                meta = {
                    DATASET_KEY: {
                        "mos": self.mos.tolist(),
                        "paths": [str(s.path) for s in self.samples],
                        "dataset": self.dataset.name,
                        "units": self.dataset.scale.name,
                    }
                }
                self.stack_layer = self.viewer.add_image(
                    np.stack(self._images), name=f"{self.dataset.name} stack", metadata=meta
                )
            else:
                self._message(
                    f"The images have {len(shapes)} different shapes; they were loaded as separate "
                    "layers instead of one stack.",
                    warn=True,
                )
                for k, (arr, s) in enumerate(zip(self._images, self.samples)):
                    meta = {
                        DATASET_KEY: {
                            "mos": float(s.mos),
                            "path": str(s.path),
                            "dataset": self.dataset.name,
                            "units": self.dataset.scale.name,
                            "index": k,
                        }
                    }
                    self.layers.append(
                        self.viewer.add_image(arr, name=s.path.name, metadata=meta, visible=k == 0)
                    )
            self._images = []
        self.plot.x_label = self.dataset.scale.name if self.dataset else "MOS"
        if kind == "ok":
            text = f"Loaded {len(self.samples)} of {len(self.dataset)} images of '{self.dataset.name}'."
            if failed:
                text += f" {len(failed)} could not be read (e.g. {failed[0]})."
            self._message(text, warn=bool(failed))
        self._update_training_note()

    # ------------------------------------------------------------------ scoring
    def _current_images(self) -> tuple[list, list]:
        if self.stack_layer is not None:
            if self.stack_layer not in self.viewer.layers:
                return [], []
            data = np.asarray(self.stack_layer.data)
            return [data[k] for k in range(data.shape[0])], [
                bool(self.stack_layer.rgb)
            ] * data.shape[0]
        images, rgb = [], []
        for layer in self.layers:
            ok = layer in self.viewer.layers
            images.append(np.asarray(layer.data) if ok else None)
            rgb.append(bool(layer.rgb) if ok else None)
        return images, rgb

    def score_all(self) -> None:
        """Score every loaded image in a worker; the scatter plot fills in as scores arrive."""
        if self._layer_jobs and not super().is_running():
            self._message("The images are still going in as layers; score in a moment.", warn=True)
            return
        if self.is_running():
            self._message("A job is running; wait or cancel it.", warn=True)
            return
        if not self.samples:
            self._message("Load a data set first.", error=True)
            return
        try:
            model = self.chooser.require_model()
        except Exception as exc:
            self._message(error_text(exc), error=True)
            return
        images, rgb = self._current_images()
        if not images or all(i is None for i in images):
            self._message("The data set's layers were removed; load it again.", error=True)
            return
        missing = sum(i is None for i in images)
        if missing:
            self._message(
                f"{missing} of the data set's layers were removed; they are skipped.", warn=True
            )
        self.pred = np.full(len(images), np.nan)
        self._units = ""
        self._start_job(
            score_all_job,
            images,
            model,
            self.chooser.device(),
            self.chooser.memory_mb(),
            rgb,
            on_yield=self._on_scored_item,
            on_return=self._on_scored,
            text=f"Scoring {len(images)} images…",
        )

    def _on_scored_item(self, item) -> None:
        _, k, value, units = item
        self.pred[k] = value
        if units:
            self._units = units
        if (
            self.stack_layer is None
            and k < len(self.layers)
            and self.layers[k] in self.viewer.layers
        ):
            self.layers[k].metadata[METADATA_KEY] = {"score": value, "units": units}
        self._update_plot()

    def _on_scored(self, out) -> None:
        if out[0] == "error":
            self._message(f"Scoring failed: {out[1]}", error=True)
        elif out[0] == "cancelled":
            self._message(
                f"{out[1]} {int(np.isfinite(self.pred).sum())} images were scored.", warn=True
            )
        else:
            self._message(f"Scored {int(np.isfinite(self.pred).sum())} images.")
        if self.stack_layer is not None and self.stack_layer in self.viewer.layers:
            self.stack_layer.metadata[METADATA_KEY] = {
                "scores": self.pred.tolist(),
                "units": self._units,
            }
        self._update_plot()

    def _update_plot(self) -> None:
        from ..metrics import iqa_metrics

        self.plot.set_points(self.mos, self.pred)
        self.plot.title = f"predicted ({self._units or 'model units'}) vs MOS, click a point"
        ok = np.isfinite(self.pred)
        self.metrics = iqa_metrics(self.pred[ok], self.mos[ok])
        m = self.metrics
        if np.isfinite(m["srcc"]):
            self.metrics_label.setText(
                f"SRCC {m['srcc']:.3f}   PLCC {m['plcc']:.3f}   (n = {m['n']})"
            )
        else:
            self.metrics_label.setText(f"n = {m['n']} (SRCC/PLCC need at least 3 different scores)")
        self._update_training_note()

    def _update_training_note(self, *_: Any) -> None:
        """Say, beside the SRCC, whether the chosen model was trained on the images shown."""
        scored = (
            np.isfinite(self.pred)
            if self.pred.size == len(self.parts)
            else np.zeros(len(self.parts), bool)
        )
        use = scored if scored.any() else np.ones(len(self.parts), bool)
        parts = [p for p, u in zip(self.parts, use) if u]
        if self.family not in ("livec", "biq2021") or not parts:
            self.overlap = {}
            self.training_label.setVisible(False)
            return
        self.overlap = training_overlap(
            self.family, parts, trained_parts(model_training(self.chooser.current_model()))
        )
        n, k = len(parts), self.overlap["n_in"]
        what = "scored images" if scored.any() else "loaded images"
        if not self.overlap["known"]:
            extra = f" (it describes {self.overlap['desc']})" if self.overlap["desc"] else ""
            text = (
                f"Unknown whether this model was trained on these {n} {what}: its metadata does "
                f"not say{extra}. The SRCC may not be a test figure."
            )
        elif k:
            text = (
                f"\u26a0 {k} of these {n} {what} are in this model's training data "
                f"({self.overlap['desc']}): the SRCC is not a test figure. Choose Part 'test' "
                "and Load again to measure it on images it never saw."
            )
        else:
            text = (
                f"None of these {n} {what} is in this model's training data "
                f"({self.overlap['desc']})."
            )
        self.training_label.setText(text)
        self.training_label.setVisible(True)

    # ------------------------------------------------------------------ export
    def prediction_rows(self) -> list[dict]:
        """One row per loaded image: path, MOS (data-set units), predicted score (model units)."""
        mos_units = self.dataset.scale.name if self.dataset is not None else ""
        units = getattr(self, "_units", "")
        rows = []
        for k, s in enumerate(self.samples):
            pred = float(self.pred[k]) if k < self.pred.size else float("nan")
            rows.append(
                {
                    "path": str(s.path),
                    "mos": float(s.mos),
                    "mos_units": mos_units,
                    "predicted": pred,
                    "units": units,
                    "error": "" if np.isfinite(pred) else "not scored (layer removed or failed)",
                }
            )
        return rows

    def export_predictions(self, path: str | None = None) -> str | None:
        """Save the predictions and the MOS as CSV (``path`` None asks); returns the path."""
        from ..export import write_table_csv

        if not self.samples or not np.isfinite(self.pred).any():
            self._message("Nothing to export yet: load a data set and score it.", warn=True)
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export predictions", "predictions.csv", "CSV (*.csv)"
            )
            if not path:
                return None
        fields = ("path", "mos", "mos_units", "predicted", "units", "error")
        try:
            write_table_csv(path, fields, self.prediction_rows())
        except Exception as exc:
            self._message(f"Could not export the predictions: {error_text(exc)}", error=True)
            return None
        self._message(f"Saved {len(self.samples)} rows to {path}.")
        return str(path)

    # ------------------------------------------------------------------ navigation
    def show_image(self, index: int) -> None:
        """Show image ``index``: select its layer (alone visible), or move the stack to its plane."""
        if not 0 <= index < len(self.samples):
            return
        self.plot.set_selected(index)
        s = self.samples[index]
        pred = self.pred[index] if index < self.pred.size else np.nan
        self.status.setText(f"{s.path.name}: MOS {s.mos:g}, predicted {pred:.3g}")
        if self.stack_layer is not None and self.stack_layer in self.viewer.layers:
            layer = self.stack_layer
            axis = self.viewer.dims.ndim - layer.ndim
            world = layer.data_to_world([index] + [0] * (layer.ndim - 1))
            self.viewer.dims.set_point(axis, float(world[0]))
            return
        if index < len(self.layers) and self.layers[index] in self.viewer.layers:
            for k, layer in enumerate(self.layers):
                if layer in self.viewer.layers:
                    layer.visible = k == index
            self.viewer.layers.selection.active = self.layers[index]


__all__ = ["DatasetWidget"]
