"""report.html: one self-contained page a person reads at a glance (no network, no external CSS/JS).

    from verify.report.html import write_html_report
    write_html_report(out / "report.html", summary, divergence=div, recon_images=images, fusion=fusion_dict)

Sections, in order (each an element with the id shown): the verdict (``verdict``); per case and tensor
the metrics with every gate, threshold and margin (``cases``); for reconstruction, per case: input |
reference | candidate | amplified |difference| heatmap with its scale (``reconstruction``); the error
along depth with the first divergent module marked (``divergence``); first call vs warm median/p90
per task (``timing``); the environment (``environment``), the weights' identity (``weights``) and the
fusion decisions (``fusion``). Images are PNG embedded as base64 ``data:`` URIs. Plots need matplotlib
(optional extra ``[report]``); without it the same data is shown as tables and the page says so.
The summary may be of schema vtp-accuracy-summary/1 or /2; missing fields print as "-".
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from verify.report.fmt import _ms, _num
from verify.report.summary import _d, environment_of, tensor_rows, timing_rows, verdict_of
from verify.divergence import _marked, error_vs_depth_png
from verify.plots import figure_png, matplotlib_pyplot

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;max-width:1400px}
h1{margin:0 0 6px}h2{margin-top:28px;border-bottom:2px solid #dde2ea;padding-bottom:4px}
.verdict{font-size:30px;font-weight:700;padding:10px 18px;border-radius:8px;display:inline-block}
.PASS{background:#d9f2df;color:#14622b}.FAIL{background:#fbdcdc;color:#8d1a1a}.other{background:#eee;color:#444}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #d6dbe3;padding:3px 7px;text-align:left}
th{background:#f3f5f8}td.num{text-align:right;font-family:ui-monospace,monospace}tr.bad td{background:#fff1f1}
.note{background:#fff8e0;border-left:4px solid #e0b400;padding:6px 10px;margin:8px 0}
.strip{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}.strip figure{margin:0}
.strip img{image-rendering:pixelated;border:1px solid #ccc;width:200px;height:auto}
figcaption{font-size:12px;color:#555;max-width:200px}.reasons{color:#8d1a1a;font-size:13px}
img.plot{max-width:100%;border:1px solid #ddd}table.wide{width:100%}td{overflow-wrap:anywhere}
details summary{cursor:pointer}
"""


def _e(x) -> str:
    return html.escape("-" if x is None else str(x))


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


def recon_strip(entry: dict) -> str:
    """input | reference | candidate | amplified |difference| (in 0-255 pixel units) | heatmap, with the scale."""
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
                ("amplified", amplified, f"|candidate - reference| x {gain:.3g} (white = {peak:.3g}/255)"),
                ("heatmap", heat, f"heatmap of the channel mean: black 0, white {peak:.3g}/255; mean {mean:.3g}/255")]
    figs = "".join(f'<figure>{_img(_array_png(arr), name)}<figcaption>{_e(text)}</figcaption></figure>'
                   for name, arr, text in captions)
    return f'<h3>{_e(entry.get("case", "-"))}</h3><div class="strip">{figs}</div>'


def timing_png(summary: dict):
    """First call vs warm median (with p90 whisker) per task, ms; None without matplotlib or timings."""
    plt = matplotlib_pyplot()
    rows = timing_rows(summary)
    if plt is None or not rows:
        return None
    names = list(rows)
    val = lambda n, k: rows[n].get(k) if isinstance(rows[n].get(k), (int, float)) else 0.0  # noqa: E731
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [val(n, "first_call_ms") for n in names], width=0.4, label="first call")
    med = [val(n, "median_ms") for n in names]
    err = [max(val(n, "p90_ms") - m, 0.0) for n, m in zip(names, med)]
    ax.bar([x + 0.2 for x in xs], med, width=0.4, yerr=[[0] * len(med), err], capsize=4, label="warm median (p90)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("timing per task")
    ax.legend(fontsize=8)
    return figure_png(plt, fig)


# --------------------------------------------------------------------------------------------- sections
def _verdict_section(summary: dict) -> str:
    v = verdict_of(summary, "-")
    cand = _d(summary.get("candidate"))
    reasons = (_d(summary.get("overall")).get("reasons") or [])[:20]
    out = ['<section id="verdict"><h1>VTP verification report</h1>',
           f'<div class="verdict {v if v in ("PASS", "FAIL") else "other"}">{_e(v)}</div>',
           f'<p>candidate: {_e(cand.get("device"))} {_e(cand.get("precision"))} fusion={_e(cand.get("fusion"))}; '
           f'reference: CPU fp32 unfused; schema {_e(summary.get("schema"))}; created {_e(summary.get("created"))}</p>']
    if cand.get("injected_fault"):
        out.append(f'<p class="note">injected fault (harness self-test): {_e(cand["injected_fault"])}</p>')
    if summary.get("synthetic_weights") or _d(summary.get("weights")).get("kind") == "synthetic":
        out.append('<p class="note">SYNTHETIC weights: the numbers measure the computation, not the published '
                   'model.</p>')
    if reasons:
        out.append("<ul class='reasons'>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    return "".join(out) + "</section>"


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
    return (f"<details{' open' if failed else ''}><summary>{head}</summary><table><tr><th>gate</th><th>value</th>"
            f"<th>threshold</th><th>margin</th><th></th></tr>{rows}</table></details>")


def _cases_section(summary: dict) -> str:
    rows = tensor_rows(summary)
    head = ("<tr><th>case</th><th>tensor</th><th>verdict</th><th>rel_err</th><th>cosine</th><th>rel_l2</th>"
            "<th>max_abs</th><th>gates (value vs threshold, margin)</th></tr>")
    body = []
    for r in rows:
        gates = _gates_cell(r["gates"])
        cls = ' class="bad"' if r["verdict"] not in ("PASS",) else ""
        body.append(f"<tr{cls}><td>{_e(r['case'])}</td><td>{_e(r['tensor'])}</td><td>{_e(r['verdict'])}</td>"
                    + "".join(f'<td class="num">{_e(_num(r[k]))}</td>' for k in ("rel_err", "cosine", "rel_l2", "max_abs"))
                    + f"<td>{gates}</td></tr>")
    checks = [c for c in summary.get("checks") or [] if isinstance(c, dict)]
    extra = ""
    if checks:
        extra = ("<h3>checks</h3><table><tr><th>check</th><th>id</th><th>verdict</th></tr>"
                 + "".join(f"<tr{' class=bad' if c.get('verdict') != 'PASS' else ''}><td>{_e(c.get('check'))}</td>"
                           f"<td>{_e(c.get('id'))}</td><td>{_e(c.get('verdict'))}</td></tr>" for c in checks)
                 + "</table>")
    return (f'<section id="cases"><h2>Cases and tensors</h2><table class="wide">{head}{"".join(body)}</table>'
            f'{extra if rows or checks else "<p>no tensor was compared</p>"}</section>')


def _recon_section(recon_images) -> str:
    if not recon_images:
        return '<section id="reconstruction"><h2>Reconstruction</h2><p>no reconstruction images given</p></section>'
    return ('<section id="reconstruction"><h2>Reconstruction</h2><p>Pixels in 0-255 after denormalisation; the '
            'difference is amplified to the full range, its scale under each picture.</p>'
            + "".join(recon_strip(e) for e in recon_images) + "</section>")


def _divergence_section(divergence, plots_ok: bool) -> str:
    if not divergence:
        return ('<section id="divergence"><h2>Error along depth</h2><p>not located in this run (it runs when the '
                'verdict is FAIL, or with --locate)</p></section>')
    from verify.divergence import summary_lines

    out = ['<section id="divergence"><h2>Error along depth</h2>',
           "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in summary_lines(divergence)) + "</ul>"]
    png = error_vs_depth_png(divergence) if plots_ok else None
    if png:
        out.append(_img(png, "error along depth", "plot"))
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
    return (f'<section id="timing"><h2>Timing</h2>{_img(png, "timing", "plot") if png else ""}'
            f"<table><tr><th>task</th><th>first call ms</th><th>median ms</th><th>p90 ms</th><th>min ms</th></tr>"
            f"{table or '<tr><td colspan=5>no timings</td></tr>'}</table></section>")


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
    plots_ok = matplotlib_pyplot() is not None
    note = "" if plots_ok else ('<p class="note">matplotlib is not installed: plots are shown as tables '
                                '(pip install "vtp-ascend[report]" or pip install matplotlib).</p>')
    env = environment_of(summary)
    weights = _d(summary.get("weights"))
    parts = [_verdict_section(summary), note, _cases_section(summary), _recon_section(recon_images),
             _divergence_section(divergence, plots_ok), _timing_section(summary, plots_ok),
             f'<section id="environment"><h2>Environment</h2>{_kv_table(env.items())}</section>',
             f'<section id="weights"><h2>Weights</h2>{_kv_table(weights.items())}</section>',
             _fusion_section(summary, fusion)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>VTP verification: "
            f"{_e(verdict_of(summary, '-'))}</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_html_report(path, summary: dict, *, divergence=None, recon_images=None, fusion=None) -> Path:
    """Write report.html atomically; returns its path. recon_images: [{"case", "input", "reference",
    "candidate"}] (3, H, W) ImageNet-normalised tensors; fusion: the fusion_result.json dict."""
    from vtp.io_utils import atomic_write_text

    return atomic_write_text(path, render_html(summary, divergence=divergence, recon_images=recon_images,
                                               fusion=fusion))
