"""The PMT-IQA trainer: a plain PyTorch loop with the paper's recipe as its default.

Recipe (defaults of :class:`TrainConfig`)
-----------------------------------------
* Adam, ``lr`` 1e-4 for the backbone and ``head_lr`` (10 x ``lr``) for the new layers, weight
  decay 5e-4; step decay: both divided by 10 every ``lr_step`` (6) epochs, as the authors do.
* The progressive multi-task (PMT) schedule: ``w_reg = t/(E-1)``, ``w_cls = 1 - w_reg`` at epoch
  ``t`` of ``E``; ``progressive=False`` uses constant weights ``loss_weights`` instead.
* ``batch_size`` images per optimiser step (global: the same with any number of processes), each
  giving ``crops_per_image`` random 224 crops with random horizontal flips.
* Validation on a part carved out of the training data (``val_fraction``, by content where a data
  set has it), scored with the deterministic crop grid of :func:`napari_pmt_iqa.scoring.score`;
  SRCC, PLCC and KRCC each epoch. ``best.safetensors`` is the epoch with the best validation SRCC
  (never a test split). Without a validation part (fewer than 3 images), the last epoch is kept.

Files written to ``out_dir`` (atomically, rank 0 only): ``best.safetensors``, ``last.safetensors``
(the checkpoint format of :mod:`napari_pmt_iqa.weights`) and ``state.pt`` (model, optimiser, scaler,
epoch, batch within the epoch, running sums, RNG states; loadable with ``weights_only=True``).

Stop, pause, resume: ``control.request_stop()`` ends training before the next batch and writes
``state.pt`` at that point; ``TrainConfig(resume=".../state.pt")`` continues exactly there (the
crops and order of an epoch depend only on the seed and the epoch, so a resumed run gives the same
weights as an uninterrupted one).

Multi-process (``torchrun``): with ``WORLD_SIZE > 1`` in the environment the same :func:`train`
uses DistributedDataParallel (NCCL on GPUs, gloo on CPUs); each process trains on its contiguous
part of every global batch and scores its share of the validation images; metrics are gathered.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .config import TrainConfig, TrainResult
from .distributed import _Dist, _setup_distributed, use_sync_batchnorm
from .errors import TrainingError, explain, is_oom
from .evaluation import predict_images
from .events import (
    BatchEnd,
    Control,
    DataIssue,
    Emitter,
    EpochEnd,
    Event,
    Failed,
    Finished,
    Paused,
    Resumed,
    Started,
    Stopped,
)
from .state import _set_rng_state
from .trainer_files import SUMS, TrainFiles
from .trainer_setup import TrainSetup


# --------------------------------------------------------------------------- the loop
def train(
    config: TrainConfig,
    listeners: Iterable[Callable[[Event], None]] = (),
    control: Control | None = None,
) -> TrainResult:
    """Train (or fine-tune) a PMT-IQA model; see the module docstring for the recipe.

    Parameters
    ----------
    config
        The settings (:class:`TrainConfig`).
    listeners
        Callables that receive every :mod:`~napari_pmt_iqa.training.events` event (on rank 0).
    control
        A :class:`~napari_pmt_iqa.training.events.Control` to stop or pause the run from another
        thread.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Bad data or settings, a device error or an out-of-memory error, with a message saying
        what to change (after a :class:`~napari_pmt_iqa.training.events.Failed` event).
    """
    d = None
    emit = Emitter(listeners)
    runner = None
    try:
        d, device = _setup_distributed(config.device)
        emit.enabled = d.main
        runner = _Run(config, emit, control or Control(), d, device)
        return runner.run()
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        msg, hint = explain(exc, config)
        best = str(runner.best_path) if runner is not None and runner.best_path else ""
        emit(Failed(msg, hint, best))
        if is_oom(exc):
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:
                pass
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(msg, hint) from exc
    finally:
        if d is not None and d.owns_group:
            from .distributed import close_process_group

            close_process_group()


class _Run(TrainSetup, TrainFiles):
    """One training run (the state of :func:`train`): the loop (its setup in
    :mod:`.trainer_setup`, its files in :mod:`.trainer_files`)."""

    def __init__(
        self, config: TrainConfig, emit: Emitter, control: Control, d: _Dist, device
    ) -> None:
        self.cfg = config
        self.emit = emit
        self.control = control
        self.d = d
        self.device = device
        self.best_path: Path | None = None

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        import torch

        from ..model.losses import PMTLoss
        from .data import CropDataset, plan_batches, rank_share
        from .synthetic import SyntheticTask

        c = self.cfg
        t_start = time.time()
        self._validate()
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % 2**32)  # noqa: NPY002
        random.seed(c.seed)
        from .checks import output_folder

        out = output_folder(c.out_dir, "run")
        if self.d.main:
            out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.state_path = out / "state.pt"
        self.resumed_from = ""
        self._prepare_data()
        self.synthetic = None
        model = self._build_model()
        if c.synthetic is not None:
            self.synthetic = SyntheticTask(c, self.data, model.config.crop_size, self.emit)
        model.score_scale = self.scale
        model.to(self.device)
        opt = self._make_optimizer(model)
        use_scaler = c.precision == "fp16" and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
        loss_fn = PMTLoss(model.config.num_classes)

        self.history: list[dict] = []
        best: list = [None, None, {}]  # key, epoch, val dict
        start_epoch, start_batch, sums0 = 0, 0, [0.0] * len(SUMS)
        if c.resume:
            start_epoch, start_batch, sums0, best = self._resume(model, opt, scaler)
        model, net = self._wrap(model)

        crop = model.config.crop_size
        n_batches = self.data.epoch_size() // c.batch_size
        if c.max_batches:
            n_batches = min(n_batches, c.max_batches)
        self.emit(
            Started(
                epochs=c.epochs,
                batches_per_epoch=n_batches,
                n_train=len(self.train_idx),
                n_val=len(self.val_idx),
                start_epoch=start_epoch,
                device=str(self.device),
                start_batch=start_batch,
                world_size=self.d.world,
                resumed_from=self.resumed_from,
            )
        )
        K = c.crops_per_image
        syn = self.synthetic
        for epoch in range(start_epoch, c.epochs):
            t_epoch = time.time()
            w_reg, w_cls = self._schedule(epoch)
            loss_fn.set_weights(w_reg, w_cls)
            w_syn = syn.weight(epoch, c.epochs) if syn else 0.0
            factor = self._lr_factor(epoch)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            plan = self.data.epoch_plan(c.seed, epoch)
            dataset = CropDataset(
                self.store,
                plan,
                self.data.targets[plan],
                crop_size=crop,
                crops_per_image=K,
                flip=c.flip,
                seed=c.seed,
            )
            dataset.set_epoch(epoch)
            batches = plan_batches(len(plan), c.batch_size)  # the plan is shuffled already
            mine = [rank_share(b, self.d.rank, self.d.world) for b in batches[:n_batches]]
            b0 = start_batch if epoch == start_epoch else 0
            sums = list(sums0) if epoch == start_epoch else [0.0] * len(SUMS)
            loader = self._loader(dataset, mine[b0:], epoch)
            pairs = iter(())
            if syn:
                pair_batches = syn.batches(n_batches, self.d.rank, self.d.world)
                pairs = iter(self._loader(syn.dataset(n_batches, epoch), pair_batches[b0:], epoch))
            net.train()
            if c.freeze_backbone:
                model.backbone.eval()
            t_mark = time.perf_counter()
            for bi, (x, y) in enumerate(loader, start=b0):
                pair = next(pairs, None)
                data_s = time.perf_counter() - t_mark
                if self.control.paused and not self.control.stop_requested:
                    self.emit(Paused(epoch, bi))
                    self.control.wait_if_paused()
                    self.emit(Resumed(epoch, bi))
                if self._should_stop():
                    return self._stop(model, opt, scaler, epoch, bi, sums, best, t_start)
                lv, l1v, cev, rank_v, acc_v, n_p = self._step(
                    net, model, loss_fn, opt, scaler, x, y, pair, w_syn, epoch, bi
                )
                nb_img = len(mine[bi])
                sums[0] += lv * nb_img
                sums[1] += l1v * nb_img
                sums[2] += cev * nb_img
                sums[3] += nb_img
                if pair is not None:
                    sums[4] += rank_v * n_p
                    sums[5] += acc_v * n_p
                    sums[6] += n_p
                step_s = time.perf_counter() - t_mark - data_s
                self.emit(
                    BatchEnd(
                        epoch,
                        bi,
                        n_batches,
                        lv,
                        l1v,
                        cev,
                        images_per_s=nb_img * self.d.world / max(data_s + step_s, 1e-9),
                        data_s=data_s,
                        step_s=step_s,
                        rank=rank_v,
                        rank_acc=acc_v,
                    )
                )
                t_mark = time.perf_counter()
            if self._should_stop():  # a stop during the last batch
                return self._stop(model, opt, scaler, epoch, n_batches, sums, best, t_start)
            best = self._end_epoch(model, opt, scaler, epoch, t_epoch, sums, best, w_syn)
        best_path = str(out / "best.safetensors") if (out / "best.safetensors").exists() else None
        self.emit(
            Finished(
                best_path=best_path or "",
                best_val_srcc=float(best[2].get("srcc", float("nan"))) if best[2] else float("nan"),
                epochs_done=len(self.history),
                seconds=time.time() - t_start,
            )
        )
        return self._result(False, best)

    # ------------------------------------------------------------------ pieces of the run
    def _resume(self, model, opt, scaler) -> tuple[int, int, list[float], list]:
        """Load ``state.pt`` into the model, optimiser and scaler: where to go on, and the best
        epoch so far."""
        st = self._load_state(Path(self.cfg.resume).expanduser())
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        sums0 = list(st["sums"]) + [0.0] * (len(SUMS) - len(st["sums"]))
        best = [st["best_key"], st["best_epoch"], json.loads(st["best_val"])]
        self.history = json.loads(st["history"])
        _set_rng_state(st["rng"])
        if self.d.main and best[1] is not None and (self.out / "best.safetensors").exists():
            self.best_path = self.out / "best.safetensors"
        return int(st["epoch"]), int(st["batch"]), sums0, best

    def _wrap(self, model):
        """``(model, net)``: the model (saved, evaluated) and what the steps run (its DDP
        wrapper in a multi-process run, the model itself otherwise)."""
        if not self.d.active:
            return model, model
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP

        if use_sync_batchnorm(self.cfg, self.d.world, self.device.type):
            # converts the BatchNorm children in place: `model` (saved, evaluated) shares them
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return model, DDP(model, device_ids=ids)

    def _step(self, net, model, loss_fn, opt, scaler, x, y, pair, w_syn: float, epoch, bi):
        """One optimiser step on a batch of human-scored images (and ranking pairs).

        Returns
        -------
        tuple
            ``(loss, l1, ce, rank, rank_acc, n_pairs)``: the rank figures are NaN and
            ``n_pairs`` 0 without pairs.
        """
        import torch

        from ..devices import autocast
        from .synthetic import ranking_loss

        c = self.cfg
        x = x.to(self.device, non_blocking=True).flatten(0, 1)
        n_h, n_p = x.shape[0], 0
        if pair is not None:  # the two versions of every pair after the human-scored crops
            xp, steps = pair
            xp = xp.to(self.device, non_blocking=True)
            x = torch.cat([x, xp[:, 0], xp[:, 1]])
        x = model.normalize(x.float().div_(255.0))
        y = y.to(self.device).float().repeat_interleave(c.crops_per_image)
        with autocast(self.device, c.precision):
            outp = net(x)
        loss, l1, ce = loss_fn(outp.score[:n_h], outp.logits[:n_h], y)
        rank_v = acc_v = float("nan")
        if pair is not None:
            n_p = xp.shape[0]
            better = outp.score[n_h : n_h + n_p]
            worse = outp.score[n_h + n_p :]
            rank, acc_v = ranking_loss(better, worse, steps, c.synthetic_margin)
            loss = loss + w_syn * rank
            rank_v = float(rank.item())
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        lv, l1v, cev = float(loss.item()), float(l1.item()), float(ce.item())
        if not math.isfinite(lv):
            raise TrainingError(
                f"The loss became {lv} at epoch {epoch}, batch {bi}.",
                "Lower the learning rates (--lr, --head-lr) or use --precision fp32.",
            )
        return lv, l1v, cev, rank_v, acc_v, n_p

    def _end_epoch(self, model, opt, scaler, epoch: int, t_epoch: float, sums, best, w_syn):
        """Validate, record and checkpoint an epoch; the best epoch so far is returned."""
        c = self.cfg
        w_reg, w_cls = self._schedule(epoch)
        factor = self._lr_factor(epoch)
        train_s = time.time() - t_epoch
        tot = self._reduce(sums)
        val = self._validate_epoch(model)
        if len(self.val_idx) < 3:  # no usable validation part: keep the last epoch
            key, is_best = float("nan"), True
        else:
            key = val.get("select", float("nan"))
            key = key if math.isfinite(key) else -math.inf
            is_best = best[0] is None or key > best[0]
        extra = {}
        if self.synthetic:
            extra = {
                "w_syn": w_syn,
                "train_rank": tot[4] / max(tot[6], 1),
                "train_rank_acc": tot[5] / max(tot[6], 1),
            }
        if is_best:
            best = [key, epoch, val]
        rec = {
            "epoch": epoch,
            "w_reg": w_reg,
            "w_cls": w_cls,
            "lr": c.lr * factor,
            "train_loss": tot[0] / max(tot[3], 1),
            "train_l1": tot[1] / max(tot[3], 1),
            "train_ce": tot[2] / max(tot[3], 1),
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.time() - t_epoch,
            "train_seconds": train_s,
            "is_best": is_best,
            **extra,
        }
        self.history.append(rec)
        if self.d.main:
            self._save_epoch(model, opt, scaler, epoch, val, is_best, best)
        self.emit(
            EpochEnd(
                epoch=epoch,
                epochs=c.epochs,
                w_reg=w_reg,
                w_cls=w_cls,
                train_loss=rec["train_loss"],
                train_l1=rec["train_l1"],
                train_ce=rec["train_ce"],
                val=val,
                lr=c.lr * factor,
                seconds=rec["seconds"],
                is_best=is_best,
                extra=extra,
            )
        )
        self._barrier()
        return best

    # ------------------------------------------------------------------ helpers
    def _loader(self, dataset, batch_sampler, epoch: int):
        import torch

        c = self.cfg
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(c.seed * 100003 + epoch),
            prefetch_factor=4 if c.num_workers > 0 else None,
            persistent_workers=False,
        )

    def _should_stop(self) -> bool:
        flag = self.control.stop_requested
        if not self.d.active:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor(
            [1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _barrier(self) -> None:
        if self.d.active:
            import torch.distributed as dist

            dist.barrier()

    def _reduce(self, sums: list[float]) -> list[float]:
        if not self.d.active:
            return sums
        import torch
        import torch.distributed as dist

        t = torch.tensor(
            sums, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(t)
        return t.cpu().tolist()

    def _validate_epoch(self, model) -> dict:
        """Validation figures of an epoch: each data set's, their means, the synthetic accuracy.

        ``select`` is what picks the best epoch: the mean validation SRCC of the data sets, and
        with the synthetic objective the mean of those SRCCs and ``synthetic_acc``.
        """
        from ..metrics import iqa_metrics

        if not self.val_idx:
            return {}
        from ..scoring import ModelOutputError

        share = self.val_idx[self.d.rank :: self.d.world]
        try:
            preds = predict_images(
                model,
                self.store.get,
                share,
                device=self.device,
                precision=self.cfg.precision,
                batch_size=self.cfg.eval_batch_size,
            )
        except ModelOutputError as exc:
            # a diverged epoch: it scores NaN (never "best"); every rank still joins the gather
            preds = np.full(len(share), np.nan)
            self.emit(DataIssue(f"Validation of this epoch failed: {exc}"))
        pairs = list(zip(share, preds.tolist()))
        if self.d.active:
            import torch.distributed as dist

            gathered: list = [None] * self.d.world
            dist.all_gather_object(gathered, pairs)
            pairs = [p for part in gathered for p in part]
        got = dict(pairs)
        sets = {}
        for src in self.data.sources:
            if not src.val_idx:
                continue
            p = np.array([got[i] for i in src.val_idx])
            m = np.array([self.samples[i].mos for i in src.val_idx])
            one = iqa_metrics(p, m)
            # mean absolute error on the internal 0-100 scale (comparable between data sets)
            p_int = np.asarray(self.scale.to_internal(p), dtype=np.float64)
            one["mae"] = float(np.mean(np.abs(p_int - self.data.targets[src.val_idx])))
            sets[src.name] = one
        keys = ("srcc", "plcc", "plcc_logistic", "krcc", "mae")
        if len(sets) == 1:
            out = dict(next(iter(sets.values())))
        else:
            out = {k: float(np.mean([v[k] for v in sets.values()])) for k in keys}
            out["n"] = int(sum(v["n"] for v in sets.values()))
            out["sets"] = sets
        select = [out["srcc"]]
        if self.synthetic is not None and len(self.synthetic.validation):
            acc = self.synthetic.validation.accuracy(model, self.device, self.cfg.precision)
            out.update(acc)
            select.append(acc["synthetic_acc"])
        out["select"] = float(np.mean(select))
        return out

    def _stop(self, model, opt, scaler, epoch, batch, sums, best, t_start) -> TrainResult:
        if self.d.main:
            self._save_state(model, opt, scaler, epoch, batch, sums, best)
        self._barrier()
        self.emit(
            Stopped(
                epoch, batch, str(self.best_path) if self.best_path else "", str(self.state_path)
            )
        )
        return self._result(True, best)

    def _result(self, stopped: bool, best) -> TrainResult:
        out = self.out
        last = out / "last.safetensors"
        bp = out / "best.safetensors"
        return TrainResult(
            best_path=str(bp) if bp.exists() else None,
            last_path=str(last) if last.exists() else None,
            state_path=str(self.state_path) if self.state_path.exists() else None,
            best_val=dict(best[2] or {}),
            history=list(self.history),
            stopped=stopped,
            epochs_done=len(self.history),
            best_epoch=best[1],
            out_dir=str(out),
            n_train=len(self.train_idx),
            n_val=len(self.val_idx),
            skipped=list(self.skipped),
        )


__all__ = ["train"]
