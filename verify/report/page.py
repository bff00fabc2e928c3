"""What every page of the kit shares (report.html, the server's report.html, compare.html): the house style,
the escaping of text, and the self-contained document around a body (no external resource)."""

from __future__ import annotations

import html

BASE_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;max-width:1400px}
.verdict{font-size:30px;font-weight:700;padding:10px 18px;border-radius:8px;display:inline-block}
.PASS{background:#d9f2df;color:#14622b}.FAIL{background:#fbdcdc;color:#8d1a1a}.other{background:#eee;color:#444}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #d6dbe3;padding:3px 7px;text-align:left}
th{background:#f3f5f8}td.num{text-align:right;white-space:nowrap;font-family:ui-monospace,monospace}
tr.bad td{background:#fff1f1}img.plot{max-width:100%;border:1px solid #ddd}
"""


def esc(x) -> str:
    """Text for HTML: escaped, ``-`` for None."""
    return html.escape("-" if x is None else str(x))


def document(title: str, body: str, css: str = "") -> str:
    """A whole page: ``title`` (plain text, escaped here), ``body`` (HTML), the house style then ``css``."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{BASE_CSS}{css}</style></head><body>{body}</body></html>\n")
