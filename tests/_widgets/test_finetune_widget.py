"""The fine-tune widget: background training with progress, pause/resume/stop, resume from the
checkpoint, the result swapped into the scorer, failures as notifications, no leaked threads.

Most tests run the real trainer (``napari_pmt_iqa.training.train``) with the tiny backbone on
ratings given in the viewer (small generated images); the state-machine test injects a fake trainer
that follows the same contract (events, ``Control``) through the widget's ``train_fn`` parameter.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_pmt_iqa._widgets.finetune_widget import DEFAULTS, FinetuneWidget
from napari_pmt_iqa._widgets.rating_widget import set_rating
from napari_pmt_iqa._widgets.training_worker import State, model_trained, training_events
from napari_pmt_iqa.training import events as ev

TIMEOUT = 30_000


# --------------------------------------------------------------------------- helpers
def _textures(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """n RGB images, increasingly noisy (so ratings have something to follow)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 127 + 90 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    out = []
    for i in range(n):
        img = base[..., None] + rng.normal(0, 4 + 12 * i, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache (and user models folder) per test."""
    monkeypatch.setenv("PMT_IQA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _rated_viewer(make_napari_viewer, n: int = 10):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_textures(n), name="rated", rgb=True)
    for i in range(n):
        set_rating(layer, (i,), 90.0 - 8.0 * i)
    return viewer, layer


def _widget(viewer, qtbot, tmp_path, epochs=3, batch=4, train_fn=None, dock=True):
    w = FinetuneWidget(viewer, train_fn=train_fn)
    if dock:
        viewer.window.add_dock_widget(w, name="fine-tune")
    else:
        qtbot.addWidget(w)
    w.set_init("backbone", "tiny")
    w.device_combo.setCurrentText("cpu")
    w.epochs_spin.setValue(epochs)
    w.batch_spin.setValue(batch)
    w.freeze_check.setChecked(False)
    w.out_edit.setText(str(tmp_path / "run"))
    w.name_edit.setText("my tiny model")
    return w


def _kinds(w, name):
    return [e for e in w.events if type(e).__name__ == name]


def _no_train_threads() -> bool:
    return not any(t.name == "pmt-iqa-train" and t.is_alive() for t in threading.enumerate())


class FakeTrain:
    """A trainer with the contract of ``training.train``: events, Control, a TrainResult-like.

    It writes a real (tiny) checkpoint as ``best.safetensors`` after the first epoch, so that the
    publishing path is exercised too; ``fail_at`` raises in that batch (after the checkpoint).
    """

    def __init__(self, checkpoint: Path, epochs=50, batches=5, delay=0.01, fail_at=None):
        self.checkpoint = checkpoint
        self.epochs, self.batches, self.delay, self.fail_at = epochs, batches, delay, fail_at
        self.thread_names: list[str] = []

    def __call__(self, config, listeners=(), control=None):
        import shutil

        self.thread_names.append(threading.current_thread().name)
        emit = lambda e: [fn(e) for fn in listeners]  # noqa: E731
        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        best = None
        emit(ev.Started(self.epochs, self.batches, 8, 2, 0, "cpu"))
        for epoch in range(self.epochs):
            for b in range(self.batches):
                if control.paused and not control.stop_requested:
                    emit(ev.Paused(epoch, b))
                    control.wait_if_paused()
                    emit(ev.Resumed(epoch, b))
                if control.stop_requested:
                    emit(ev.Stopped(epoch, b, str(best or ""), ""))
                    return SimpleNamespace(
                        best_path=best and str(best),
                        state_path=None,
                        stopped=True,
                        best_val={"srcc": 0.5},
                        epochs_done=epoch,
                        history=[],
                    )
                if self.fail_at is not None and (epoch, b) == self.fail_at:
                    emit(
                        ev.Failed(
                            "The device ran out of memory (4 images x 1 crops per step).",
                            "Lower the batch size.",
                            str(best or ""),
                        )
                    )
                    raise MemoryError("out of memory")
                time.sleep(self.delay)
                emit(ev.BatchEnd(epoch, b, self.batches, 1.0 / (1 + epoch), 0.5, 0.5, 100.0))
            best = out / "best.safetensors"
            shutil.copyfile(self.checkpoint, best)
            emit(ev.CheckpointSaved(str(best), epoch, "best", 0.5))
            emit(
                ev.EpochEnd(epoch, self.epochs, 1.0, 0.0, 1.0, 0.5, 0.5, {"srcc": 0.5, "plcc": 0.6})
            )
        emit(ev.Finished(str(best), 0.5, self.epochs, 1.0))
        return SimpleNamespace(
            best_path=str(best),
            state_path=None,
            stopped=False,
            best_val={"srcc": 0.5},
            epochs_done=self.epochs,
            history=[],
        )


class StallMeter:
    """The longest gap between ticks of a 5 ms QTimer: how long the event loop was blocked."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.longest = 0.0
        self.ticks = 0
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        self.ticks += 1

    def start(self):
        self._last = time.perf_counter()
        self.timer.start()

    def reset(self):
        self.longest = 0.0

    def stop(self):
        self.timer.stop()


# --------------------------------------------------------------------------- Qt-free glue
def test_training_events_generator_runs_the_trainer_off_the_calling_thread(
    tiny_checkpoint, tmp_path
):
    fake = FakeTrain(tiny_checkpoint, epochs=2, batches=3, delay=0.0)
    gen = training_events(SimpleNamespace(out_dir=str(tmp_path)), fake, ev.Control())
    seen = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.extend(next(gen))
    outcome = stop.value.value
    assert outcome.error is None and outcome.result.epochs_done == 2
    assert fake.thread_names == ["pmt-iqa-train"]
    assert [type(e).__name__ for e in seen].count("BatchEnd") == 6
    assert type(seen[-1]).__name__ == "Finished"
    assert _no_train_threads()


def test_defaults_and_config_from_the_settings(make_napari_viewer, qtbot, tmp_path, cache):
    viewer, _ = _rated_viewer(make_napari_viewer, n=6)
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w)
    w.device_combo.setCurrentText("cpu")
    assert w.epochs_spin.value() == DEFAULTS["cpu"]["epochs"]
    assert w.freeze_check.isChecked() is DEFAULTS["cpu"]["freeze_backbone"]
    assert "(6 rated)" in w.ratings_count.text()
    w.set_init("backbone", "resnet18")
    w.lr_combo.setCurrentText("3e-4")
    w.progressive_check.setChecked(False)
    cfg = w.make_config()
    assert cfg.init is None and cfg.backbone == "resnet18"
    assert cfg.lr == pytest.approx(3e-4) and cfg.progressive is False and cfg.device == "cpu"
    assert len(cfg.data) == 6 and cfg.score_scale.high == 100.0
    w.set_init("model", str(tmp_path / "some.safetensors"))
    w.folder_radio.setChecked(True)
    w.data_edit.setText(str(tmp_path))
    w.layout_combo.setCurrentText("livec")
    cfg = w.make_config()
    assert cfg.init == str(tmp_path / "some.safetensors") and cfg.data == str(tmp_path)
    assert cfg.layout == "livec"
    w.lr_combo.setCurrentText("fast")
    with pytest.raises(ValueError, match="learning rate"):
        w.make_config()
    w.close()


def test_too_few_ratings_is_a_notification_not_a_crash(make_napari_viewer, qtbot, tmp_path, cache):
    from napari.utils.notifications import notification_manager

    viewer, _ = _rated_viewer(make_napari_viewer, n=3)
    w = _widget(viewer, qtbot, tmp_path, dock=False)
    n0 = len(notification_manager.records)
    assert w.start() is False
    assert w.state == State.IDLE and w.start_button.isEnabled()
    assert "rate at least 5" in w.last_error
    assert any("rate at least 5" in str(r.message) for r in notification_manager.records[n0:])
    w.close()


# --------------------------------------------------------------------------- state machine (fake)
def test_state_machine_with_an_injected_trainer(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    viewer, _ = _rated_viewer(make_napari_viewer)
    fake = FakeTrain(tiny_checkpoint, epochs=200, batches=5, delay=0.01)
    w = _widget(viewer, qtbot, tmp_path, train_fn=fake)
    assert (
        w.state == State.IDLE and not w.pause_button.isEnabled() and not w.stop_button.isEnabled()
    )
    assert w.start()
    assert (
        w.state == State.TRAINING and not w.start_button.isEnabled() and w.stop_button.isEnabled()
    )
    qtbot.waitUntil(lambda: len(_kinds(w, "EpochEnd")) >= 1, timeout=TIMEOUT)
    assert fake.thread_names == ["pmt-iqa-train"]
    assert w.epoch_bar.maximum() == 200 and w.batch_bar.maximum() == 5
    assert "left" in w.status_label.text()
    w.pause_button.click()
    qtbot.waitUntil(lambda: w.state == State.PAUSED, timeout=TIMEOUT)
    assert w.pause_button.text() == "Resume"
    n = len(_kinds(w, "BatchEnd"))
    qtbot.wait(200)
    assert len(_kinds(w, "BatchEnd")) == n  # really paused
    w.pause_button.click()
    qtbot.waitUntil(
        lambda: w.state == State.TRAINING and len(_kinds(w, "BatchEnd")) > n + 2, timeout=TIMEOUT
    )
    w.stop_button.click()
    assert w.state == State.STOPPING
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=TIMEOUT)
    assert w.worker is None and _no_train_threads()
    assert w.published_path is not None and w.published_path.exists()
    assert w.start_button.isEnabled() and w.use_button.isEnabled()


def test_failure_keeps_the_last_good_checkpoint_and_the_widget_usable(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from napari.utils.notifications import notification_manager

    viewer, _ = _rated_viewer(make_napari_viewer)
    fake = FakeTrain(tiny_checkpoint, epochs=5, batches=3, delay=0.0, fail_at=(1, 1))
    w = _widget(viewer, qtbot, tmp_path, train_fn=fake)
    n0 = len(notification_manager.records)
    w.start()
    qtbot.waitUntil(lambda: w.state == State.ERROR, timeout=TIMEOUT)
    best = tmp_path / "run" / "best.safetensors"
    assert best.exists()
    msgs = [str(r.message) for r in notification_manager.records[n0:]]
    assert any(
        "ran out of memory" in m and "Lower the batch size" in m and str(best) in m for m in msgs
    )
    assert w.start_button.isEnabled() and not w.stop_button.isEnabled()
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    assert _no_train_threads()


# --------------------------------------------------------------------------- the real trainer
def test_real_training_progress_result_in_scorer_and_model_list(
    make_napari_viewer, qtbot, tmp_path, cache
):
    from napari_pmt_iqa._widgets.score_widget import ScoreWidget
    from napari_pmt_iqa.weights import list_models, load_checkpoint, read_metadata, user_models_dir

    viewer, _ = _rated_viewer(make_napari_viewer)
    scorer = ScoreWidget(viewer)
    viewer.window.add_dock_widget(scorer, name="score")
    w = _widget(viewer, qtbot, tmp_path, epochs=4)
    announced = []
    model_trained.connect(lambda p, m: announced.append(p))
    meter = StallMeter()
    meter.start()
    w.start()
    # the stall is measured from the first batch on (the image preparation before it runs
    # several decoding threads, which on a loaded 2-core machine compete with the GUI for the CPUs)
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) >= 1, timeout=60_000)
    overall = meter.longest
    meter.reset()
    qtbot.waitUntil(lambda: w.state == State.DONE, timeout=60_000)
    meter.stop()
    overall = max(overall, meter.longest)
    assert not w.last_error
    assert len(_kinds(w, "EpochEnd")) == 4 and w.epoch_bar.value() == 4
    assert w.plot.points("train loss") == 4 and w.plot.points("batch loss") >= 4
    # the best checkpoint is in the chosen folder and, with its metadata, in the user models
    assert (tmp_path / "run" / "best.safetensors").exists()
    pub = w.published_path
    assert pub.parent == user_models_dir() and pub.name == "my-tiny-model.safetensors"
    meta = read_metadata(pub)
    assert meta["training"]["napari"]["data"] == "10 planes rated in napari"
    assert meta["training"]["napari"]["epochs_done"] == 4
    assert str(pub) in list_models()  # a later session lists it too
    # swapped into the open score widget at once
    assert announced == [str(pub)]
    assert scorer.chooser.current_model() == str(pub)
    assert load_checkpoint(pub).config.backbone == "tiny"
    # the GUI stayed responsive
    print(
        f"longest event-loop stall: {meter.longest * 1000:.1f} ms during training, "
        f"{overall * 1000:.1f} ms including the start ({meter.ticks} ticks)"
    )
    assert meter.ticks > 10
    assert meter.longest < 0.1
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)
    # CPU memory returns near its level before training (tiny model; numbers in docs/finetune.md)
    print(f"RSS before {w.rss_before:.0f} MB, after {w.rss_after:.0f} MB")
    assert w.rss_after - w.rss_before < 150
    scorer.close()


def test_real_pause_resume_stop_then_resume_from_checkpoint(
    make_napari_viewer, qtbot, tmp_path, cache
):
    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, epochs=40, batch=2)
    w.start()
    qtbot.waitUntil(lambda: len(_kinds(w, "EpochEnd")) >= 1, timeout=60_000)
    w.pause()
    qtbot.waitUntil(lambda: w.state == State.PAUSED, timeout=TIMEOUT)
    n = len(_kinds(w, "BatchEnd"))
    qtbot.wait(300)
    assert len(_kinds(w, "BatchEnd")) == n
    w.resume()
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) > n, timeout=TIMEOUT)
    assert w.state == State.TRAINING and _kinds(w, "Resumed")
    w.stop()
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=TIMEOUT)
    stopped_at = _kinds(w, "Stopped")[-1].epoch
    assert stopped_at < 39
    assert w.outcome.result.stopped and Path(w.outcome.result.best_path).exists()
    assert w.published_path.exists()
    assert w.resume_ckpt_button.isEnabled()
    first_pub = w.published_path
    # continue the stopped run from its state.pt (with its own settings), to the end
    w.epochs_spin.setValue(3)  # ignored: the run of this session resumes with its settings
    w.resume_ckpt_button.click()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=60_000)
    assert w.state == State.DONE, w.last_error
    started = _kinds(w, "Started")[-1]
    assert started.start_epoch >= 1 and started.epochs == 40
    assert len(_kinds(w, "EpochEnd")) == started.epochs - started.start_epoch
    assert w.outcome.result.epochs_done == 40
    assert w.published_path != first_pub and w.published_path.exists()
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)


def test_real_failure_bad_data_shows_a_notification(make_napari_viewer, qtbot, tmp_path, cache):
    from napari.utils.notifications import notification_manager

    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"img{i}.png").write_bytes(b"not a png at all")
    (data / "scores.csv").write_text(
        "image,mos\n" + "".join(f"img{i}.png,{10 + 10 * i}\n" for i in range(6))
    )
    viewer = make_napari_viewer()
    w = _widget(viewer, qtbot, tmp_path)
    w.folder_radio.setChecked(True)
    w.data_edit.setText(str(data))
    n0 = len(notification_manager.records)
    w.start()
    qtbot.waitUntil(lambda: w.state in (State.ERROR, State.DONE), timeout=60_000)
    assert w.state == State.ERROR
    msgs = [str(r.message) for r in notification_manager.records[n0:]]
    assert any(m.startswith("Fine-tuning failed") and "What to do" in m for m in msgs), msgs
    assert w.start_button.isEnabled() and w.folder_radio.isEnabled()
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)


def test_closing_the_viewer_during_training_stops_the_worker(
    make_napari_viewer, qtbot, tmp_path, cache
):
    from qtpy.QtCore import QThreadPool

    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, epochs=500, batch=2)
    w.start()
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) >= 2, timeout=60_000)
    assert not _no_train_threads()
    viewer.close()
    qtbot.waitUntil(_no_train_threads, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=TIMEOUT)
    assert w.control.stop_requested
    # the last good checkpoint stays on disk
    assert (tmp_path / "run" / "best.safetensors").exists() or not _kinds(w, "EpochEnd")


def test_a_window_closed_by_the_user_stops_training_once_it_is_hidden(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    # napari < 0.6 neither quits the plugin's worker nor closes its dock widget when the window
    # closes; after a close the user confirmed, Qt hides the window: that hide stops training.
    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, train_fn=FakeTrain(tiny_checkpoint, epochs=500))
    window = viewer.window._qt_window
    window.show()
    w.start()
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) >= 2, timeout=TIMEOUT)
    assert w.state == State.TRAINING and not w.control.stop_requested
    window.hide()
    assert w.control.stop_requested
    qtbot.waitUntil(lambda: w.worker is None and not w.state.busy, timeout=TIMEOUT)
