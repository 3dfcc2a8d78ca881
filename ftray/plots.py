"""PNG line charts for run and sweep folders (`curves.png`): one figure code for every kind of run."""

from __future__ import annotations

import io
from dataclasses import dataclass, field


@dataclass
class Panel:
    """One chart: lines of (x values, y values, legend label or None), an optional level line."""
    xlabel: str
    ylabel: str
    lines: list[tuple[list, list, str | None]] = field(default_factory=list)
    level: tuple[float, str] | None = None  # (y, label): a dashed horizontal line, e.g. a target
    title: str | None = None


def curves_png(panels: list[Panel]) -> bytes:
    """The panels side by side, as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for x, y, label in panel.lines:
            ax.plot(list(x), list(y), "o-", label=label, alpha=0.8)
        if panel.level is not None:
            ax.axhline(panel.level[0], color="C3", ls="--", label=panel.level[1])
        ax.set_xlabel(panel.xlabel), ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title)
        if any(label for _, _, label in panel.lines) or panel.level:
            ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
