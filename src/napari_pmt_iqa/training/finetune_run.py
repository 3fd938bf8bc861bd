"""The few-shot fine-tuning run behind :func:`napari_pmt_iqa.training.finetune` (its recipe is
described there): the selection run, the blend, the refit and how a run ends. Its setup (checks,
data, starting model, the backbone's feature cache) is in :mod:`.finetune_setup`, its files
(``best.safetensors``, ``state.pt``, ``report.json``) in :mod:`.finetune_files`. Internal: use
:func:`~napari_pmt_iqa.training.finetune`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np

from .errors import TrainingError
from .events import (
    BatchEnd,
    Control,
    Emitter,
    EpochEnd,
    Finished,
    Preparing,
    Started,
    Stopped,
)
from .finetune_config import (
    Baseline,
    FinetuneConfig,
    FinetuneResult,
    Refitting,
)
from .finetune_files import RunFiles
from .finetune_setup import RunSetup


class _Run(RunSetup, RunFiles):
    """One fine-tuning run: the selection run, the blend, the refit and the endings (its setup
    in :mod:`.finetune_setup`, its files in :mod:`.finetune_files`)."""

    def __init__(self, cfg: FinetuneConfig, emit: Emitter, control: Control) -> None:
        self.cfg = cfg
        self.emit = emit
        self.control = control
        self.best_path: Path | None = None
        self._best_state: dict | None = None
        self._best_dirty = False
        self._base: dict | None = None  # the calibrated start, the blend's other end
        self._eval_model = None  # a copy that scores the blend on the held-out images
        self.t0 = time.time()

    # ------------------------------------------------------------------ run
    def run(self) -> FinetuneResult:

        from ..devices import resolve_device
        from ..metrics import iqa_metrics
        from .heads_fit import FeaturePack, calibrate_regression, image_factors, image_scores

        c = self.cfg
        self._validate()
        self.device = resolve_device(c.device)
        from .checks import output_folder

        out = output_folder(c.out_dir, "finetune")
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.state_path = out, out / "state.pt"
        self.start_model = self._start_model()
        self.crop = self.start_model.config.crop_size
        self.adapt = self._adapting(self.start_model)  # refused before the data is read
        self._prepare()
        model = self.start_model.to(self.device)
        self.epochs = c.epochs_for(len(self.train_idx))
        resume_state = None
        if c.resume:
            from .state import load_state

            resume_state, rpath = load_state(Path(c.resume).expanduser(), self._fingerprint())
            self.resumed_from = str(rpath)
        else:
            self.resumed_from = ""

        # features: the backbone runs once per image
        t_feat = time.time()
        all_idx = self.train_idx + self.hold_idx
        total = len(all_idx)
        self.emit(Preparing(0, total, "features"))
        n_tr = len(self.train_idx)
        tr_f = self._features(
            model, self.train_idx, c.windows_per_image, 0, total, 2 * c.windows_per_image
        )
        ho_f = (
            self._features(model, self.hold_idx, c.holdout_windows, n_tr, total, c.holdout_windows)
            if tr_f is not None
            else None
        )
        self.feature_seconds = time.time() - t_feat
        self.history: list[dict] = []
        self.best: list = [None, None, {}]
        self.start_val: dict = {}
        self.calibration = (1.0, 0.0)
        if tr_f is None or ho_f is None:
            return self._stopped_before_training()
        to_int = self.scale.to_internal
        t_tr = [float(to_int(self.samples[i].mos)) for i in self.train_idx]
        t_ho = [float(to_int(self.samples[i].mos)) for i in self.hold_idx]
        train_pack = FeaturePack(tr_f[0], t_tr, tr_f[1], levels=tr_f[2])
        hold_pack = FeaturePack(ho_f[0], t_ho, ho_f[1], levels=ho_f[2])
        del tr_f, ho_f

        # the starting model as the scorer scores (its defect-aware score included; exactly for
        # held-out images of up to holdout_windows windows)
        start_scores = image_scores(model, hold_pack)
        self.start_val = iqa_metrics(start_scores, t_ho) if len(t_ho) else {}
        self.emit(Baseline(dict(self.start_val), len(t_ho)))
        uncalibrated = copy.deepcopy(model.state_dict())
        if c.calibrate:
            self.calibration = calibrate_regression(
                model,
                image_scores(model, train_pack),
                np.asarray(t_tr),
                factors=image_factors(model, train_pack),
            )
        self._base = copy.deepcopy(model.state_dict())  # the blend's start (calibrated)
        with _cpu_threads(c.threads_for(self.adapt) if self.device.type == "cpu" else None):
            return self._train(model, train_pack, hold_pack, resume_state, uncalibrated, t_tr, t_ho)

    def _train(self, model, train_pack, hold_pack, resume_state, uncalibrated, t_tr, t_ho):
        from .heads_fit import FeaturePack, calibrate_regression, image_factors, image_scores

        c = self.cfg
        if self._select(model, train_pack, hold_pack, resume_state):
            return self._stop_result()
        refit = bool(c.refit and len(self.hold_idx) and self.best[1] is not None)
        if refit:
            model.load_state_dict(uncalibrated)
            # the held-out images' windows, capped as a training image's; with head maps all of
            # them (a pack's rows must match its maps)
            cap = None if self.adapt else c.windows_per_image
            f_tr, l_tr = _rows_of(train_pack)
            f_ho, l_ho = _rows_of(hold_pack, cap, c.seed)
            all_pack = FeaturePack(
                [*f_tr, *f_ho],
                t_tr + t_ho,
                [*train_pack.maps, *hold_pack.maps] if self.adapt else None,
                levels=[*l_tr, *l_ho] if train_pack.levels is not None else None,
            )
            if c.calibrate:
                self.calibration = calibrate_regression(
                    model,
                    image_scores(model, all_pack),
                    np.asarray(t_tr + t_ho),
                    factors=image_factors(model, all_pack),
                )
            refit_base = copy.deepcopy(model.state_dict())
            epochs = c.refit_epochs_for(len(all_pack), int(self.best[1]))
            self.refit_epochs = epochs
            if not self._refit(model, all_pack, epochs):
                # continue later from the end of the selection run (the refit starts over)
                self._save_state(model, self._opt, len(self.history), 0, [0.0] * 4)
                return self._stop_result()
            self._blend_into(model, refit_base)
        else:
            self._blend_into(model, self._base)
        self._save_best(model, self.best[2] or {}, len(self.history), refit, self.best[1] or 0)
        self._best_dirty = False
        report = self._write_report(refit)
        if self.state_path.exists():  # a finished run has nothing to resume
            self.state_path.unlink()
        self.emit(
            Finished(
                best_path=str(self.best_path) if self.best_path else "",
                best_val_srcc=float((self.best[2] or {}).get("srcc", math.nan)),
                epochs_done=len(self.history),
                seconds=time.time() - self.t0,
            )
        )
        return self._result(False, refit, report)

    def _select(self, model, train_pack, hold_pack, resume_state) -> bool:
        """The selection run (the model ends with its best epoch); True when it was stopped."""

        from ..metrics import iqa_metrics
        from .features import FeatureLayout
        from .heads_fit import epoch_batches, head_parameters

        c = self.cfg
        params = head_parameters(model)
        start_params = [p.detach().clone() for p in params]  # the pull goes towards these
        opt = self._optimizer(model)
        self._opt = opt
        layout = FeatureLayout.of(model)
        patience = c.patience_for(self.epochs)
        has_holdout = len(hold_pack) > 0
        start_epoch, start_batch, sums0 = 0, 0, [0.0] * 4
        if resume_state is not None:
            from .weight_blend import with_delta

            model.load_state_dict(with_delta(self._base, resume_state["model"]))
            opt.load_state_dict(resume_state["optim"])
            start_epoch, start_batch = int(resume_state["epoch"]), int(resume_state["batch"])
            sums0 = list(resume_state["sums"])
            self.best = [
                resume_state["best_key"],
                resume_state["best_epoch"],
                json.loads(resume_state["best_val"]),
            ]
            self.history = json.loads(resume_state["history"])
            best_file = self.out / "best.safetensors"
            if self.best[1] is not None and best_file.exists():
                self.best_path = best_file  # a second stop publishes it again
            if "best_state" in resume_state:  # (a blending run: best.safetensors is the blend)
                self._best_state = with_delta(self._base, resume_state["best_state"])
            elif self.best_path is not None:
                from ..weights import load_checkpoint

                self._best_state = load_checkpoint(best_file).state_dict()
        n_batches = len(epoch_batches(len(train_pack), c.batch_size, c.seed, 0))
        self.emit(
            Started(
                epochs=self.epochs,
                batches_per_epoch=n_batches,
                n_train=len(train_pack),
                n_val=len(hold_pack),
                start_epoch=start_epoch,
                device=str(self.device),
                start_batch=start_batch,
                resumed_from=self.resumed_from,
            )
        )
        stale = 0
        if self.history and self.best[1] is not None:
            stale = len(self.history) - 1 - int(self.best[1])
        for epoch in range(start_epoch, self.epochs):
            if has_holdout and self.best[1] is not None and stale >= patience:
                break
            t_ep = time.time()
            batches = epoch_batches(len(train_pack), c.batch_size, c.seed, epoch)
            b0 = start_batch if epoch == start_epoch else 0
            sums = list(sums0) if epoch == start_epoch else [0.0] * 4
            model.train()
            model.backbone.eval()
            for bi in range(b0, len(batches)):
                if self._interrupted(epoch, bi):
                    self._save_state(model, opt, epoch, bi, sums)
                    return True
                t_b = time.perf_counter()
                rng = np.random.default_rng((int(c.seed), 7, epoch, bi))
                loss, parts = self._step(
                    model, opt, train_pack, batches[bi], rng, start_params, layout
                )
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise TrainingError(
                        f"The loss became {lv} at epoch {epoch}, batch {bi}.",
                        "Lower the learning rates (lr, and head_lr when the backbone head is adapted).",
                    )
                nb = len(batches[bi])
                sums[0] += lv * nb
                sums[1] += parts["reg"] * nb
                sums[2] += parts["ce"] * nb
                sums[3] += nb
                dt = time.perf_counter() - t_b
                self.emit(
                    BatchEnd(
                        epoch,
                        bi,
                        len(batches),
                        lv,
                        parts["reg"],
                        parts["ce"],
                        images_per_s=nb / max(dt, 1e-9),
                        step_s=dt,
                    )
                )
            model.eval()
            val = (
                iqa_metrics(
                    self._held_out_scores(model, hold_pack),
                    hold_pack.targets.numpy(),
                    logistic=False,
                )
                if has_holdout
                else {}
            )
            key = val.get("srcc", math.nan)
            key = key if math.isfinite(key) else -math.inf
            # without a held-out part there is nothing to select on: the last epoch is kept
            is_best = (not has_holdout) or self.best[0] is None or key > self.best[0]
            if is_best:
                self.best = [key if has_holdout else None, epoch, dict(val)]
                self._best_state = copy.deepcopy(model.state_dict())
                self._best_dirty = True
                stale = 0
            else:
                stale += 1
            rec = {
                "epoch": epoch,
                "train_loss": sums[0] / max(sums[3], 1),
                "train_reg": sums[1] / max(sums[3], 1),
                "train_ce": sums[2] / max(sums[3], 1),
                **{f"val_{k}": v for k, v in val.items()},
                "seconds": time.time() - t_ep,
                "is_best": is_best,
            }
            self.history.append(rec)
            self.emit(
                EpochEnd(
                    epoch=epoch,
                    epochs=self.epochs,
                    w_reg=c.reg_weight,
                    w_cls=c.cls_weight,
                    train_loss=rec["train_loss"],
                    train_l1=rec["train_reg"],
                    train_ce=rec["train_ce"],
                    val=val,
                    lr=c.lr,
                    seconds=rec["seconds"],
                    is_best=is_best,
                )
            )
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
            if has_holdout:  # the full metrics (with the logistic PLCC) of the selected epoch
                self.best[2] = iqa_metrics(
                    self._held_out_scores(model, hold_pack), hold_pack.targets.numpy()
                )
        return False

    # ------------------------------------------------------------------ the blend
    @property
    def blend(self) -> float:
        """The share of the fine-tuned step kept (``FinetuneConfig.blend_for``)."""
        return self.cfg.blend_for(new_heads=self.cfg.backbone is not None)

    @property
    def _blending(self) -> bool:
        return self.blend != 1.0

    def _blend_into(self, model, base: dict) -> None:
        """Load ``base + blend * (model - base)`` into ``model`` (nothing to do at blend 1); only
        the trained weights (the heads' and the backbone head's) are computed."""
        if self._blending:
            from .head_maps import adapted_parameters
            from .heads_fit import head_parameters
            from .weight_blend import blend_state

            # what the optimiser trains (``_optimizer``)
            params = head_parameters(model) + (adapted_parameters(model) if self.adapt else [])
            ids = {id(p) for p in params}
            trained = {n for n, p in model.named_parameters() if id(p) in ids}
            state = blend_state(base, model.state_dict(), self.blend, keys=trained)
            model.load_state_dict(state)

    def _held_out_scores(self, model, pack):
        """Image scores of ``pack`` by the model that would be saved now: the blend of the
        calibrated start and ``model`` (``model`` itself at blend 1)."""
        from .heads_fit import image_scores

        if not self._blending:
            return image_scores(model, pack)
        if self._eval_model is None:
            self._eval_model = copy.deepcopy(model)
        self._eval_model.load_state_dict(model.state_dict())
        self._blend_into(self._eval_model, self._base)
        self._eval_model.eval()
        return image_scores(self._eval_model, pack)

    def _optimizer(self, model):
        """Adam on the heads (``lr``) and, when adapting, on the backbone head (``head_lr``)."""
        import torch

        from .head_maps import adapted_parameters
        from .heads_fit import head_parameters

        groups = [{"params": head_parameters(model), "lr": self.cfg.lr}]
        if self.adapt:
            groups.append({"params": adapted_parameters(model), "lr": self.cfg.head_lr})
        return torch.optim.Adam(groups)

    def _step(self, model, opt, pack, batch, rng, start_params, layout):
        """One optimiser step of the heads on ``batch`` of ``pack`` (the selection run and the
        refit share it); returns ``(loss, parts)`` of :func:`heads_fit.batch_loss`."""
        from .heads_fit import batch_loss

        c = self.cfg
        loss, parts = batch_loss(
            model,
            pack,
            batch,
            rng,
            windows=c.windows_per_step,
            reg_weight=c.reg_weight,
            rank_weight=c.rank_weight,
            rank_margin=c.rank_margin,
            cls_weight=c.cls_weight,
            anchor=c.anchor,
            start_params=start_params,
            layout=layout,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, parts

    def _refit(self, model, pack, epochs: int) -> bool:

        from .features import FeatureLayout
        from .heads_fit import epoch_batches, head_parameters

        c = self.cfg
        params = head_parameters(model)
        start_params = [p.detach().clone() for p in params]
        opt = self._optimizer(model)
        layout = FeatureLayout.of(model)
        plan = [epoch_batches(len(pack), c.batch_size, c.seed, e, phase=1) for e in range(epochs)]
        total = sum(len(b) for b in plan)
        done = 0
        model.train()
        model.backbone.eval()
        self.emit(Refitting(0, total, epochs, len(pack)))
        for epoch, batches in enumerate(plan):
            for bi, b in enumerate(batches):
                if self._interrupted(epoch, bi):
                    model.eval()
                    return False
                rng = np.random.default_rng((int(c.seed), 8, epoch, bi))
                self._step(model, opt, pack, b, rng, start_params, layout)
                done += 1
                self.emit(Refitting(done, total, epochs, len(pack)))
        model.eval()
        return True

    # ------------------------------------------------------------------ endings
    def _stopped_before_training(self) -> FinetuneResult:
        self.emit(Stopped(0, 0, "", ""))
        return self._result(True, False, None)

    def _stop_result(self) -> FinetuneResult:
        """After a stop: the best epoch so far goes to ``best.safetensors`` (if not there yet)."""
        if self._best_state is not None and self._best_dirty:
            model = copy.deepcopy(self.start_model)
            model.load_state_dict(self._best_state)
            self._blend_into(model, self._base)
            self._save_best(model, self.best[2], len(self.history), False, int(self.best[1]))
            self._best_dirty = False
        self.emit(
            Stopped(
                len(self.history),
                0,
                str(self.best_path) if self.best_path else "",
                str(self.state_path) if self.state_path.exists() else "",
            )
        )
        return self._result(True, False, None)

    def _result(self, stopped: bool, refit: bool, report: Path | None) -> FinetuneResult:
        bp = self.out / "best.safetensors"
        return FinetuneResult(
            best_path=str(bp) if bp.exists() and self.best_path else None,
            state_path=str(self.state_path) if self.state_path.exists() else None,
            report_path=str(report) if report else None,
            out_dir=str(self.out),
            start_val=dict(self.start_val),
            best_val=dict(self.best[2] or {}),
            improved=self._improved(),
            history=list(self.history),
            stopped=stopped,
            epochs_done=len(self.history),
            best_epoch=self.best[1],
            refit=refit,
            n_train=len(self.train_idx),
            n_holdout=len(self.hold_idx),
            skipped=list(self.skipped),
            seconds=time.time() - self.t0,
            feature_seconds=getattr(self, "feature_seconds", 0.0),
        )


def _rows_of(pack, cap: int | None = None, seed: int = 0) -> tuple[list, list]:
    """The per-image feature blocks of a pack and their defect levels (``None`` each where the
    pack holds none), at most ``cap`` windows each, a seeded choice."""
    import torch

    feats, levels = [], []
    for i in range(len(pack)):
        f, lv = pack.image_rows(i)
        if cap is not None and f.shape[0] > cap:
            pick = np.sort(np.random.default_rng((int(seed), 99, i)).choice(f.shape[0], cap, False))
            f = f[torch.from_numpy(pick)]
            lv = lv[torch.from_numpy(pick)] if lv is not None else None
        feats.append(f)
        levels.append(lv)
    return feats, levels


class _cpu_threads:
    """Set torch's CPU thread count for a block (``None``: leave it), then restore it."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.old: int | None = None

    def __enter__(self):
        import torch

        if self.n is not None and int(self.n) >= 1:
            self.old = torch.get_num_threads()
            torch.set_num_threads(int(self.n))
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.old is not None:
            torch.set_num_threads(self.old)
