"""Small QPainter charts (no matplotlib): a line plot with a cursor, a scatter plot, a bar chart and
the fine-tune widget's training curves.

Each chart draws whatever values it holds; the line and scatter plots emit ``clicked(int)`` with
the index of the sample nearest to a mouse click.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QFont, QFontMetricsF, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

_AXIS = QColor(170, 170, 170)
_LINE = QColor(80, 170, 255)
_CURSOR = QColor(255, 200, 60)
_POINT = QColor(80, 170, 255, 200)
_NAN = QColor(120, 120, 120)


def _nice_range(
    values: np.ndarray, fixed: tuple[float, float] | None = None
) -> tuple[float, float]:
    v = values[np.isfinite(values)] if values.size else values
    if fixed is not None:
        lo, hi = fixed
    elif v.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _padded(r: tuple[float, float], share: float = 0.04) -> tuple[float, float]:
    """``r`` widened by ``share`` of its span on each side (points at the ends stay whole)."""
    pad = (r[1] - r[0]) * share
    return r[0] - pad, r[1] + pad


class _PlotBase(QWidget):
    """Margins, axes, labels and the value-to-pixel mapping shared by the plots."""

    clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None, height: int = 140) -> None:
        super().__init__(parent)
        self.setMinimumHeight(height)
        self.setMinimumWidth(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(height)
        self.x_label = ""
        self.y_label = ""
        self.title = ""
        self._xr = (0.0, 1.0)
        self._yr = (0.0, 1.0)

    #: Pixels above the plot area (the title row, and half a row for the top y tick label) and
    #: below it (one row of tick labels, one row for the x-axis label).
    TOP, BOTTOM = 22, 32

    def _area(self) -> QRectF:
        h = max(10, self.height() - self.TOP - self.BOTTOM)
        return QRectF(58, self.TOP, max(10, self.width() - 68), h)

    def _label_font(self) -> QFont:
        f = QFont(self.font())
        f.setPointSizeF(max(6.0, f.pointSizeF() * 0.8))
        return f

    def text_layout(self) -> dict[str, tuple[QRectF, int, str]]:
        """Where each text of the axes goes: ``{name: (rect, alignment, text)}``.

        The title (or the y label) spans the whole width above the plot, the tick labels sit in a
        row under it, the x label in its own row below them; every text is elided to its rect, so
        that none is cut at the widget's edges and none overlaps another.
        """
        a = self._area()
        fm = QFontMetricsF(self._label_font())
        ys, xs = self._yr[1] - self._yr[0], self._xr[1] - self._xr[0]
        right, left, centre = (
            int(Qt.AlignmentFlag.AlignRight),
            int(Qt.AlignmentFlag.AlignLeft),
            int(Qt.AlignmentFlag.AlignHCenter),
        )
        x_lo, x_hi = self._x_tick_texts(xs)
        w_lo, w_hi = fm.horizontalAdvance(x_lo) + 2, fm.horizontalAdvance(x_hi) + 2
        row = fm.height() + 1
        rects = {
            "title": (QRectF(2, 0, self.width() - 4, row), centre, self.title or self.y_label),
            "y_max": (QRectF(0, a.top() - row / 2, 54, row), right, self._fmt(self._yr[1], ys)),
            "y_min": (QRectF(0, a.bottom() - row / 2, 54, row), right, self._fmt(self._yr[0], ys)),
            "x_min": (QRectF(a.left(), a.bottom() + 2, w_lo, row), left, x_lo),
            "x_max": (QRectF(a.right() - w_hi, a.bottom() + 2, w_hi, row), right, x_hi),
            "x_label": (
                QRectF(a.left(), a.bottom() + 2 + row, a.width(), row),
                centre,
                self.x_label,
            ),
        }
        out = {}
        for name, (rect, align, text) in rects.items():
            elided = fm.elidedText(text, Qt.TextElideMode.ElideRight, rect.width()) if text else ""
            out[name] = (rect, align, elided)
        return out

    def _x_tick_texts(self, span: float) -> tuple[str, str]:
        return self._fmt(self._xr[0], span), self._fmt(self._xr[1], span)

    def _to_px(self, x: float, y: float) -> QPointF:
        a = self._area()
        fx = (x - self._xr[0]) / (self._xr[1] - self._xr[0])
        fy = (y - self._yr[0]) / (self._yr[1] - self._yr[0])
        return QPointF(a.left() + fx * a.width(), a.bottom() - fy * a.height())

    @staticmethod
    def _fmt(v: float, span: float) -> str:
        digits = max(0, min(6, int(-np.floor(np.log10(span))) + 2)) if span > 0 else 2
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"

    def _draw_axes(self, p: QPainter) -> None:
        p.setPen(QPen(_AXIS, 1))
        p.drawRect(self._area())
        p.setFont(self._label_font())
        for rect, align, text in self.text_layout().values():
            if text:
                p.drawText(rect, align, text)


class LinePlot(_PlotBase):
    """Scores along a stack axis, with a cursor at the viewer's current index."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values = np.zeros(0)
        self.current: int | None = None
        self.y_range: tuple[float, float] | None = None

    def set_values(
        self, values: Sequence[float], y_range: tuple[float, float] | None = None
    ) -> None:
        """Values to plot (NaN for not yet scored) and an optional fixed y range."""
        self.values = np.asarray(values, dtype=float).ravel()
        self.y_range = y_range
        self.update()

    def set_current(self, index: int | None) -> None:
        """Move the cursor (the viewer's current plane)."""
        if index != self.current:
            self.current = index
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        n = self.values.size
        self._xr = (0.0, float(max(1, n - 1)))
        self._yr = _nice_range(self.values, self.y_range)
        self._draw_axes(p)
        if self.current is not None and n:
            p.setPen(QPen(_CURSOR, 1.5))
            a = self._area()
            x = self._to_px(self.current, self._yr[0]).x()
            p.drawLine(QPointF(x, a.top()), QPointF(x, a.bottom()))
        p.setPen(QPen(_LINE, 1.8))
        prev = None
        for i, v in enumerate(self.values):
            if not np.isfinite(v):
                prev = None
                continue
            pt = self._to_px(i, v)
            if prev is not None:
                p.drawLine(prev, pt)
            p.setBrush(_LINE)
            p.drawEllipse(pt, 2.5, 2.5)
            prev = pt
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        n = self.values.size
        if not n:
            return
        a = self._area()
        fx = (event.position().x() - a.left()) / max(1.0, a.width())
        self.clicked.emit(int(np.clip(round(fx * max(1, n - 1)), 0, n - 1)))


class ScatterPlot(_PlotBase):
    """Predicted score (y) against MOS (x); click a point to select it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, height=220)
        self.x = np.zeros(0)
        self.y = np.zeros(0)
        self.selected: int | None = None

    def set_points(self, x: Sequence[float], y: Sequence[float]) -> None:
        """Points to plot; NaN entries (not yet scored) are left out."""
        self.x = np.asarray(x, dtype=float).ravel()
        self.y = np.asarray(y, dtype=float).ravel()
        self._update_ranges()
        self.update()

    def _update_ranges(self) -> np.ndarray:
        ok = np.isfinite(self.x) & np.isfinite(self.y)
        self._xr = _padded(_nice_range(self.x[ok]))
        self._yr = _padded(_nice_range(self.y[ok]))
        return ok

    def point_position(self, index: int) -> QPointF:
        """Widget coordinates of point ``index``."""
        self._update_ranges()
        return self._to_px(self.x[index], self.y[index])

    def set_selected(self, index: int | None) -> None:
        self.selected = index
        self.update()

    def point_at(self, px: float, py: float, radius: float = 12.0) -> int | None:
        """Index of the plotted point nearest to the widget position (px, py), within ``radius``."""
        ok = self._update_ranges()
        if not ok.any():
            return None
        best, best_d = None, radius
        for i in np.flatnonzero(ok):
            q = self._to_px(self.x[i], self.y[i])
            d = float(np.hypot(q.x() - px, q.y() - py))
            if d <= best_d:
                best, best_d = int(i), d
        return best

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        ok = self._update_ranges()
        self._draw_axes(p)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(_POINT)
        for i in np.flatnonzero(ok):
            p.drawEllipse(self._to_px(self.x[i], self.y[i]), 3.0, 3.0)
        if self.selected is not None and 0 <= self.selected < self.x.size and ok[self.selected]:
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(_CURSOR, 2))
            p.drawEllipse(self._to_px(self.x[self.selected], self.y[self.selected]), 6.0, 6.0)
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        pos = event.position()
        idx = self.point_at(pos.x(), pos.y())
        if idx is not None:
            self.set_selected(idx)
            self.clicked.emit(idx)


class BarPlot(_PlotBase):
    """Class probabilities as bars (worst class left)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, height=120)
        self.values = np.zeros(0)
        self.colors: list[QColor] = []

    def _x_tick_texts(self, span: float) -> tuple[str, str]:
        n = self.values.size
        return ("class 1", f"class {n}") if n else ("", "")

    def set_values(
        self, values: Sequence[float], colors: Sequence[Sequence[float]] | None = None
    ) -> None:
        self.values = np.asarray(values, dtype=float).ravel()
        self.colors = [QColor.fromRgbF(*[float(c) for c in col[:3]]) for col in (colors or [])]
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        n = self.values.size
        self._xr = (0.0, float(max(1, n)))
        self._yr = (0.0, max(1e-6, float(self.values.max()) if n else 1.0))
        self._draw_axes(p)
        p.setPen(Qt.PenStyle.NoPen)
        for i, v in enumerate(self.values):
            p.setBrush(self.colors[i] if i < len(self.colors) else _LINE)
            top = self._to_px(i + 0.1, v)
            bottom = self._to_px(i + 0.9, 0.0)
            p.drawRect(QRectF(top, bottom))
        p.end()


# --------------------------------------------------------------------------- training curves
_CURVE_COLORS = {
    "batch loss": QColor(120, 120, 140),
    "train loss": QColor(80, 170, 255),
    "val SRCC": QColor(255, 190, 60),
    "val PLCC": QColor(120, 220, 120),
}


class CurvesPlot(_PlotBase):
    """Training curves: losses (left axis, auto range) and validation SRCC/PLCC (right axis, -1-1).

    The x axis is in epochs (batch losses sit at fractional epochs).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, height=200)
        self.x_label = "epoch"
        self.title = "loss (left)  ·  val SRCC / PLCC (right, -1 to 1)"
        self.series: dict[str, tuple[list[float], list[float]]] = {
            k: ([], []) for k in _CURVE_COLORS
        }
        self.epochs = 1

    def clear(self, epochs: int = 1) -> None:
        self.series = {k: ([], []) for k in _CURVE_COLORS}
        self.epochs = max(1, int(epochs))
        self.update()

    def add(self, name: str, x: float, y: float) -> None:
        xs, ys = self.series[name]
        xs.append(float(x))
        ys.append(float(y))

    def points(self, name: str) -> int:
        return len(self.series[name][0])

    def total_points(self) -> int:
        """Points of all series (a change means the chart must be repainted)."""
        return sum(len(xs) for xs, _ in self.series.values())

    def polylines(self, name: str, yr: tuple[float, float]) -> list[list[QPointF]]:
        """The pixel points of series ``name`` (values clipped to ``yr``), one list per run of
        finite values (a NaN breaks the line), computed at once with numpy: a long run paints as
        one polyline, so that the chart stays cheap on the GUI thread however many steps it
        holds."""
        xs, ys = self.series[name]
        if not ys:
            return []
        a = self._area()
        x = np.asarray(xs, dtype=float)
        y = np.asarray(ys, dtype=float)
        ok = np.isfinite(y)
        fx = (x - self._xr[0]) / (self._xr[1] - self._xr[0])
        fy = (np.clip(np.where(ok, y, yr[0]), yr[0], yr[1]) - yr[0]) / (yr[1] - yr[0])
        px = (a.left() + fx * a.width()).tolist()
        py = (a.bottom() - fy * a.height()).tolist()
        runs, cur = [], []
        for i, good in enumerate(ok.tolist()):
            if good:
                cur.append(QPointF(px[i], py[i]))
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        return runs

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        losses = np.array(self.series["batch loss"][1] + self.series["train loss"][1], float)
        losses = losses[np.isfinite(losses)]
        lo = 0.0
        hi = float(np.percentile(losses, 98)) * 1.1 if losses.size else 1.0
        self._yr = (lo, hi if hi > lo else 1.0)
        self._xr = (0.0, float(self.epochs))
        self._draw_axes(p)
        a = self._area()
        p.setPen(QPen(QColor(170, 170, 170), 1))
        p.drawText(QRectF(a.right() + 2, a.top() - 6, 40, 14), Qt.AlignmentFlag.AlignLeft, "1")
        p.drawText(
            QRectF(a.right() + 2, a.center().y() - 7, 40, 14), Qt.AlignmentFlag.AlignLeft, "0"
        )
        p.drawText(QRectF(a.right() + 2, a.bottom() - 8, 40, 14), Qt.AlignmentFlag.AlignLeft, "-1")
        p.setPen(QPen(QColor(110, 110, 110), 1, Qt.PenStyle.DashLine))
        p.drawLine(QPointF(a.left(), a.center().y()), QPointF(a.right(), a.center().y()))
        for name, color in _CURVE_COLORS.items():
            right = name.startswith("val")
            yr = (-1.0, 1.0) if right else self._yr
            pen = QPen(color, 1.0 if name == "batch loss" else 2.0)
            p.setPen(pen)
            p.setBrush(color)
            for run in self.polylines(name, yr):
                if len(run) > 1:
                    p.drawPolyline(QPolygonF(run))
                if name != "batch loss":
                    for pt in run:
                        p.drawEllipse(pt, 2.5, 2.5)
            p.setBrush(Qt.BrushStyle.NoBrush)
        # legend, in its own row(s) between the title and the plot
        p.setFont(self._label_font())
        for name, (x, y) in self.legend_layout().items():
            p.setPen(QPen(_CURVE_COLORS[name], 2))
            p.drawLine(QPointF(x, y - 4), QPointF(x + 12, y - 4))
            p.setPen(QPen(QColor(200, 200, 200), 1))
            p.drawText(QPointF(x + 15, y), name)
        p.end()

    def legend_layout(self) -> dict[str, tuple[float, float]]:
        """Where each legend entry starts (``x``, text baseline ``y``): in rows under the title,
        as many per row as the width takes, so that no entry covers a curve or is cut."""
        fm = QFontMetricsF(self._label_font())
        row = fm.height() + 1
        x0, right = 58.0, float(self.width() - 4)
        x, y = x0, _PlotBase.TOP + fm.ascent()
        out = {}
        for name in _CURVE_COLORS:
            w = 15 + fm.horizontalAdvance(name) + 10
            if x > x0 and x + w > right:
                x, y = x0, y + row
            out[name] = (x, y)
            x += w
        return out

    def _legend_height(self) -> float:
        fm = QFontMetricsF(self._label_font())
        rows = len({y for _, y in self.legend_layout().values()})
        return rows * (fm.height() + 1) + 2

    def _x_tick_texts(self, span: float) -> tuple[str, str]:
        return "0", f"{self.epochs:d}"  # whole epochs

    def _area(self) -> QRectF:
        r = super()._area()
        top = self._legend_height()
        return QRectF(r.left(), r.top() + top, max(10, r.width() - 14), max(10, r.height() - top))
