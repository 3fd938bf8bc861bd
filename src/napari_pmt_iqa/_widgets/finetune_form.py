"""The settings form of the fine-tune widget: what to train on, from which model, where to.

It builds a :class:`~napari_pmt_iqa.training.FinetuneConfig` (:meth:`FinetuneForm.make_config`):
everything it does not show keeps the recipe's defaults, the same ones ``pmt-iqa finetune`` and
:func:`napari_pmt_iqa.training.finetune` use. The rated images are the Image layers of the viewer
that carry ratings, never this plugin's overlays (quality maps and the like).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .rating_widget import rated_layers, rated_pairs, rated_plane_count

BACKBONES = [
    ("ImageNet EfficientNet-Lite0 (new heads)", "efficientnet_lite0"),
    ("ImageNet ResNet-50 (new heads)", "resnet50"),
    ("ImageNet ResNet-18 (new heads)", "resnet18"),
    ("tiny CNN (random init, for tests)", "tiny"),
]
CHOOSE_FILE = "Checkpoint file..."
LAYOUTS = ["auto", "csv", "livec", "biq2021"]
#: Choices of ``FinetuneConfig.blend`` (the share of the fine-tuned step kept; None: the recipe's).
BLENDS = [
    ("auto", None),
    ("0.25", 0.25),
    ("0.5", 0.5),
    ("0.75", 0.75),
    ("1 (all)", 1.0),
]
#: The epochs box at this value means "automatic" (from the number of ratings).
AUTO = 0


def default_out_dir() -> Path:
    """A fresh run folder under the plugin's cache (``.../napari-pmt-iqa/runs/finetune-<time>``)."""
    from ..weights import cache_dir

    return cache_dir() / "runs" / time.strftime("finetune-%Y%m%d-%H%M%S")


#: The files of a run folder (a new run there would replace them).
RUN_FILES = ("best.safetensors", "state.pt", "report.json")


def fresh_run_folder(folder: Path) -> Path:
    """``folder`` if it holds no run yet, else the first ``<folder>-2``, ``<folder>-3``, ...
    beside it that holds none: a new run never replaces an earlier run's model or ``state.pt``
    (*Resume from checkpoint* continues a run in its own folder)."""

    def holds_run(p: Path) -> bool:
        return any((p / n).exists() for n in RUN_FILES)

    def taken(p: Path) -> bool:  # a run's files, or a file where the folder would be
        return (p.exists() and not p.is_dir()) or holds_run(p)

    folder = Path(folder).expanduser()
    if not holds_run(folder):  # (a file given as the folder: the run's own check says so)
        return folder
    folder = folder.resolve()  # ("." or ".." have no name to number)
    i = 2
    cand = folder.with_name(f"{folder.name}-{i}")
    while taken(cand):
        i += 1
        cand = folder.with_name(f"{folder.name}-{i}")
    return cand


def rated_images(layers: Iterable[Any]) -> list[Any]:
    """The Image layers that carry ratings, overlays of this plugin left out."""
    return rated_layers(layers)


def rating_count(layers: Iterable[Any]) -> int:
    """Number of rated planes the fine-tune would use (the same count as :func:`rated_pairs`)."""
    return rated_plane_count(layers)


class FinetuneForm(QWidget):
    """Data source, starting model, whether to keep its defect-aware score, device, epochs, seed,
    output folder and model name.

    Parameters
    ----------
    viewer
        The viewer whose rated layers are the training data when *Ratings in this viewer* is on.
    """

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ..devices import available_devices  # imports torch (the widget guarded triton)
        from ..training.finetune import FinetuneConfig
        from ..weights import DEFAULT_MODEL, list_models

        self.viewer = viewer
        self.defaults = FinetuneConfig()
        self.data_desc = ""
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)

        data_box = QGroupBox("Training data")
        dl = QVBoxLayout(data_box)
        self.ratings_radio = QRadioButton("Ratings in this viewer")
        self.ratings_count = QLabel()
        self.folder_radio = QRadioButton("Data set (folder or CSV)")
        grp = QButtonGroup(self)
        grp.addButton(self.ratings_radio)
        grp.addButton(self.folder_radio)
        self.ratings_radio.setChecked(True)
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("folder of a data set, or a CSV image,mos")
        self.data_browse = QPushButton("...")
        self.data_browse.setFixedWidth(30)
        self.layout_combo = QComboBox()
        self.layout_combo.addItems(LAYOUTS)
        self.layout_combo.setToolTip("csv: image,mos[,split]; livec: ChallengeDB_release; biq2021")
        r1 = QHBoxLayout()
        r1.addWidget(self.ratings_radio)
        r1.addWidget(self.ratings_count, 1)
        dl.addLayout(r1)
        dl.addWidget(self.folder_radio)
        r2 = QHBoxLayout()
        r2.addWidget(self.data_edit, 1)
        r2.addWidget(self.data_browse)
        r2.addWidget(self.layout_combo)
        dl.addLayout(r2)
        lay.addWidget(data_box)

        form = QFormLayout()
        self.init_combo = QComboBox()
        self.init_combo.setToolTip(
            "The model to fine-tune: a trained quality model learns far more from a hundred "
            "ratings than an ImageNet backbone with new heads."
        )
        try:
            models = list_models()
        except Exception:
            models = {}
        for name, desc in models.items():
            self.init_combo.addItem(Path(name).name if Path(name).suffix else name, f"model:{name}")
            self.init_combo.setItemData(
                self.init_combo.count() - 1, desc or name, Qt.ItemDataRole.ToolTipRole
            )
        for label, bb in BACKBONES:
            self.init_combo.addItem(label, f"backbone:{bb}")
        self.init_combo.addItem(CHOOSE_FILE, None)
        i = self.init_combo.findData(f"model:{DEFAULT_MODEL}")
        self.init_combo.setCurrentIndex(
            i if i >= 0 else self.init_combo.findData("backbone:efficientnet_lite0")
        )
        self._last_init = self.init_combo.currentIndex()
        self.defect_check = QCheckBox("Keep the defect-aware score")
        self.defect_check.setChecked(bool(self.defaults.defect_score))
        self.defect_check.setToolTip(
            "The default model lowers the score where it sees strong blur, noise or compression. "
            "On: the fine-tune learns your ratings on top of that, and the new model keeps it. "
            "Off: the new model learns your ratings alone (for images whose noise or compression "
            "you rate as fine). No effect for a starting model without it."
        )
        self.blend_combo = QComboBox()
        for label, value in BLENDS:
            self.blend_combo.addItem(label, value)
        self.blend_combo.setCurrentIndex([v for _, v in BLENDS].index(self.defaults.blend))
        self.blend_combo.setToolTip(
            "How much of the fine-tune the new model keeps: every trained weight moves this "
            "share of the way from the starting model to the fine-tuned one. auto: half from a "
            "quality model (100 ratings gained as much as with any share measured, and lost "
            "nothing on photos the model already judged well), all of it from an ImageNet "
            "backbone. 1 learns a defect the model misjudges most fully, and forgets more of "
            "what the ratings do not show."
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(AUTO, 1000)
        self.epochs_spin.setSpecialValueText("auto")
        self.epochs_spin.setValue(AUTO if self.defaults.epochs is None else self.defaults.epochs)
        self.epochs_spin.setToolTip(
            "Epochs of the heads' training; 'auto' follows from the number of ratings (the "
            "held-out ratings stop it earlier when it no longer helps)."
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(int(self.defaults.seed))
        self.seed_spin.setToolTip("Seed of the held-out part, the crops and the order")
        self.out_edit = QLineEdit(str(default_out_dir()))
        self.out_edit.setToolTip("The run folder: best.safetensors and report.json go here")
        self.out_browse = QPushButton("...")
        self.out_browse.setFixedWidth(30)
        self.name_edit = QLineEdit("my-finetuned-model")
        self.name_edit.setToolTip(
            "Name of the model in the model lists (a copy goes to your models folder)"
        )
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(self.out_browse)
        form.addRow("Start from", self.init_combo)
        form.addRow(self.defect_check)  # both columns: the dock stays narrow
        form.addRow("Blend", self.blend_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("Output folder", out_row)
        form.addRow("Model name", self.name_edit)
        lay.addLayout(form)

        self.init_combo.activated.connect(self._on_init_activated)
        self.data_browse.clicked.connect(self._browse_data)
        self.out_browse.clicked.connect(self._browse_out)
        self.refresh_count()

    # ------------------------------------------------------------------ controls
    def controls(self) -> list[QWidget]:
        """Every input control (disabled while a run is busy)."""
        return [
            self.ratings_radio,
            self.folder_radio,
            self.data_edit,
            self.data_browse,
            self.layout_combo,
            self.init_combo,
            self.defect_check,
            self.blend_combo,
            self.device_combo,
            self.epochs_spin,
            self.seed_spin,
            self.out_edit,
            self.out_browse,
            self.name_edit,
        ]

    def set_enabled(self, enabled: bool) -> None:
        for w in self.controls():
            w.setEnabled(enabled)

    def set_init(self, kind: str, value: str) -> None:
        """Choose the starting model: ``("backbone", name)`` or ``("model", name_or_path)``."""
        i = self.init_combo.findData(f"{kind}:{value}")
        if i < 0:
            if kind != "model":
                raise ValueError(f"Unknown backbone {value!r}.")
            i = self.init_combo.count() - 1
            self.init_combo.insertItem(i, Path(value).name, f"{kind}:{value}")
        self.init_combo.setCurrentIndex(i)
        self._last_init = i

    def _on_init_activated(self, index: int) -> None:
        if self.init_combo.itemData(index) is not None:
            self._last_init = index
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Start from a checkpoint", "", "Checkpoints (*.safetensors);;All files (*)"
        )
        self.init_combo.setCurrentIndex(self._last_init)
        if path:
            self.set_init("model", path)

    def _browse_data(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Data set folder")
        if path:
            self.data_edit.setText(path)
            self.folder_radio.setChecked(True)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)

    def refresh_count(self) -> None:
        """Show how many planes are rated (overlays left out)."""
        n = rating_count(self.viewer.layers)
        self.ratings_count.setText(f"({n} rated)")
        self.ratings_count.setToolTip(
            f"Rate at least {self.defaults.min_ratings} images or planes with the rating widget "
            "(keys 1-5); about 100 give a clear gain."
        )

    def out_dir(self) -> Path | None:
        out = self.out_edit.text().strip()
        return Path(out).expanduser() if out else None

    # ------------------------------------------------------------------ config
    def make_config(self, resume: str | Path | None = None):
        """The :class:`~napari_pmt_iqa.training.FinetuneConfig` of the current settings.

        Raises
        ------
        ValueError
            Too few or equal ratings, no data folder, no output folder; the message names the
            control to change.
        """
        from ..training.finetune import FinetuneConfig, ratings_scale

        kw: dict[str, Any] = {}
        need = self.defaults.min_ratings
        if self.ratings_radio.isChecked():
            pairs = rated_pairs(rated_images(self.viewer.layers))
            if len(pairs) < need:
                raise ValueError(
                    f"{len(pairs)} images are rated; the fine-tune needs at least {need} (about "
                    "100 give a clear gain): rate more with the rating widget (keys 1-5), or "
                    "choose a data set under 'Training data'."
                )
            if len({s for _, s in pairs}) < 2:
                raise ValueError(
                    "All ratings are equal: give better and worse images different scores."
                )
            kw["data"] = pairs
            kw["score_scale"] = ratings_scale()
            self.data_desc = f"{len(pairs)} planes rated in napari"
        else:
            path = self.data_edit.text().strip()
            if not path:
                raise ValueError(
                    "Choose a data set folder (or a CSV image,mos) under 'Training data', or "
                    "train on the ratings in this viewer."
                )
            kw["data"] = path
            kw["layout"] = self.layout_combo.currentText()
            self.data_desc = f"{path} (layout {kw['layout']})"
        choice = self.init_combo.currentData()
        if choice is None:
            raise ValueError("Choose a starting model under 'Start from'.")
        kind, _, value = str(choice).partition(":")
        if kind == "backbone":
            kw["backbone"] = value
        else:
            kw["init"] = value
        out = self.out_dir()
        if out is None:
            raise ValueError("Choose an output folder ('Output folder').")
        epochs = int(self.epochs_spin.value())
        return FinetuneConfig(
            out_dir=str(out),
            device=self.device_combo.currentText(),
            epochs=None if epochs == AUTO else epochs,
            seed=int(self.seed_spin.value()),
            defect_score=self.defect_check.isChecked(),
            blend=self.blend_combo.currentData(),
            resume=str(resume) if resume else None,
            **kw,
        )
