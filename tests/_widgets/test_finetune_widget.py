"""The fine-tune widget: the few-shot recipe in the background with progress, pause/resume/stop,
resume from the checkpoint, the before/after report and the "did not improve" question, the result
swapped into the scorer, failures as notifications, no leaked threads, the same model as
``pmt-iqa finetune``.

Most tests run the real recipe (``napari_pmt_iqa.training.finetune``) with the tiny backbone on
ratings given in the viewer (small generated images); the state-machine tests inject a fake trainer
that follows the same contract (events, ``Control``) through the widget's ``train_fn`` parameter.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_pmt_iqa._widgets.finetune_form import AUTO, rated_images
from napari_pmt_iqa._widgets.finetune_widget import FinetuneWidget
from napari_pmt_iqa._widgets.overlays import OVERLAY_KEY
from napari_pmt_iqa._widgets.rating_widget import set_rating
from napari_pmt_iqa._widgets.training_worker import State, model_trained, training_events
from napari_pmt_iqa.training import FinetuneConfig
from napari_pmt_iqa.training import events as ev

TIMEOUT = 30_000
N_RATED = 24


# --------------------------------------------------------------------------- helpers
def _textures(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """n RGB images, increasingly noisy (so ratings have something to follow)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 127 + 90 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    out = []
    for i in range(n):
        img = base[..., None] + rng.normal(0, 4 + 6 * i, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache (and user models folder) per test."""
    monkeypatch.setenv("PMT_IQA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _rated_viewer(make_napari_viewer, n: int = N_RATED):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_textures(n), name="rated", rgb=True)
    for i in range(n):  # one decimal: the rating widget's CSV keeps 4 significant digits
        set_rating(layer, (i,), round(90.0 - 80.0 * i / max(1, n - 1), 1))
    return viewer, layer


def _widget(viewer, qtbot, tmp_path, init, epochs=3, train_fn=None, dock=True):
    w = FinetuneWidget(viewer, train_fn=train_fn)
    if dock:
        viewer.window.add_dock_widget(w, name="fine-tune")
    else:
        qtbot.addWidget(w)
    w.set_init("model", str(init))
    w.device_combo.setCurrentText("cpu")
    w.epochs_spin.setValue(epochs)
    w.out_edit.setText(str(tmp_path / "run"))
    w.name_edit.setText("my tiny model")
    return w


def _kinds(w, name):
    return [e for e in w.events if type(e).__name__ == name]


def _paused_and_waiting(w, qtbot, kind: str) -> int:
    """Pause the run; once the widget says Paused, no ``kind`` event may come for 0.3 s."""
    w.pause()
    qtbot.waitUntil(lambda: w.state == State.PAUSED, timeout=TIMEOUT)
    n = len(_kinds(w, kind))
    qtbot.wait(300)
    assert len(_kinds(w, kind)) == n
    return n


def _no_train_threads() -> bool:
    return not any(t.name == "pmt-iqa-train" and t.is_alive() for t in threading.enumerate())


class FakeTrain:
    """A trainer with the contract of ``training.finetune``: events, Control, a result-like.

    It writes a real (tiny) checkpoint as ``best.safetensors`` after the first epoch, so that the
    publishing path is exercised too; ``fail_at`` raises in that batch (after the checkpoint);
    ``before``/``after`` are the held-out SRCCs it reports.
    """

    def __init__(
        self,
        checkpoint: Path,
        epochs=50,
        batches=5,
        delay=0.01,
        fail_at=None,
        before=0.4,
        after=0.6,
    ):
        self.checkpoint = checkpoint
        self.epochs, self.batches, self.delay, self.fail_at = epochs, batches, delay, fail_at
        self.before, self.after = before, after
        self.thread_names: list[str] = []

    def _result(self, best, stopped, epochs_done):
        return SimpleNamespace(
            best_path=best and str(best),
            state_path=None,
            stopped=stopped,
            start_val={"srcc": self.before, "plcc": self.before},
            best_val={"srcc": self.after, "plcc": self.after},
            improved=self.after > self.before,
            n_holdout=5,
            epochs_done=epochs_done,
            history=[],
        )

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
                    return self._result(best, True, epoch)
                if self.fail_at is not None and (epoch, b) == self.fail_at:
                    emit(
                        ev.Failed(
                            "The device ran out of memory while fine-tuning.",
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
        return self._result(best, False, self.epochs)


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


# --------------------------------------------------------------------------- the settings
def test_config_from_the_settings_uses_the_recipe_defaults(
    make_napari_viewer, qtbot, tmp_path, cache
):
    viewer, _ = _rated_viewer(make_napari_viewer)
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w)
    w.device_combo.setCurrentText("cpu")
    assert f"({N_RATED} rated)" in w.ratings_count.text()
    assert w.epochs_spin.value() == AUTO and w.epochs_spin.text() == "auto"
    cfg = w.make_config()
    defaults = FinetuneConfig()
    # what the form does not show keeps the recipe's defaults (those of the CLI and the API)
    for name in ("holdout_fraction", "batch_size", "lr", "rank_weight", "anchor", "refit"):
        assert getattr(cfg, name) == getattr(defaults, name), name
    # the defect-aware score is kept by default, and can be dropped
    assert w.defect_check.isChecked() and cfg.defect_score is defaults.defect_score is True
    w.defect_check.setChecked(False)
    assert w.make_config().defect_score is False
    w.defect_check.setChecked(True)
    # the blend: the recipe's (auto) by default, any share on request
    assert w.blend_combo.currentText() == "auto" and cfg.blend is defaults.blend is None
    w.blend_combo.setCurrentIndex(w.blend_combo.findData(1.0))
    assert w.make_config().blend == 1.0
    w.blend_combo.setCurrentIndex(0)
    from napari_pmt_iqa.weights import DEFAULT_MODEL

    assert cfg.epochs is None and cfg.init == DEFAULT_MODEL and cfg.backbone is None
    assert len(cfg.data) == N_RATED and cfg.score_scale.high == 100.0 and cfg.device == "cpu"
    w.set_init("backbone", "resnet18")
    w.epochs_spin.setValue(7)
    w.seed_spin.setValue(3)
    cfg = w.make_config()
    assert cfg.init is None and cfg.backbone == "resnet18" and cfg.epochs == 7 and cfg.seed == 3
    w.set_init("model", str(tmp_path / "some.safetensors"))
    w.folder_radio.setChecked(True)
    w.data_edit.setText(str(tmp_path))
    w.layout_combo.setCurrentText("livec")
    cfg = w.make_config()
    assert cfg.init == str(tmp_path / "some.safetensors") and cfg.backbone is None
    assert cfg.data == str(tmp_path) and cfg.layout == "livec"
    w.close()


def test_too_few_ratings_is_a_notification_not_a_crash(make_napari_viewer, qtbot, tmp_path, cache):
    from napari.utils.notifications import notification_manager

    viewer, _ = _rated_viewer(make_napari_viewer, n=6)
    w = _widget(viewer, qtbot, tmp_path, tmp_path / "x.safetensors", dock=False)
    n0 = len(notification_manager.records)
    assert w.start() is False
    assert w.state == State.IDLE and w.start_button.isEnabled()
    need = FinetuneConfig().min_ratings
    assert f"needs at least {need}" in w.last_error and "6 images are rated" in w.last_error
    assert any(f"at least {need}" in str(r.message) for r in notification_manager.records[n0:])
    assert not w.events  # no run, no curve
    w.close()


def test_overlays_are_never_counted_among_the_rated_images(
    make_napari_viewer, qtbot, tmp_path, cache
):
    viewer, layer = _rated_viewer(make_napari_viewer)
    overlay = viewer.add_image(
        np.zeros((4, 4), np.float32),
        name="rated quality map",
        metadata={OVERLAY_KEY: {"source": "rated", "key": "quality", "what": "quality"}},
    )
    with pytest.raises(ValueError, match="cannot be rated"):
        set_rating(overlay, (), 50.0)  # the rating widget refuses a map ...
    overlay.metadata["pmt_iqa_ratings"] = {(): 50.0}  # ... but a rating may come with the layer
    labels = viewer.add_labels(np.zeros((4, 4), np.int32), name="labels")
    labels.metadata["pmt_iqa_ratings"] = {(): 10.0}
    assert rated_images(viewer.layers) == [layer]
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w)
    w.refresh_rating_count()
    assert f"({N_RATED} rated)" in w.ratings_count.text()
    assert len(w.make_config().data) == N_RATED
    w.close()


def test_the_rated_count_is_what_the_fine_tune_gets(make_napari_viewer, qtbot, tmp_path, cache):
    viewer, layer = _rated_viewer(make_napari_viewer)
    layer.metadata["pmt_iqa_ratings"][(N_RATED + 5,)] = 50.0  # a plane that is not there
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w)
    w.refresh_rating_count()
    assert f"({N_RATED} rated)" in w.ratings_count.text()  # the stale rating is not counted
    with pytest.warns(UserWarning, match="Dropped 1 rating"):
        assert len(w.make_config().data) == N_RATED
    w.close()


# --------------------------------------------------------------------------- state machine (fake)
def test_state_machine_with_an_injected_trainer(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    viewer, _ = _rated_viewer(make_napari_viewer)
    fake = FakeTrain(tiny_checkpoint, epochs=200, batches=5, delay=0.01)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, train_fn=fake)
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
    qtbot.waitUntil(lambda: w.state == State.STOPPED and w.worker is None, timeout=TIMEOUT)
    assert _no_train_threads()
    assert w.published_path is not None and w.published_path.exists()
    assert w.start_button.isEnabled() and w.use_button.isEnabled()


@pytest.mark.parametrize("answer", [True, False])
def test_before_after_report_and_the_question_when_it_did_not_improve(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint, answer
):
    from napari_pmt_iqa._widgets.score_widget import ScoreWidget

    viewer, _ = _rated_viewer(make_napari_viewer)
    scorer = ScoreWidget(viewer)
    viewer.window.add_dock_widget(scorer, name="score")
    before_model = scorer.chooser.current_model()
    fake = FakeTrain(tiny_checkpoint, epochs=2, batches=2, delay=0.0, before=0.61, after=0.55)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, train_fn=fake)
    asked = []
    w.ask_use_anyway = lambda text: asked.append(text) or answer
    announced = []
    model_trained.connect(lambda p, m: announced.append(p))
    w.start()
    qtbot.waitUntil(lambda: w.state == State.DONE, timeout=TIMEOUT)
    report = w.result_label.text()
    assert "starting model 0.610" in report and "fine-tuned 0.550" in report
    assert "(-0.060)" in report
    assert len(asked) == 1 and "did not beat the starting model" in asked[0]
    assert w.published_path.exists()  # saved to the user models either way
    if answer:
        assert announced == [str(w.published_path)]
        assert scorer.chooser.current_model() == str(w.published_path)
    else:
        assert announced == [] and "Not used in the scorer" in w.result_label.text()
        assert scorer.chooser.current_model() == before_model
        # but listed there at once, to choose later
        assert scorer.chooser.model_combo.findData(str(w.published_path)) >= 0
        assert w.use_button.isEnabled()  # the user can still choose it
        w.use_button.click()
        assert announced == [str(w.published_path)]
    scorer.close()


def test_an_improved_model_goes_to_the_scorer_without_a_question(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    viewer, _ = _rated_viewer(make_napari_viewer)
    fake = FakeTrain(tiny_checkpoint, epochs=2, batches=2, delay=0.0, before=0.4, after=0.7)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, train_fn=fake)
    w.ask_use_anyway = lambda text: pytest.fail("asked although the model improved")
    announced = []
    model_trained.connect(lambda p, m: announced.append(p))
    w.start()
    qtbot.waitUntil(lambda: w.state == State.DONE, timeout=TIMEOUT)
    assert "starting model 0.400 → fine-tuned 0.700 (+0.300)" in w.result_label.text()
    assert announced == [str(w.published_path)]


def test_failure_keeps_the_last_good_checkpoint_and_the_widget_usable(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from napari.utils.notifications import notification_manager

    viewer, _ = _rated_viewer(make_napari_viewer)
    fake = FakeTrain(tiny_checkpoint, epochs=5, batches=3, delay=0.0, fail_at=(1, 1))
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, train_fn=fake)
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


# --------------------------------------------------------------------------- the real recipe
def test_real_training_progress_result_in_scorer_and_model_list(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from napari_pmt_iqa._widgets.score_widget import ScoreWidget
    from napari_pmt_iqa.weights import list_models, load_checkpoint, read_metadata, user_models_dir

    viewer, _ = _rated_viewer(make_napari_viewer)
    scorer = ScoreWidget(viewer)
    viewer.window.add_dock_widget(scorer, name="score")
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, epochs=30)
    w.ask_use_anyway = lambda text: True
    announced = []
    model_trained.connect(lambda p, m: announced.append(p))
    meter = StallMeter()
    meter.start()
    w.start()
    # the stall is measured from the first step on (the image preparation before it runs
    # decoding threads, which on a loaded 2-core machine compete with the GUI for the CPUs)
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) >= 1, timeout=60_000)
    overall = meter.longest
    meter.reset()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=120_000)
    meter.stop()
    overall = max(overall, meter.longest)
    assert w.state == State.DONE, w.last_error
    assert not w.last_error
    base = _kinds(w, "Baseline")
    assert len(base) == 1 and base[0].n_holdout == 5
    epochs = len(_kinds(w, "EpochEnd"))
    assert 1 <= epochs <= 30 and w.plot.points("train loss") == epochs
    assert w.plot.points("val SRCC") == epochs + 1  # the starting model at epoch 0
    assert _kinds(w, "Refitting")  # the final model is refitted on every rating
    # the model is in the chosen folder and, with its metadata, in the user models
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert (tmp_path / "run" / "report.json").exists()
    pub = w.published_path
    assert pub.parent == user_models_dir() and pub.name == "my-tiny-model.safetensors"
    meta = read_metadata(pub)
    napari_info = meta["training"]["napari"]
    assert napari_info["data"] == f"{N_RATED} planes rated in napari"
    assert napari_info["epochs_done"] == epochs and napari_info["recipe"] == "few-shot"
    assert set(napari_info["holdout_before"]) >= {"srcc", "plcc"}
    assert meta["metrics"]["holdout"]["srcc"] == pytest.approx(w.outcome.result.best_val["srcc"])
    assert "Held-out SRCC (5 ratings): starting model" in w.result_label.text()
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


def test_real_pause_resume_stop_then_resume_from_checkpoint_publishes_once(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from napari_pmt_iqa.weights import user_models_dir

    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, epochs=400)
    w.ask_use_anyway = lambda text: True
    w.start()
    qtbot.waitUntil(lambda: len(_kinds(w, "EpochEnd")) >= 1, timeout=60_000)
    n = _paused_and_waiting(w, qtbot, "BatchEnd")
    w.resume()
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) > n, timeout=TIMEOUT)
    assert w.state == State.TRAINING and _kinds(w, "Resumed")
    w.stop()
    qtbot.waitUntil(lambda: w.state == State.STOPPED, timeout=TIMEOUT)
    stopped_after = _kinds(w, "Stopped")[-1].epoch
    assert 1 <= stopped_after < 400
    assert w.outcome.result.stopped and Path(w.outcome.result.best_path).exists()
    first_pub = w.published_path
    assert first_pub.exists() and w.resume_ckpt_button.isEnabled()
    # continue the stopped run from its state.pt (with its own settings), to the end
    w.epochs_spin.setValue(3)  # ignored: the run of this session resumes with its settings
    w.resume_ckpt_button.click()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=120_000)
    assert w.state == State.DONE, w.last_error
    started = _kinds(w, "Started")[-1]
    assert started.start_epoch == stopped_after and started.epochs == 400
    assert w.outcome.result.epochs_done >= stopped_after
    # one run, one published model: the resumed run replaced its earlier copy
    assert w.published_path == first_pub and first_pub.exists()
    assert [p.name for p in user_models_dir().glob("*.safetensors")] == [first_pub.name]
    assert not (tmp_path / "run" / "state.pt").exists()  # a finished run has nothing to resume
    assert not w.resume_ckpt_button.isEnabled()
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)


def test_pause_in_the_refit_offers_resume_and_the_run_ends(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    """The refit (most of a small run) pauses like the epochs do: Paused state, a Resume button.
    The pause is asked for at the refit's second step (from the trainer's thread, so that a fast
    refit cannot end before it)."""
    from napari_pmt_iqa.training import finetune
    from napari_pmt_iqa.training.finetune import Refitting

    def finetune_pausing_in_the_refit(config, listeners=(), control=None):
        def pause(event):
            if isinstance(event, Refitting) and event.done == 2:
                control.pause()

        return finetune(config, [*listeners, pause], control)

    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(
        viewer, qtbot, tmp_path, tiny_checkpoint, epochs=2, train_fn=finetune_pausing_in_the_refit
    )
    w.ask_use_anyway = lambda text: True
    w.start()
    qtbot.waitUntil(lambda: w.state == State.PAUSED, timeout=60_000)
    assert w.pause_button.text() == "Resume" and w.pause_button.isEnabled()
    n = len(_kinds(w, "Refitting"))
    qtbot.wait(300)
    assert len(_kinds(w, "Refitting")) == n  # it waits
    w.pause_button.click()  # Resume
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=120_000)
    assert w.state == State.DONE, w.last_error
    assert _kinds(w, "Paused") and _kinds(w, "Resumed")
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)


def test_a_second_start_keeps_the_first_run_and_its_model(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    """Start again with the same output folder: the earlier run's files and published model stay,
    the new run goes to the next free folder and is published under its own name."""
    from napari_pmt_iqa.weights import read_metadata, user_models_dir

    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, epochs=2)
    w.ask_use_anyway = lambda text: False
    w.name_edit.setText("run A")
    w.start()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=120_000)
    first = w.published_path
    first_bytes = first.read_bytes()
    w.name_edit.setText("run B")
    w.blend_combo.setCurrentIndex(len(w.blend_combo) - 1)  # 1 (all): another model
    w.start()
    assert w.out_edit.text() == str(tmp_path / "run-2")
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=120_000)
    assert w.state == State.DONE, w.last_error
    assert w.published_path.name == "run-B.safetensors" != first.name
    assert first.read_bytes() == first_bytes  # untouched
    assert sorted(p.name for p in user_models_dir().glob("*.safetensors")) == sorted(
        [first.name, "run-B.safetensors"]
    )
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert read_metadata(w.published_path)["training"]["napari"]["run_dir"] == str(
        tmp_path / "run-2"
    )
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)


def test_a_start_refused_by_its_checks_says_so_in_the_result_box(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint)
    w.result_label.setText("an earlier run's words")
    w.out_edit.setText("")
    assert not w.start()
    assert w.result_label.text().startswith("Not started: ")
    assert "output folder" in w.result_label.text()
    assert w.state == State.IDLE


def test_gui_and_cli_give_the_same_model_from_the_same_ratings_and_seed(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from safetensors.torch import load_file

    from napari_pmt_iqa import cli
    from napari_pmt_iqa._widgets.rating_widget import save_ratings_csv

    viewer, layer = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, epochs=4)
    w.seed_spin.setValue(5)
    w.ask_use_anyway = lambda text: True
    w.start()
    qtbot.waitUntil(lambda: w.state in (State.DONE, State.ERROR), timeout=120_000)
    assert w.state == State.DONE, w.last_error
    csv_path, rows = save_ratings_csv(viewer.layers, tmp_path / "ratings.csv")
    assert rows == N_RATED
    out = tmp_path / "cli-run"
    rc = cli.main(
        [
            "finetune",
            "--data",
            str(csv_path),
            "--init",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--seed",
            "5",
            "--epochs",
            "4",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    gui = load_file(str(tmp_path / "run" / "best.safetensors"))
    headless = load_file(str(out / "best.safetensors"))
    assert gui.keys() == headless.keys()
    for k in gui:
        assert np.array_equal(gui[k].numpy(), headless[k].numpy()), k
    from napari_pmt_iqa.weights import read_metadata

    gui_meta = read_metadata(tmp_path / "run" / "best.safetensors")
    cli_meta = read_metadata(out / "best.safetensors")
    assert gui_meta["score_scale"] == cli_meta["score_scale"]  # the rating scale, 0-100
    assert gui_meta["metrics"] == cli_meta["metrics"]  # the same held-out before and after
    qtbot.waitUntil(lambda: w.worker is None and _no_train_threads(), timeout=TIMEOUT)


def test_real_failure_bad_data_shows_a_notification(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from napari.utils.notifications import notification_manager

    data = tmp_path / "data"
    data.mkdir()
    for i in range(24):
        (data / f"img{i}.png").write_bytes(b"not a png at all")
    (data / "scores.csv").write_text(
        "image,mos\n" + "".join(f"img{i}.png,{10 + 3 * i}\n" for i in range(24))
    )
    viewer = make_napari_viewer()
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint)
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
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    from qtpy.QtCore import QThreadPool

    viewer, _ = _rated_viewer(make_napari_viewer)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, epochs=1000)
    w.start()
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) >= 2, timeout=60_000)
    assert not _no_train_threads()
    viewer.close()
    qtbot.waitUntil(_no_train_threads, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=TIMEOUT)
    assert w.control.stop_requested


def test_a_window_closed_by_the_user_stops_training_once_it_is_hidden(
    make_napari_viewer, qtbot, tmp_path, cache, tiny_checkpoint
):
    # napari < 0.6 neither quits the plugin's worker nor closes its dock widget when the window
    # closes; after a close the user confirmed, Qt hides the window: that hide stops training.
    viewer, _ = _rated_viewer(make_napari_viewer)
    fake = FakeTrain(tiny_checkpoint, epochs=500, batches=5, delay=0.01)
    w = _widget(viewer, qtbot, tmp_path, tiny_checkpoint, train_fn=fake)
    window = viewer.window._qt_window
    window.show()
    w.start()
    qtbot.waitUntil(lambda: len(_kinds(w, "BatchEnd")) >= 2, timeout=TIMEOUT)
    assert w.state == State.TRAINING and not w.control.stop_requested
    window.hide()
    assert w.control.stop_requested
    qtbot.waitUntil(lambda: w.worker is None and not w.state.busy, timeout=TIMEOUT)


def test_fresh_run_folder_numbers_a_folder_that_holds_a_run(tmp_path, monkeypatch):
    from napari_pmt_iqa._widgets.finetune_form import fresh_run_folder

    run = tmp_path / "run"
    assert fresh_run_folder(run) == run  # not there yet
    run.mkdir()
    assert fresh_run_folder(run) == run  # empty
    (run / "state.pt").write_bytes(b"x")
    assert fresh_run_folder(run) == tmp_path / "run-2"
    (tmp_path / "run-2").write_text("a file, not a folder")
    (tmp_path / "run-3").mkdir()
    (tmp_path / "run-3" / "best.safetensors").write_bytes(b"x")
    assert fresh_run_folder(run) == tmp_path / "run-4"
    monkeypatch.chdir(run)  # "." has no name to number: its absolute path is numbered
    assert fresh_run_folder(Path(".")) == tmp_path / "run-4"
    (tmp_path / "file").write_text("x")
    assert fresh_run_folder(tmp_path / "file") == tmp_path / "file"  # the run's check says so


def test_publishing_replaces_only_the_copy_of_a_resumed_run(tmp_path, tiny_checkpoint):
    """A resumed run replaces its earlier copy (one run, one model); a new run in a folder used
    before (emptied by the user, say) adds a model and never replaces one."""
    from napari_pmt_iqa._widgets.publishing import publish_model
    from napari_pmt_iqa.weights import read_metadata

    dest = tmp_path / "models"
    info = {"run_dir": str(tmp_path / "run")}
    first = publish_model(tiny_checkpoint, "mine", info, dest_dir=dest, emit=False)
    again = publish_model(tiny_checkpoint, "mine", info, dest_dir=dest, emit=False)
    assert again == first  # the resumed run's copy replaced
    new = publish_model(
        tiny_checkpoint, "other", info, dest_dir=dest, emit=False, replace_run=False
    )
    assert new.name == "other.safetensors" and first.exists()
    assert read_metadata(first)["name"] == "mine" and read_metadata(new)["name"] == "other"
    named_alike = publish_model(
        tiny_checkpoint, "mine", info, dest_dir=dest, emit=False, replace_run=False
    )
    assert named_alike.name == "mine-2.safetensors"  # a model of that name is never overwritten
