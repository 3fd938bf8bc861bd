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
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .config import TrainConfig, TrainResult
from .distributed import _Dist, _setup_distributed, use_sync_batchnorm
from .errors import TrainingError, explain, is_oom
from .evaluation import predict_images
from .events import (
    BatchEnd,
    CheckpointSaved,
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
from .state import _set_rng_state, load_state, save_state

#: The running sums of an epoch (kept in ``state.pt`` for an exact resume mid-epoch).
SUMS = ("loss", "l1", "ce", "images", "rank", "rank_acc", "pairs")


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


class _Run:
    """One training run (the state of :func:`train`)."""

    def __init__(
        self, config: TrainConfig, emit: Emitter, control: Control, d: _Dist, device
    ) -> None:
        self.cfg = config
        self.emit = emit
        self.control = control
        self.d = d
        self.device = device
        self.best_path: Path | None = None

    # ------------------------------------------------------------------ setup
    def _validate(self) -> None:
        from ..devices import PRECISIONS
        from . import checks

        c = self.cfg
        for name in ("epochs", "batch_size", "crops_per_image"):
            checks.whole_number(name, getattr(c, name))
        checks.whole_number("max_batches", c.max_batches, optional=True)
        checks.positive("lr (the learning rate)", c.lr)
        checks.positive("head_lr (the heads' learning rate)", c.head_lr, optional=True)
        checks.fraction("val_fraction", c.val_fraction)
        checks.one_of("precision", c.precision, PRECISIONS)
        checks.one_of("lr_schedule", c.lr_schedule, ("step", "cosine"))
        if c.precision == "fp16" and self.device.type != "cuda":
            raise TrainingError(
                "precision 'fp16' needs a CUDA GPU.", "Use --precision bf16 on a CPU."
            )
        if c.batch_size % self.d.world:
            raise TrainingError(
                f"batch_size ({c.batch_size}) is the number of images per step over all "
                f"{self.d.world} processes and must be a multiple of it."
            )
        if c.synthetic is not None and int(c.synthetic_pairs) % self.d.world:
            raise TrainingError(
                f"synthetic_pairs ({c.synthetic_pairs}) is the number of pairs per step over all "
                f"{self.d.world} processes and must be a multiple of it."
            )

    def _init_scale(self):
        if self.cfg.init is None:
            return None
        from ..score_scale import ScoreScale
        from ..weights import read_metadata, resolve_weights

        meta = read_metadata(resolve_weights(self.cfg.init))
        return ScoreScale.from_dict(meta["score_scale"])

    def _build_model(self):
        from ..model import PMTIQA
        from ..weights import load_model

        c = self.cfg
        if c.init is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = PMTIQA(
                    backbone=c.backbone, pretrained=c.pretrained, multiscale=c.multiscale
                )
            for w in caught:
                self.emit(DataIssue(str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            model = load_model(c.init, device="cpu")
            if model.defect_head is not None and not c.freeze_backbone:
                from .defects import drop_defect_head

                drop_defect_head(model)
                self.emit(
                    DataIssue(
                        "The starting model's defect head (its defect maps) is left out of this "
                        "run: it reads the backbone's first stages, which this run trains. Fit a "
                        "new one on the result with 'pmt-iqa defects --model RESULT --photos "
                        "CLEAN_PHOTOS/ --out NEW.safetensors', or train with freeze_backbone to "
                        "keep it."
                    )
                )
            else:
                # the heads learn the ratings as they are: no defect-aware penalty on top of
                # them (the few-shot fine-tune can keep it: it trains through it); the defect
                # head and its maps stay
                from .defects import drop_defect_weights

                drop_defect_weights(model)
        return model

    def _prepare_data(self):
        from .prepare import prepare_training_data

        data = prepare_training_data(self.cfg, self._init_scale(), self.emit)
        self.data = data
        self.ds = data.sources[0].ds
        self.scale = data.scale
        self.store, self.samples = data.store, data.samples
        self.train_idx, self.val_idx = data.train_idx, data.val_idx
        self.skipped = data.skipped

    def _make_optimizer(self, model):
        import torch

        c = self.cfg
        head_lr = c.head_lr if c.head_lr is not None else 10 * c.lr
        heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        groups = []
        if c.freeze_backbone:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        else:
            groups.append(
                {"params": list(model.backbone.parameters()), "lr": c.lr, "base_lr": c.lr}
            )
        groups.append({"params": heads, "lr": head_lr, "base_lr": head_lr})
        return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)

    def _schedule(self, epoch: int) -> tuple[float, float]:
        from ..model.losses import constant_weights, progressive_weights

        if self.cfg.progressive:
            return progressive_weights(epoch, self.cfg.epochs)
        return constant_weights(*self.cfg.loss_weights)(epoch, self.cfg.epochs)

    def _lr_factor(self, epoch: int) -> float:
        c = self.cfg
        if c.lr_schedule == "cosine":
            t = epoch / max(c.epochs - 1, 1)
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))
        step = int(c.lr_step or 0)
        # the authors set lr / 10 ** (t // 6) at the END of epoch t: epoch e runs at
        # lr / 10 ** ((e - 1) // 6), so the first decay comes at epoch step + 1
        return 0.1 ** (max(epoch - 1, 0) // step) if step > 0 else 1.0

    # ------------------------------------------------------------------ files
    def _metadata(self, model, epoch: int, val: dict) -> dict:
        from ..weights import build_metadata

        c = self.cfg
        described = [
            {
                "name": src.name,
                "root": str(src.ds.root) if src.ds.root else None,
                "n_train": len(src.train_idx),
                "n_val": len(src.val_idx),
                "score_scale": src.ds.scale.to_dict(),
                "repeat": src.repeat,
            }
            for src in self.data.sources
        ]
        if c.data_description is not None:  # the caller's words (e.g. which public part)
            described = c.data_description
        training = {
            "data": described[0] if len(described) == 1 else described,
            "n_skipped": len(self.skipped),
            "recipe": c.recipe(),
            **({"command": c.recipe_command} if c.recipe_command else {}),
            **({"synthetic": self.synthetic.describe()} if self.synthetic else {}),
            "epochs_done": epoch + 1,
            "schedule": "progressive" if c.progressive else f"constant {list(c.loss_weights)}",
            "world_size": self.d.world,
        }
        names = " + ".join(src.name for src in self.data.sources)
        desc = c.description or f"PMT-IQA ({model.config.backbone}) trained on {names}"
        return build_metadata(
            model,
            score_scale=self.scale,
            training=training,
            metrics={"val": val, "epoch": epoch},
            description=desc,
        )

    def _save_state(
        self, model, opt, scaler, epoch: int, batch: int, sums: list[float], best
    ) -> None:
        save_state(
            self.state_path,
            model,
            opt,
            scaler,
            epoch,
            batch,
            sums,
            best,
            self.history,
            self._fingerprint(),
        )
        self.emit(CheckpointSaved(str(self.state_path), epoch, "state"))

    def _fingerprint(self) -> dict:
        c = self.cfg
        return {
            "backbone": c.backbone if c.init is None else str(c.init),
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "batch_size": c.batch_size,
            "crops_per_image": c.crops_per_image,
            "seed": c.seed,
            "epochs": c.epochs,
            "data_repeat": [src.repeat for src in self.data.sources],
            "synthetic_photos": len(self.synthetic.train_idx) if self.synthetic else 0,
            "synthetic_pairs": int(c.synthetic_pairs) if self.synthetic else 0,
        }

    def _load_state(self, path: Path) -> dict:
        st, path = load_state(path, self._fingerprint())
        self.resumed_from = str(path)
        return st

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        import torch

        from ..devices import autocast
        from ..model.losses import PMTLoss
        from .data import CropDataset, plan_batches, rank_share
        from .synthetic import SyntheticTask, ranking_loss

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
            st = self._load_state(Path(c.resume).expanduser())
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optim"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            start_epoch, start_batch = int(st["epoch"]), int(st["batch"])
            sums0 = list(st["sums"]) + [0.0] * (len(SUMS) - len(st["sums"]))
            best = [st["best_key"], st["best_epoch"], json.loads(st["best_val"])]
            self.history = json.loads(st["history"])
            _set_rng_state(st["rng"])
            if self.d.main and best[1] is not None and (out / "best.safetensors").exists():
                self.best_path = out / "best.safetensors"

        net = model
        if self.d.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if use_sync_batchnorm(c, self.d.world, self.device.type):
                # converts the BatchNorm children in place: `model` (saved, evaluated) shares them
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

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
        last_path = out / "last.safetensors"
        epoch = start_epoch
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
            bi = b0
            for bi, (x, y) in enumerate(loader, start=b0):
                pair = next(pairs, None)
                data_s = time.perf_counter() - t_mark
                if self.control.paused and not self.control.stop_requested:
                    self.emit(Paused(epoch, bi))
                    self.control.wait_if_paused()
                    self.emit(Resumed(epoch, bi))
                if self._should_stop():
                    return self._stop(model, opt, scaler, epoch, bi, sums, best, t_start)
                x = x.to(self.device, non_blocking=True).flatten(0, 1)
                n_h = x.shape[0]
                if pair is not None:  # the two versions of every pair after the human-scored crops
                    xp, steps = pair
                    xp = xp.to(self.device, non_blocking=True)
                    x = torch.cat([x, xp[:, 0], xp[:, 1]])
                x = model.normalize(x.float().div_(255.0))
                y = y.to(self.device).float().repeat_interleave(K)
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
            if syn:
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
                from ..weights import save_checkpoint

                meta = self._metadata(model, epoch, val)
                save_checkpoint(last_path, model, meta)
                self.emit(
                    CheckpointSaved(str(last_path), epoch, "last", val.get("srcc", float("nan")))
                )
                if is_best:
                    self.best_path = out / "best.safetensors"
                    save_checkpoint(self.best_path, model, meta)
                    self.emit(
                        CheckpointSaved(
                            str(self.best_path), epoch, "best", val.get("srcc", float("nan"))
                        )
                    )
                self._save_state(model, opt, scaler, epoch + 1, 0, [0.0] * len(SUMS), best)
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

    # ------------------------------------------------------------------ pieces
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
