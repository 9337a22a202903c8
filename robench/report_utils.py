"""Small helpers shared by everything that writes figures."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

__all__ = ["figure_png"]


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of ``fig`` (then closed), ready for an atomic write."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
