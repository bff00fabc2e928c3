"""report.html: one self-contained page a person reads at a glance (no network, no external CSS/JS).

    from verify.report.html import write_html_report
    write_html_report(out / "report.html", summary, divergence=div, recon_images=images, fusion=fusion_dict)

Sections, in order (each an element with the id shown): the first screen (``glance``: the verdict
``verdict``, one sentence of cause and place ``cause``, the case matrix coloured by the worst gate's share of
its budget, each cell a link to its case, and what ran; verify.report.glance); the error along depth with the
first divergent module marked (``divergence``); per reconstruction case: input | reference | candidate |
amplified |difference| | heatmap with its factor and colour bar (``reconstruction``); the warm median with
its p10-p90 spread and the cold call per task (``timing``); then, collapsed: every failure line
(``failures``), the gate tables per case (``cases``, one ``case-<id>`` each), the environment
(``environment``), the weights' identity (``weights``) and the fusion decisions (``fusion``). Images are PNG
embedded as base64 ``data:`` URIs; plots need matplotlib (a dependency; without it the data is shown as
tables and the page says so).
The summary may be of schema vtp-accuracy-summary/1 or /2; missing fields print as "-".
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from verify.report.burn_in import burn_in_html
from verify.report.fmt import _ms, _num
from verify.report.glance import GLANCE_CSS, case_anchor, glance_html
from verify.report.page import document, esc
from verify.report.summary import _d, environment_of, tensor_rows, timing_rows, verdict_of
from verify.divergence import _marked, error_vs_depth_png
from verify.plots import figure_png, matplotlib_pyplot

_CSS = """
h1{margin:0 0 6px}h2{margin-top:28px;border-bottom:2px solid #dde2ea;padding-bottom:4px}
.note{background:#fff8e0;border-left:4px solid #e0b400;padding:6px 10px;margin:8px 0}
.strip{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}.strip figure{margin:0}
.strip img{image-rendering:pixelated;border:1px solid #ccc;width:200px;height:auto}
figcaption{font-size:12px;color:#555;max-width:200px}.reasons{color:#8d1a1a;font-size:13px}
table.wide{width:100%}td{overflow-wrap:anywhere}
td.num,th.num{white-space:nowrap;overflow-wrap:normal}
details summary{cursor:pointer}details.section{margin:10px 0}details.section>summary{font-size:18px;font-weight:600}
details.case{margin:2px 0}details.case>summary{font-family:ui-monospace,monospace;font-size:13px}
.colourbar{display:flex;align-items:center;gap:6px;font-size:12px;color:#555}.colourbar img{width:160px;height:12px}
.strip-note{font-size:13px;color:#6b4e00;margin:2px 0 6px}
"""

# Opening a link to a collapsed case (a matrix cell) expands it and the sections around it.
_OPEN_TARGET = ("<script>function vtpOpen(){var e=document.getElementById(decodeURIComponent(location.hash.slice(1)));"
                "for(;e;e=e.parentElement){if(e.tagName==='DETAILS')e.open=true;}}"
                "window.addEventListener('hashchange',vtpOpen);window.addEventListener('load',vtpOpen);</script>")


_e = esc


def _png_b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="{_png_b64(data)}">'


# --------------------------------------------------------------------------------------------- images
def _array_png(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _heat(x):
    """Values in [0, 1] -> RGB uint8 with a black-red-yellow-white ramp (no matplotlib needed)."""
    import numpy as np

    x = np.clip(x, 0.0, 1.0)
    r, g, b = np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


SYNTHETIC_STRIP_NOTE = ("random weights: the reconstruction is not meant to resemble the input; the difference "
                        "between candidate and reference is what is judged")


def colour_bar(peak: float) -> str:
    """The heatmap's colour scale as a small gradient image with its end values (no matplotlib needed)."""
    import numpy as np

    ramp = np.repeat(_heat(np.linspace(0.0, 1.0, 160))[None], 12, axis=0)
    return (f'<div class="colourbar"><span class="num">0</span>{_img(_array_png(ramp), "colour scale of the heatmap")}'
            f'<span class="num">{_e(f"{peak:.3g}")}/255</span></div>')


def recon_strip(entry: dict, synthetic: bool = False) -> str:
    """input | reference | candidate | amplified |difference| (in 0-255 pixel units) | heatmap, with the scale
    (the amplification factor stated, a colour bar under the heatmap); with ``synthetic`` weights a note says
    why the pictures look like noise."""
    import numpy as np

    from vtp.image import to_uint8

    pics = {k: to_uint8(entry[k].detach().float().cpu()) for k in ("input", "reference", "candidate")}
    diff = np.abs(pics["candidate"].astype(np.float64) - pics["reference"].astype(np.float64))
    peak = float(diff.max())
    gain = 255.0 / peak if peak > 0 else 1.0
    amplified = np.clip(diff * gain, 0, 255).astype(np.uint8)
    heat = _heat(diff.mean(axis=-1) / peak if peak > 0 else diff.mean(axis=-1))
    mean = float(diff.mean())
    captions = [("input", pics["input"], "input image"), ("reference", pics["reference"], "reference (CPU fp32)"),
                ("candidate", pics["candidate"], "candidate"),
                ("amplified", amplified, f"|candidate - reference| amplified {gain:.3g}x (white = {peak:.3g}/255)"
                 if peak > 0 else "|candidate - reference|: no pixel differs (all black)"),
                ("heatmap", heat, f"heatmap of the channel mean: black 0, white {peak:.3g}/255; mean {mean:.3g}/255"
                 if peak > 0 else "heatmap: no pixel differs")]
    case = entry.get("case", "-")
    figs = "".join(f'<figure>{_img(_array_png(arr), f"{case}: {text}")}<figcaption>{_e(text)}'
                   f'{colour_bar(peak) if name == "heatmap" else ""}</figcaption></figure>'
                   for name, arr, text in captions)
    note = f'<p class="strip-note">{_e(SYNTHETIC_STRIP_NOTE)}</p>' if synthetic else ""
    return f'<h3>{_e(case)}</h3>{note}<div class="strip">{figs}</div>'


def timing_png(summary: dict):
    """Per task: the warm median with a p10-p90 bar (min-p90 for summaries without p10) and the first (cold)
    call marked, ms, one row per task (names on the left, never cut); None without matplotlib or timings."""
    plt = matplotlib_pyplot()
    rows = timing_rows(summary)
    if plt is None or not rows:
        return None
    names = list(rows)
    val = lambda n, k: rows[n].get(k) if isinstance(rows[n].get(k), (int, float)) else math.nan  # noqa: E731
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.4))
    ys = list(range(len(names)))[::-1]
    med = [val(n, "median_ms") for n in names]
    low = [val(n, "p10_ms") if math.isfinite(val(n, "p10_ms")) else val(n, "min_ms") for n in names]
    high = [val(n, "p90_ms") for n in names]
    err = [[max(m - lo, 0.0) if math.isfinite(lo) else 0.0 for m, lo in zip(med, low)],
           [max(hi - m, 0.0) if math.isfinite(hi) else 0.0 for m, hi in zip(med, high)]]
    ax.barh(ys, med, xerr=err, capsize=4, color="#7aa6d8", label="warm median (bar: p10-p90)")
    ax.scatter([val(n, "first_call_ms") for n in names], ys, marker="x", s=70, color="#b22222", zorder=5,
               label="first (cold) call")
    for y, m in zip(ys, med):
        if math.isfinite(m):
            ax.annotate(f"{m:.1f} ms", (m, y), xytext=(4, 6), textcoords="offset points", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xlabel("ms per call")
    ax.set_title("timing per task")
    ax.legend(fontsize=8, loc="lower right")
    return figure_png(plt, fig)


# --------------------------------------------------------------------------------------------- sections
FAILURES_SHOWN = 500


def _failures_section(summary: dict) -> str:
    reasons = _d(summary.get("overall")).get("reasons") or []
    if not reasons:
        return ""
    shown = reasons[:FAILURES_SHOWN]
    cut = (f" ({len(shown)} of {len(reasons)} shown; every one is in accuracy_summary.json and log.txt)"
           if len(shown) < len(reasons) else "")
    return (f'<details class="section" id="failures"><summary>Failures: {len(reasons)} lines{_e(cut)}</summary>'
            "<ul class='reasons'>" + "".join(f"<li>{_e(r)}</li>" for r in shown) + "</ul></details>")


def _margin(g) -> float:
    m = g.get("margin")
    return m if isinstance(m, (int, float)) and not isinstance(m, bool) else math.inf


def _gates_cell(gates) -> str:
    """The tightest gate in one line; every gate in a table that opens on click (open when one failed)."""
    if not gates:
        return "-"
    failed = [g for g in gates if not g.get("passed")]
    key = failed[0] if failed else min(gates, key=_margin)
    head = (f"{len(failed)} of {len(gates)} gates FAILED: " if failed else f"{len(gates)} gates ok, tightest: ") + \
        f"{_e(key.get('gate'))} {_e(_num(key.get('value')))} vs {_e(_num(key.get('threshold')))} " \
        f"(margin {_e(_num(key.get('margin')))})"
    rows = "".join(f"<tr{' class=bad' if not g.get('passed') else ''}><td>{_e(g.get('gate'))}</td>"
                   f"<td class=num>{_e(_num(g.get('value')))}</td><td class=num>{_e(_num(g.get('threshold')))}</td>"
                   f"<td class=num>{_e(_num(g.get('margin')))}</td><td>{'ok' if g.get('passed') else 'FAIL'}</td></tr>"
                   for g in gates)
    return (f"<details><summary>{head}</summary><table><tr><th>gate</th><th class=num>value</th>"
            f"<th class=num>threshold</th><th class=num>margin</th><th></th></tr>{rows}</table></details>")


def _cases_section(summary: dict) -> str:
    """Gate tables per case, each case collapsed (its id is the matrix cell's link), failing cases first open
    only when reached through their link."""
    rows = tensor_rows(summary)
    head = ("<tr><th>call</th><th>tensor</th><th>verdict</th><th class=num>rel_err</th><th class=num>cosine</th>"
            "<th class=num>rel_l2</th><th class=num>max_abs</th><th>gates (value vs threshold, margin)</th></tr>")
    by_case: dict = {}
    for r in rows:
        by_case.setdefault(str(r["case"]).split("@")[0], []).append(r)
    blocks = []
    for case, case_rows in by_case.items():
        bad = [r for r in case_rows if r["verdict"] != "PASS"]
        body = []
        for r in case_rows:
            cls = ' class="bad"' if r["verdict"] not in ("PASS",) else ""
            call = str(r["case"]).split("@")[1] if "@" in str(r["case"]) else "-"
            body.append(f"<tr{cls}><td>{_e(call)}</td><td>{_e(r['tensor'])}</td><td>{_e(r['verdict'])}</td>"
                        + "".join(f'<td class="num">{_e(_num(r[k]))}</td>'
                                  for k in ("rel_err", "cosine", "rel_l2", "max_abs"))
                        + f"<td>{_gates_cell(r['gates'])}</td></tr>")
        state = (f"FAIL: {len(bad)} of {len(case_rows)} tensor results" if bad
                 else f"PASS: {len(case_rows)} tensor results")
        blocks.append(f'<details class="case" id="{case_anchor(case)}"><summary>{_e(case)}: {_e(state)}</summary>'
                      f'<table class="wide">{head}{"".join(body)}</table></details>')
    checks = [c for c in summary.get("checks") or [] if isinstance(c, dict)]
    extra = ""
    if checks:
        extra = ("<h3>checks</h3><table><tr><th>check</th><th>id</th><th>verdict</th></tr>"
                 + "".join(f"<tr{' class=bad' if c.get('verdict') not in ('PASS', None) else ''}>"
                           f"<td>{_e(c.get('check'))}</td>"
                           f"<td>{_e(c.get('id'))}</td><td>{_e(c.get('verdict'))}</td></tr>" for c in checks)
                 + "</table>")
    n_bad = sum(1 for rs in by_case.values() if any(r["verdict"] != "PASS" for r in rs))
    return (f'<details class="section" id="cases"><summary>Gate tables per case: {len(by_case)} cases, {n_bad} failing'
            f'</summary>{"".join(blocks) if rows else "<p>no tensor was compared</p>"}{extra}</details>')


def _recon_section(recon_images, synthetic: bool = False) -> str:
    if not recon_images:
        return '<section id="reconstruction"><h2>Reconstruction</h2><p>no reconstruction images given</p></section>'
    return ('<section id="reconstruction"><h2>Reconstruction</h2><p>Pixels in 0-255 after denormalisation; the '
            'difference is amplified to the full range, its factor and colour scale under each picture.</p>'
            + "".join(recon_strip(e, synthetic) for e in recon_images) + "</section>")


def _divergence_section(divergence, plots_ok: bool) -> str:
    if not divergence:
        return ('<section id="divergence"><h2>Error along depth</h2><p>not located in this run (it runs when the '
                'verdict is FAIL, or with --locate)</p></section>')
    from verify.divergence import summary_lines

    out = ['<section id="divergence"><h2>Error along depth</h2>',
           "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in summary_lines(divergence)) + "</ul>"]
    png = error_vs_depth_png(divergence) if plots_ok else None
    if png:
        first = _d(divergence.get("first_divergent"))
        alt = ("relative L2 error of every module's output along depth, against the gate"
               + (f"; first divergent module {first.get('module')}" if first.get("module") else ""))
        out.append(_img(png, alt, "plot"))
    first = _d(divergence.get("first_divergent"))
    rows = []
    for task, growth in _d(divergence.get("growth")).items():
        at = _marked(growth, task, first)
        for i, r in enumerate(growth):
            mark = i == at
            rows.append(f"<tr{' class=bad' if mark else ''}><td>{_e(task)}</td><td>{_e(r['module'])}"
                        f"{' &larr; first divergent: ' + _e(first.get('module')) if mark else ''}</td><td class=num>{_e(r.get('call'))}</td>"
                        f"<td class=num>{_e(_num(r.get('relative_l2_error')))}</td>"
                        f"<td class=num>{_e(_num(r.get('cosine_similarity')))}</td><td>{_e(r.get('verdict'))}</td></tr>")
    out.append(f"<details{'' if png else ' open'}><summary>table</summary><table><tr><th>task</th><th>module</th>"
               f"<th>call</th><th>rel_l2</th><th>cosine</th><th>verdict</th></tr>{''.join(rows)}</table></details>")
    return "".join(out) + "</section>"


def _timing_section(summary: dict, plots_ok: bool) -> str:
    rows = timing_rows(summary)
    png = timing_png(summary) if plots_ok else None

    table = "".join(f"<tr><td>{_e(n)}</td>" + "".join(f"<td class=num>{_e(_ms(t.get(k)))}</td>" for k in
                    ("first_call_ms", "median_ms", "p90_ms", "min_ms")) + "</tr>" for n, t in rows.items())
    alt = "timing per task: warm median with its p10-p90 spread and the first (cold) call, ms"
    return (f'<section id="timing"><h2>Timing</h2>{_img(png, alt, "plot") if png else ""}'
            f"<details><summary>table</summary><table><tr><th>task</th><th class=num>first call ms</th>"
            f"<th class=num>median ms</th><th class=num>p90 ms</th><th class=num>min ms</th></tr>"
            f"{table or '<tr><td colspan=5>no timings</td></tr>'}</table></details></section>")


def _kv_table(items) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"


def _fusion_section(summary: dict, fusion) -> str:
    rules = _d(fusion).get("rules") if fusion else None
    if isinstance(rules, list):
        rows = [(r.get("name"), r.get("enabled"), r.get("count"), r.get("kernel") or r.get("kernels"),
                 r.get("accuracy")) for r in rules if isinstance(r, dict)]
    else:
        rows = [(n, True, _d(r).get("count"), _d(r).get("kernel"), None)
                for n, r in _d(_d(summary.get("candidate")).get("fusion_rules")).items()]
    body = "".join(f"<tr><td>{_e(n)}</td><td>{_e(en)}</td><td class=num>{_e(c)}</td><td>{_e(k)}</td><td>{_e(a)}</td>"
                   f"</tr>" for n, en, c, k, a in rows)
    return (f'<section id="fusion"><h2>Fusion decisions</h2><p>spec: '
            f'{_e(_d(summary.get("candidate")).get("fusion"))}</p><table><tr><th>rule</th><th>enabled</th>'
            f'<th>modules</th><th>kernel</th><th>accuracy</th></tr>{body or "<tr><td colspan=5>-</td></tr>"}'
            f"</table></section>")


def render_html(summary: dict, *, divergence=None, recon_images=None, fusion=None) -> str:
    """The page: the first screen (verdict, cause and place, the case matrix, what ran), then the pictures
    (reconstruction strips, error along depth, timing), then the details, collapsed (failures, gate tables per
    case, environment, weights, fusion decisions)."""
    plots_ok = matplotlib_pyplot() is not None
    note = "" if plots_ok else ('<p class="note">matplotlib cannot be imported (it is a dependency of the kit: '
                                'pip install matplotlib): plots are shown as tables.</p>')
    env = environment_of(summary)
    weights = _d(summary.get("weights"))
    synthetic = bool(summary.get("synthetic_weights") or weights.get("kind") == "synthetic")
    details = (_failures_section(summary) + _cases_section(summary)
               + f'<details class="section" id="environment"><summary>Environment</summary>{_kv_table(env.items())}'
                 f'</details><details class="section" id="weights"><summary>Weights</summary>'
                 f'{_kv_table(weights.items())}</details>'
               + f'<details class="section" id="fusion-details"><summary>Fusion decisions</summary>'
                 f'{_fusion_section(summary, fusion)}</details>')
    parts = [glance_html(summary, _e), note, _divergence_section(divergence, plots_ok),
             _recon_section(recon_images, synthetic), _timing_section(summary, plots_ok),
             burn_in_html(summary, _e, plots_ok),
             '<h2 id="details">Details</h2>', details]
    return document(f"VTP verification: {verdict_of(summary, '-')}", "".join(parts) + _OPEN_TARGET,
                    _CSS + GLANCE_CSS)


def write_html_report(path, summary: dict, *, divergence=None, recon_images=None, fusion=None) -> Path:
    """Write report.html atomically; returns its path. recon_images: [{"case", "input", "reference",
    "candidate"}] (3, H, W) ImageNet-normalised tensors; fusion: the fusion_result.json dict."""
    from vtp.io_utils import atomic_write_text

    return atomic_write_text(path, render_html(summary, divergence=divergence, recon_images=recon_images,
                                               fusion=fusion))
