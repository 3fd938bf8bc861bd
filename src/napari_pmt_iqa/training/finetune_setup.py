"""Setting up a few-shot fine-tuning run (part of :class:`~.finetune_run._Run`): the checks of
its settings, the rated images and their held-out part, the starting model, and the backbone's
features of every image, computed once.
"""

from __future__ import annotations

import warnings

from .errors import TrainingError
from .events import DataIssue, Paused, Preparing, Resumed
from .finetune_config import holdout_split, is_ratings_csv, ratings_scale


class RunSetup:
    """The checks, the data, the starting model and the feature cache of a fine-tuning run."""

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        from ..devices import PRECISIONS
        from . import checks

        c = self.cfg
        for name in ("batch_size", "windows_per_image", "windows_per_step", "holdout_windows"):
            checks.whole_number(name, getattr(c, name))
        if c.max_refit_steps is not None:  # None: no limit
            checks.whole_number("max_refit_steps (None: no limit)", c.max_refit_steps)
        checks.whole_number("epochs", c.epochs, optional=True)
        checks.fraction("holdout_fraction", c.holdout_fraction)
        if c.blend is not None:  # None: the recipe's
            checks.fraction("blend (the share of the fine-tuned step kept)", c.blend, closed=True)
        checks.positive("lr (the learning rate)", c.lr)
        checks.positive("head_lr (the learning rate of the backbone head)", c.head_lr)
        for name in ("reg_weight", "rank_weight", "rank_margin", "cls_weight", "anchor"):
            checks.non_negative(name, getattr(c, name))
        checks.one_of("precision", c.precision, PRECISIONS)
        if c.head_threads not in (None, "auto"):
            checks.whole_number("head_threads", c.head_threads)
        if c.init is not None and c.backbone is not None:
            raise TrainingError(
                "Give either init (a model to fine-tune) or backbone (an ImageNet backbone with "
                "new heads), not both."
            )

    # ------------------------------------------------------------------ data
    def _dataset(self):
        from .config import TrainConfig
        from .prepare import resolve_dataset

        c = self.cfg
        init_scale = getattr(self.start_model, "score_scale", None) if c.backbone is None else None
        scale = c.score_scale
        if scale is None and is_ratings_csv(c.data):
            scale = ratings_scale()
        return resolve_dataset(
            TrainConfig(
                data=c.data, layout=c.layout, score_scale=scale, seed=c.seed, limit=c.limit
            ),
            init_scale,
        )

    def _prepare(self) -> None:
        from .data import ImageStore

        c = self.cfg
        ds = self._dataset()
        usable = [s for s in ds.samples if s.split != "test"]
        n_test = len(ds.samples) - len(usable)
        store = ImageStore(usable, min_side=self.crop, budget_mb=c.cache_mb)
        bad = store.check(threads=2, progress=lambda a, b: self.emit(Preparing(a, b)))
        skipped = list(getattr(ds, "skipped", []) or []) + [r for _, r in bad]
        n_all = len(usable) + len(getattr(ds, "skipped", []) or [])
        from .prepare import report_unusable

        report_unusable(skipped, n_all, c.max_bad_fraction, self.emit)
        bad_idx = {i for i, _ in bad}
        good = [i for i in range(len(usable)) if i not in bad_idx]
        if len(good) < c.min_ratings:
            why = f" ({n_test} rows are split=test and never used)" if n_test else ""
            raise TrainingError(
                f"{len(good)} usable rated images{why}: the few-shot recipe needs at least "
                f"{c.min_ratings}, so that the held-out part can say whether the fine-tune helped.",
                f"Rate at least {c.min_ratings} images (about 100 give a clear gain), with scores "
                "that use the whole range.",
            )
        mos = [usable[i].mos for i in good]
        if len(set(mos)) < 2:
            raise TrainingError(
                f"All {len(mos)} ratings are equal ({mos[0]:g}): nothing can be learnt from them.",
                "Rate better and worse images with different scores.",
            )
        samples = [usable[i] for i in good]
        marked = [k for k, s in enumerate(samples) if s.split in ("val", "valid", "validation")]
        if marked:
            hold = marked
        else:
            hold = holdout_split(samples, c.holdout_fraction, c.min_holdout, c.seed)
        hold_set = set(hold)
        self.train_idx = [good[k] for k in range(len(samples)) if k not in hold_set]
        self.hold_idx = [good[k] for k in hold]
        self.ds, self.store, self.samples = ds, store, usable
        self.scale = ds.scale
        self.skipped = skipped
        if len(self.train_idx) < 2:
            raise TrainingError(
                f"Only {len(self.train_idx)} images are left to train on after the held-out part.",
                "Rate more images, or lower holdout_fraction.",
            )

    # ------------------------------------------------------------------ model
    def _start_model(self):
        import torch

        from ..model import PMTIQA
        from ..weights import load_model

        c = self.cfg
        torch.manual_seed(int(c.seed))
        if c.backbone is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = PMTIQA(backbone=c.backbone, pretrained=True)
            for w in caught:
                self.emit(DataIssue(str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            self.init_desc = f"ImageNet {c.backbone} with new heads"
        else:
            model = load_model(c.init, device="cpu")
            self.init_desc = str(c.init) if c.init is not None else "the default model"
            if not c.defect_score:
                # the fine-tuned heads learn the user's ratings as they are: no defect-aware
                # penalty on top of them (the defect maps stay)
                from .defects import drop_defect_weights

                drop_defect_weights(model)
        return model.float().eval()

    def _adapting(self, model) -> bool:
        """Whether this run adapts the backbone head (see ``FinetuneConfig.adapt_head``)."""
        from .head_maps import supports_head_adaptation

        want = self.cfg.adapt_head
        able = supports_head_adaptation(model)
        if want and not able:
            why = (
                "the model has no multi-scale taps (the single-scale ablation)"
                if not model.config.multiscale
                else f"the {model.config.backbone} backbone has no pointwise head to adapt "
                "(EfficientNet-Lite backbones have one)"
            )
            raise TrainingError(
                f"adapt_head=True, but {why}.",
                "Leave adapt_head at None (adapt where possible) or set it to False.",
            )
        return able if want is None else bool(want)

    def _features(self, model, idx: list[int], cap: int, done0: int, total: int, whole: int):
        """Cached rows (and head maps when adapting: one whole map for images of up to ``whole``
        windows) of images ``idx``; ``None`` if stopped."""
        from .features import window_features
        from .head_maps import window_blocks

        rows, maps, levels = [], [], []
        # the defect levels of the windows, for a model whose score is defect-aware
        fuse = bool(model.fuses_defects)
        for k, i in enumerate(idx):
            if self._interrupted(0, k):
                return None
            kw = dict(
                max_windows=cap,
                seed=(int(self.cfg.seed) * 1_000_003 + i) % 2**32,
                memory_mb=self.cfg.memory_mb,
                precision=self.cfg.precision,
                levels=fuse,
            )
            # (the levels come as a last value only when asked for)
            if self.adapt:
                f, m, _, *lv = window_blocks(model, self.store.get(i), whole_up_to=whole, **kw)
                maps.append(m)
            else:
                f, _, *lv = window_features(model, self.store.get(i), **kw)
            lv = lv[0] if lv else None
            rows.append(f)
            levels.append(lv)
            self.emit(Preparing(done0 + k + 1, total, "features"))
        return rows, (maps if self.adapt else None), (levels if fuse else None)

    def _interrupted(self, epoch: int = 0, batch: int = 0) -> bool:
        """Wait while paused (announced by ``Paused`` and ``Resumed``, so that a controller can
        offer Resume); True when a stop was asked for. ``epoch`` and ``batch`` say where."""
        if self.control.paused and not self.control.stop_requested:
            self.emit(Paused(epoch, batch))
            self.control.wait_if_paused()
            self.emit(Resumed(epoch, batch))
        return self.control.stop_requested
