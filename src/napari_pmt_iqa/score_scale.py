"""The units of a data set's scores (:class:`ScoreScale`) and the internal 0-100 scale the model
regresses on (:data:`INTERNAL_MAX`). No torch import: data sets, the reader and the widgets use it.

A data set's own units (LIVE-C's MOS 0-100, BIQ2021's 0-1, a DMOS where lower is better, ...) are
mapped onto the internal scale by a :class:`ScoreScale`, which a checkpoint keeps so that scores
come back in the units of its data.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The internal scale the regression head works on.
INTERNAL_MAX = 100.0


@dataclass(frozen=True)
class ScoreScale:
    """The units of a data set's scores.

    Parameters
    ----------
    low, high
        The range of the scale (``low < high``), e.g. 0 and 100 for LIVE-C.
    higher_is_better
        False for DMOS-like scales.
    name
        Human-readable name of the units, e.g. ``"MOS (LIVE-C, 0-100)"``.
    """

    low: float = 0.0
    high: float = 100.0
    higher_is_better: bool = True
    name: str = "quality score (0-100)"

    def __post_init__(self) -> None:
        if not (float(self.high) > float(self.low)):
            raise ValueError(
                f"A score range needs high > low; got low={self.low}, high={self.high} (zero or "
                "negative width). Give the true range of the scores."
            )

    def to_internal(self, s):
        """Map scores in these units to the internal 0-100 scale (higher is better)."""
        u = (s - self.low) / (self.high - self.low)
        if not self.higher_is_better:
            u = 1.0 - u
        return u * INTERNAL_MAX

    def from_internal(self, s):
        """Map internal 0-100 scores back to these units."""
        u = s / INTERNAL_MAX
        if not self.higher_is_better:
            u = 1.0 - u
        return self.low + u * (self.high - self.low)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        return {
            "low": float(self.low),
            "high": float(self.high),
            "higher_is_better": bool(self.higher_is_better),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScoreScale:
        """The scale a :meth:`to_dict` dict describes (``higher_is_better`` and ``name`` optional)."""
        return cls(
            float(d["low"]),
            float(d["high"]),
            bool(d.get("higher_is_better", True)),
            str(d.get("name", "")),
        )
