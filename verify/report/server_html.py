"""report.html of a whole-server run (``--nproc N``): one page with a row per card, at the top of OUT.

    from verify.report.server_html import write_server_report
    write_server_report(out / "report.html", summary, out)

First screen: the server's verdict, one sentence of cause and place (the first failing card and its own
cause), a row per card (device, SoC, verdict, cause, time, the link to the card's own report.html), what
ran; then the per-card chart (each task's warm median per card) and, collapsed, the collective check, the
cross-card consistency and every failure line. Self-contained like the single-card page.
"""

from __future__ import annotations

import math
from pathlib import Path

from verify.plots import figure_png, matplotlib_pyplot
from verify.report.glance import GLANCE_CSS, rank_cause, rank_summaries, ran, server_cause
from verify.report.page import document, esc

_CSS = """
pre{font-size:12px;overflow-x:auto}
details.section{margin:10px 0}details.section>summary{font-size:18px;font-weight:600;cursor:pointer}
h2{margin-top:24px;border-bottom:2px solid #dde2ea;padding-bottom:4px}
"""


_e = esc


def per_card_png(summary: dict):
    """Each task's warm median per card (grouped bars), ms; None without matplotlib or timings."""
    plt = matplotlib_pyplot()
    rows = [r for r in summary.get("ranks") or [] if (r.get("timings") or {}).get("median_ms")]
    if plt is None or not rows:
        return None
    tasks = sorted({t for r in rows for t in r["timings"]["median_ms"]})
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(tasks) * len(rows) + 1.4))
    height = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ys = [len(tasks) - 1 - j + (len(rows) - 1 - i) * height - 0.4 + height / 2 for j in range(len(tasks))]
        values = [r["timings"]["median_ms"].get(t) or math.nan for t in tasks]
        ax.barh(ys, values, height=height * 0.9, label=f"rank {r['rank']} ({r.get('device') or '?'})")
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels(tasks[::-1], fontsize=9)
    ax.set_xlabel("warm median, ms per call")
    ax.set_title("timing per card")
    ax.legend(fontsize=8, loc="best")
    return figure_png(plt, fig)


def render_server_html(summary: dict, out) -> str:
    import base64

    from verify.report.server_table import format_lines, format_table

    verdict = str(summary.get("verdict") or "-")
    ranks = rank_summaries(out)
    rows = []
    for r in summary.get("ranks") or []:
        own_page = Path(out) / f"rank{r['rank']}" / "report.html" if out is not None else None
        link = (f'<a href="rank{r["rank"]}/report.html">rank{r["rank"]}/report.html</a>'
                if own_page is not None and own_page.exists() else "-")
        total = (r.get("timings") or {}).get("total_s")
        medians = (r.get("timings") or {}).get("median_ms") or {}
        first = next(iter(medians.items()), None)
        bad = r.get("verdict") != "PASS"
        rows.append(f"<tr{' class=bad' if bad else ''}><td class=num>{r['rank']}</td><td>{_e(r.get('device'))}</td>"
                    f"<td>{_e(r.get('soc'))}</td><td><b>{_e(r.get('verdict'))}</b></td>"
                    f"<td>{_e(rank_cause(r, ranks.get(r['rank'])) if bad else 'within every gate')}</td>"
                    f"<td class=num>{'-' if total is None else f'{total:.1f} s'}</td>"
                    f"<td class=num>{_e(f'{first[0]} {first[1]:.1f} ms' if first and first[1] else '-')}</td>"
                    f"<td>{link}</td></tr>")
    server = summary.get("server") or {}
    launcher = server.get("launcher") or {}
    card = ranks.get(summary.get("representative_rank")) or summary  # the cases a card ran, its profile
    what = [(k, v) for k, v in ran(card) if k not in ("duration", "device", "created")]
    what.append(("created", summary.get("created", "-")))
    what = [("cards", f"{server.get('world_size')} ({', '.join(server.get('hosts') or []) or '?'}), backend "
                      f"{server.get('backend') or '-'}")] + what
    if launcher.get("elapsed_s") is not None:
        what.append(("duration", f"{launcher['elapsed_s']:.0f} s"))
    png = per_card_png(summary)
    chart = (f'<img class="plot" alt="warm median latency of each task on each card, ms" '
             f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">' if png else
             "<p>no timings (the cards ran with --no-timing, or none finished)</p>")
    checks = "\n".join(format_table(server.get("collectives") or {})
                       + format_lines(server.get("consistency") or {"verdict": "SKIPPED", "note": "absent"}))
    reasons = (summary.get("overall") or {}).get("reasons") or []
    cls = verdict if verdict in ("PASS", "FAIL") else "other"
    body = (
        f'<section id="glance"><div class="head"><span class="verdict {cls}" id="verdict">{_e(verdict)}</span>'
        f'<h1>VTP whole-server certification</h1></div>'
        f'<p class="cause" id="cause">{_e(server_cause(summary, ranks))}</p>'
        f'<div class="glance"><div><h2 class="small">A row per card</h2><table id="cards"><tr><th>rank</th>'
        '<th>device</th><th>SoC</th><th>verdict</th><th>cause and place</th><th>time</th><th>first task median</th>'
        f'<th>its report</th></tr>{"".join(rows)}</table></div>'
        f'<div><h2 class="small">What ran</h2><table class="ran">'
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in what)
        + f'</table></div></div></section><section id="per-card"><h2>Timing per card</h2>{chart}</section>'
        f'<h2 id="details">Details</h2><details class="section" id="server-checks"><summary>Collective check and '
        f'cross-card consistency</summary><pre>{_e(checks)}</pre></details>'
        f'<details class="section" id="failures"><summary>Failures: {len(reasons)} lines</summary><ul>'
        + "".join(f"<li>{_e(x)}</li>" for x in reasons) + "</ul></details>")
    return document(f"VTP server verification: {verdict}", body, _CSS + GLANCE_CSS)


def write_server_report(path, summary: dict, out) -> Path:
    from vtp.io_utils import atomic_write_text

    return atomic_write_text(path, render_server_html(summary, out))
