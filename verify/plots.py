"""Figures as PNG bytes, drawn with matplotlib (imported on first use, so that nothing else pays for it).

    plt = matplotlib_pyplot()          # None when matplotlib cannot be imported
    png = figure_png(plt, fig)
"""

from __future__ import annotations

import io


def matplotlib_pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or None when it cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def figure_png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
