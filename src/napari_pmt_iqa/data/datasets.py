"""IQA data sets in their official layouts, plus a generic folder-and-CSV layout.

A data set here is a plain list of :class:`Sample` (image path, score, optional split and content
id) with the :class:`~napari_pmt_iqa.score_scale.ScoreScale` of its scores. Loading images is the
job of :mod:`napari_pmt_iqa.data.crops`; this module only reads the annotations and checks them.

Layouts
-------
generic (``"csv"``)
    A folder with images and a CSV with the columns ``image,mos`` and optionally ``split``
    (``train``/``test``/``val``) and ``ref`` (also ``content`` or ``reference``: which photo an
    image is a version of; every version of one photo stays in one part of a split). ``image`` is a
    path relative to the folder (or to the CSV). A score column named ``dmos`` (differential MOS)
    is read as lower-is-better.
LIVE-C (``"livec"``)
    The official ``ChallengeDB_release`` folder: ``Data/AllImages_release.mat``,
    ``Data/AllMOS_release.mat`` and ``Images/``. The seven training images ``t1``-``t7`` are
    excluded as in the standard protocol. MOS 0-100, higher is better.
BIQ2021 (``"biq2021"``)
    The official folder with ``Images/`` and ``Train (Images and MOS).csv`` /
    ``Test (Images and MOS).csv``. MOS 0-1, higher is better. File names are matched
    case-insensitively (one name in the CSV differs in case from the file).
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..score_scale import ScoreScale

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

LIVEC_SCALE = ScoreScale(0.0, 100.0, True, "MOS (LIVE-C, 0-100)")
BIQ2021_SCALE = ScoreScale(0.0, 1.0, True, "MOS (BIQ2021, 0-1)")


class DatasetError(ValueError):
    """A data set that cannot be used, with a message that says why and what to do."""


@dataclass(frozen=True)
class Sample:
    """One rated image."""

    path: Path
    mos: float
    split: str | None = None
    content: str | None = None


@dataclass(frozen=True, eq=False)
class ArraySample:
    """One rated image held in memory (e.g. rated in napari) instead of a file.

    ``path`` is a pseudo path (``name``) that only serves as a key for splits and messages.
    """

    array: (
        object  # numpy array, any layout :func:`~napari_pmt_iqa.imaging.standardize_layout` takes
    )
    mos: float
    split: str | None = None
    content: str | None = None
    name: str = "array"

    @property
    def path(self) -> Path:
        return Path(self.name)


@dataclass
class IQADataset:
    """A list of rated images and the units of their scores."""

    name: str
    samples: list[Sample]
    scale: ScoreScale
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, samples: Iterable[Sample], suffix: str = "") -> IQADataset:
        return replace(self, samples=list(samples), name=self.name + suffix, skipped=[])

    def split(self, name: str) -> IQADataset:
        """The samples whose ``split`` column is ``name``."""
        return self.subset([s for s in self.samples if s.split == name], f"[{name}]")

    @property
    def scores(self) -> list[float]:
        return [s.mos for s in self.samples]


# --------------------------------------------------------------------------- helpers
def _case_insensitive_index(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def _check_scores(name: str, samples: Sequence[Sample]) -> None:
    if not samples:
        raise DatasetError(f"{name}: no usable images were found.")


def _resolve(root: Path, rel: str, index: dict[str, Path] | None) -> Path | None:
    p = (root / rel) if not os.path.isabs(rel) else Path(rel)
    if p.exists():
        return p
    if index is not None:
        return index.get(Path(rel).name.lower())
    return None


# --------------------------------------------------------------------------- loaders
def load_csv_dataset(
    path: str | os.PathLike,
    *,
    scale: ScoreScale | None = None,
    image_column: str | None = None,
    score_column: str | None = None,
    name: str | None = None,
) -> IQADataset:
    """Read the generic layout: a CSV of ``image,mos[,split]`` next to (or above) its images.

    Parameters
    ----------
    path
        The CSV file, or a folder holding exactly one CSV.
    scale
        The units of the scores. By default the range is the observed min-max of the scores,
        widened to 0-1, 0-5, 0-10 or 0-100 when the scores fit in one of those.
    image_column, score_column
        Column names when they are not ``image`` and ``mos`` (``score`` is also accepted).

    Raises
    ------
    DatasetError
        Missing columns, non-numeric or missing scores, no image found, a zero-width score range.
    """
    path = Path(path)
    if path.is_dir():
        csvs = sorted(path.glob("*.csv"))
        if len(csvs) != 1:
            raise DatasetError(
                f"{path} holds {len(csvs)} CSV files; name the CSV of the generic layout "
                "(columns image,mos[,split]) directly."
            )
        path = csvs[0]
    if not path.exists():
        raise DatasetError(f"{path} does not exist.")
    root = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path} is not a readable CSV file ({exc}).") from exc
    if not rows:
        raise DatasetError(
            f"{path} has no rows; it needs a header image,mos[,split] and one row per image."
        )
    cols = {c.strip().lower(): c for c in rows[0].keys() if c is not None}
    icol = image_column or next(
        (cols[c] for c in ("image", "image name", "file", "filename", "path") if c in cols), None
    )
    scol = score_column or next(
        (cols[c] for c in ("mos", "score", "dmos", "rating") if c in cols), None
    )
    if icol is None or scol is None:
        raise DatasetError(
            f"{path} must have the columns 'image' and 'mos' (found: {', '.join(cols) or 'none'})."
        )
    split_col = cols.get("split")
    ref_col = next(
        (cols[c] for c in ("ref", "reference", "content", "ref_image") if c in cols), None
    )
    dmos = scol.strip().lower() == "dmos"
    index = _case_insensitive_index(root) if root.is_dir() else None
    samples: list[Sample] = []
    bad_scores: list[str] = []
    missing: list[str] = []
    for i, row in enumerate(rows, start=2):
        rel = (row.get(icol) or "").strip()
        raw = (row.get(scol) or "").strip()
        if not rel:
            continue
        try:
            mos = float(raw)
            if not math.isfinite(mos):
                raise ValueError
        except ValueError:
            bad_scores.append(f"line {i}: {rel!r} has score {raw!r}")
            continue
        p = _resolve(root, rel, index)
        if p is None:
            missing.append(rel)
            continue
        split = (row.get(split_col) or "").strip().lower() or None if split_col else None
        content = (row.get(ref_col) or "").strip() or None if ref_col else None
        samples.append(Sample(p, mos, split, content))
    if bad_scores:
        raise DatasetError(
            f"{path}: {len(bad_scores)} rows have a missing or non-numeric score, e.g. "
            + "; ".join(bad_scores[:3])
            + ". Fix or remove them."
        )
    if missing and not samples:
        raise DatasetError(
            f"{path}: none of the {len(missing)} images exist (e.g. {missing[0]!r})."
        )
    _check_scores(str(path), samples)
    if scale is None:
        scale = infer_scale([s.mos for s in samples])
        if dmos:  # a differential score: 0 is a perfect image
            scale = ScoreScale(scale.low, scale.high, False, scale.name.replace("score", "DMOS", 1))
    ds = IQADataset(name or path.stem, samples, scale, root)
    ds.skipped = [f"{m}: file not found" for m in missing]
    return ds


def infer_scale(scores: Sequence[float]) -> ScoreScale:
    """Guess the range of a list of scores: 0-1, 0-5, 0-10, 0-100 or the observed min-max.

    Raises
    ------
    DatasetError
        No scores, or all scores equal (a zero-width range).
    """
    if len(scores) == 0:
        raise DatasetError("No scores were given; a data set needs rated images.")
    lo, hi = min(scores), max(scores)
    if hi <= lo:
        raise DatasetError(
            f"All {len(scores)} scores are equal ({lo}); a data set needs scores that differ to "
            "train or evaluate."
        )
    for top in (1.0, 5.0, 10.0, 100.0):
        if lo >= 0 and hi <= top and hi > top / 10:
            return ScoreScale(0.0, top, True, f"score (0-{top:g})")
    if hi <= lo:
        raise DatasetError(
            f"All scores are equal ({lo}); a data set needs scores that differ to train or evaluate."
        )
    return ScoreScale(lo, hi, True, f"score ({lo:g}-{hi:g})")


def load_livec(root: str | os.PathLike) -> IQADataset:
    """Read LIVE-C (LIVE In the Wild Challenge) in its official ``ChallengeDB_release`` layout."""
    from scipy.io import loadmat

    root = Path(root)
    if (root / "ChallengeDB_release").is_dir():
        root = root / "ChallengeDB_release"
    data = root / "Data"
    try:
        names = loadmat(str(data / "AllImages_release.mat"))["AllImages_release"]
        mos = loadmat(str(data / "AllMOS_release.mat"))["AllMOS_release"]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise DatasetError(
            f"{root} is not a LIVE-C folder: Data/AllImages_release.mat and Data/AllMOS_release.mat "
            f"are needed ({exc})."
        ) from exc
    names = [str(n[0][0]) for n in names]
    mos = [float(v) for v in mos.ravel()]
    if len(names) != len(mos):
        raise DatasetError(f"{root}: {len(names)} image names but {len(mos)} scores.")
    images = root / "Images"
    if not images.is_dir():
        raise DatasetError(f"{root} is not a LIVE-C folder: its Images/ folder is missing.")
    index = _case_insensitive_index(images)
    samples, missing = [], []
    for n, m in zip(names, mos):
        stem = Path(n).stem.lower()
        # the 7 training images t1..t7 (in Images/trainingImages) are not part of the protocol
        if stem.startswith("t") and stem[1:].isdigit():
            continue
        p = index.get(n.lower())
        if p is None:
            missing.append(n)
            continue
        if not math.isfinite(m):
            raise DatasetError(f"{root}: the score of {n} is not a number ({m}).")
        samples.append(Sample(p, m, None, Path(n).stem))
    _check_scores(str(root), samples)
    ds = IQADataset("livec", samples, LIVEC_SCALE, root)
    ds.skipped = [f"{m}: file not found" for m in missing]
    return ds


def load_biq2021(root: str | os.PathLike, part: str = "train") -> IQADataset:
    """Read BIQ2021 in its official layout; ``part`` is ``"train"``, ``"test"`` or ``"all"``.

    The Test split is a held-out benchmark: train and select on Train only.
    """
    root = Path(root)
    images = root / "Images"
    if not images.is_dir():
        raise DatasetError(f"{root} is not a BIQ2021 folder (no Images/ inside).")
    if part not in ("train", "test", "all"):
        raise DatasetError(f"BIQ2021 part must be 'train', 'test' or 'all'; got {part!r}.")
    index = _case_insensitive_index(images)
    parts = ["train", "test"] if part == "all" else [part]
    samples, missing, bad = [], [], []
    for p in parts:
        fname = root / f"{p.capitalize()} (Images and MOS).csv"
        if not fname.exists():
            raise DatasetError(f"{fname} is missing: it is part of the official BIQ2021 layout.")
        with open(fname, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                if len(row) < 2 or not row[0].strip():
                    continue
                path = index.get(row[0].strip().lower())
                if path is None:
                    missing.append(row[0])
                    continue
                try:
                    mos = float(row[1])
                    if not math.isfinite(mos):
                        raise ValueError
                except ValueError:
                    bad.append(f"{row[0]!r} has score {row[1]!r}")
                    continue
                samples.append(Sample(path, mos, p, None))
    if bad:
        raise DatasetError(
            f"{root}: {len(bad)} rows have a missing or non-numeric MOS, e.g. "
            + "; ".join(bad[:3])
            + ". Fix the CSV."
        )
    _check_scores(str(root), samples)
    ds = IQADataset(f"biq2021-{part}", samples, BIQ2021_SCALE, root)
    ds.skipped = [f"{m}: file not found" for m in missing]
    return ds


def load_image_folder(root: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """All image files of a folder (sorted), for unrated scoring."""
    root = Path(root)
    it = root.rglob("*") if recursive else root.glob("*")
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_layout(path: str | os.PathLike) -> str:
    """Guess ``"livec"``, ``"biq2021"`` or ``"csv"`` from a folder's contents."""
    path = Path(path)
    if path.is_file():
        return "csv"
    if (path / "Data" / "AllMOS_release.mat").exists() or (path / "ChallengeDB_release").is_dir():
        return "livec"
    if (path / "Train (Images and MOS).csv").exists():
        return "biq2021"
    return "csv"


def load_dataset(path: str | os.PathLike, layout: str = "auto", **kwargs) -> IQADataset:
    """Load a data set in any supported layout (``auto``, ``csv``, ``livec``, ``biq2021``)."""
    layout = detect_layout(path) if layout == "auto" else layout
    if layout == "livec":
        return load_livec(path)
    if layout == "biq2021":
        return load_biq2021(path, **kwargs)
    if layout == "csv":
        return load_csv_dataset(path, **kwargs)
    raise DatasetError(f"Unknown data set layout {layout!r}; use csv, livec or biq2021.")


# --------------------------------------------------------------------------- splits
def random_split(
    ds: IQADataset, test_fraction: float = 0.2, seed: int = 0, by_content: bool = True
) -> tuple[IQADataset, IQADataset]:
    """Random train/test split with a seed; samples of the same content stay on one side.

    If the data set has a ``split`` column with train/test entries, use :meth:`IQADataset.split`
    instead.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    keys = [s.content if (by_content and s.content) else str(s.path) for s in ds.samples]
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise DatasetError(
            f"{ds.name}: {len(unique)} distinct image(s) (or contents) cannot be split into two parts."
        )
    rng = random.Random(seed)
    rng.shuffle(unique)
    n_test = min(len(unique) - 1, max(1, int(round(len(unique) * test_fraction))))
    test_keys = set(unique[:n_test])
    train = [s for s, k in zip(ds.samples, keys) if k not in test_keys]
    test = [s for s, k in zip(ds.samples, keys) if k in test_keys]
    return ds.subset(train, "[train]"), ds.subset(test, "[test]")


#: LIVE-C images the default recipe leaves out of its split (100.bmp-106.bmp: a loader of the first
#: recipe run missed them; they stay out of the split so that its test part stays the same).
LIVEC_LEFT_OUT = frozenset(str(i) for i in range(100, 107))


def livec_recipe_parts(livec: IQADataset, seed: int = 0) -> dict[str, IQADataset]:
    """LIVE-C's parts in the default recipe: ``{"train": ..., "test": ...}``.

    A seeded 80/20 random split (:func:`random_split`, ``seed`` 0 for the shipped models) of LIVE-C
    without :data:`LIVEC_LEFT_OUT`. The 20 % ``test`` part is never used for training or selection;
    the data-set widget and the evaluation script load it to measure a model on images it never saw.
    """
    kept = livec.subset([s for s in livec.samples if s.content not in LIVEC_LEFT_OUT])
    train, test = random_split(kept, 0.2, seed=seed)
    return {"train": train, "test": test}


def with_splits(ds: IQADataset, parts: dict[str, IQADataset]) -> IQADataset:
    """A copy of ``ds`` whose samples carry the ``split`` of the part they are in (others dropped).

    For example ``with_splits(livec, {"train": tr, "val": va, "test": te})``: the trainer then trains
    on ``train``, selects on ``val`` and never touches ``test``.
    """
    where = {}
    for name, part in parts.items():
        for s in part.samples:
            where[id(s)] = name
    samples = [replace(s, split=where[id(s)]) for s in ds.samples if id(s) in where]
    return replace(ds, samples=samples, skipped=[])


def dataset_from_pairs(
    pairs: Sequence[tuple],
    scale: ScoreScale | None = None,
    name: str = "in-memory",
) -> IQADataset:
    """A data set from ``(numpy_array_or_path, mos)`` pairs, e.g. images rated in napari.

    Arrays become :class:`ArraySample` (kept in memory), paths become :class:`Sample`.

    Raises
    ------
    DatasetError
        A pair that is not ``(image, score)``, a missing or non-numeric score, a path that does
        not exist, or (when ``scale`` is None) scores that are all equal.
    """
    samples: list = []
    bad: list[str] = []
    for i, item in enumerate(pairs):
        try:
            img, mos = item[0], item[1]
        except (TypeError, IndexError, KeyError):
            raise DatasetError(
                f"Item {i} of the in-memory data is not an (image, score) pair: {item!r:.80}."
            ) from None
        try:
            mos = float(mos)
            if not math.isfinite(mos):
                raise ValueError
        except (TypeError, ValueError):
            bad.append(f"item {i} has score {mos!r}")
            continue
        if isinstance(img, (str, os.PathLike)):
            p = Path(img)
            if not p.exists():
                raise DatasetError(f"Item {i}: the image file {p} does not exist.")
            samples.append(Sample(p, mos, None, None))
        else:
            samples.append(ArraySample(img, mos, None, None, f"array-{i:05d}"))
    if bad:
        raise DatasetError(
            f"{len(bad)} of the in-memory images have a missing or non-numeric score, e.g. "
            + "; ".join(bad[:3])
            + "."
        )
    _check_scores(name, samples)
    if scale is None:
        scale = infer_scale([s.mos for s in samples])
    return IQADataset(name, samples, scale, None)
