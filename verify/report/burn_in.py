"""The report's burn-in and device-checks section: latency and memory over time (one PNG), the burn-in's
findings, the spot checks against the published peaks, and the CONTENDED mark of the timings.

    html = burn_in_html(summary, escape, plots_ok)     # "" when the run had no level sections
"""

from __future__ import annotations

import base64
import math

from verify.plots import figure_png, matplotlib_pyplot


def burn_in_png(section: dict):
    """Latency (p50 and p99 of every call over its task's baseline, per window) and memory (MiB, median and
    max per window) against time; a third panel with the temperature, clock and power when sensors gave
    them. None without matplotlib or windows."""
    plt = matplotlib_pyplot()
    windows = ((section or {}).get("latency") or {}).get("windows") or []
    if plt is None or not windows:
        return None
    t = [(w["t_start_s"] + w["t_end_s"]) / 2 for w in windows]
    sensors = [s for s in ((section.get("sensors") or {}).get("samples") or []) if isinstance(s, dict)]
    numeric = sorted({k for s in sensors for k, v in s.items() if k != "t_s" and isinstance(v, (int, float))})
    rows = 3 if numeric else 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.3 * rows + 0.6), sharex=True)
    ax = axes[0]
    nan = lambda v: v if isinstance(v, (int, float)) else math.nan  # noqa: E731
    ax.plot(t, [nan(w["p50_ratio"]) for w in windows], marker="o", ms=3, label="p50")
    ax.plot(t, [nan(w["p99_ratio"]) for w in windows], marker=".", ms=3, alpha=0.7, label="p99")
    bound = (section.get("latency") or {}).get("bound")
    if bound:
        ax.axhline(bound, color="#b22222", ls="--", lw=1, label=f"drift bound {bound:g}x")
    ax.set_ylabel("latency / baseline")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"burn-in: {section.get('calls')} calls, {section.get('verdict')}")
    ax = axes[1]
    mib = lambda v: v / 2 ** 20 if isinstance(v, (int, float)) else math.nan  # noqa: E731
    ax.plot(t, [mib(w.get("memory_median_bytes")) for w in windows], marker="o", ms=3, label="median")
    ax.plot(t, [mib(w.get("memory_max_bytes")) for w in windows], marker=".", ms=3, alpha=0.7, label="max")
    if any(w.get("reserved_max_bytes") for w in windows):
        ax.plot(t, [mib(w.get("reserved_max_bytes")) for w in windows], ls=":", label="reserved (max)")
    first = section.get("first_failure")
    if first and isinstance(first.get("t_s"), (int, float)):
        for a in axes:
            a.axvline(first["t_s"], color="#b22222", lw=1)
        axes[0].annotate(f"first failing call {first.get('call')}", (first["t_s"], axes[0].get_ylim()[1]),
                         fontsize=8, color="#b22222", va="top")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8, loc="upper left")
    if numeric:
        ax = axes[2]
        for key in numeric[:4]:
            ax.plot([s["t_s"] for s in sensors], [nan(s.get(key)) for s in sensors], marker=".", label=key)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylabel("sensors")
    axes[-1].set_xlabel("seconds since the burn-in started")
    return figure_png(plt, fig)


def _mib(v) -> str:
    return f"{v / 2 ** 20:.1f} MiB" if isinstance(v, (int, float)) else "-"


def burn_in_html(summary: dict, e, plots_ok: bool = True) -> str:
    """The section (escaped with ``e``); "" when the summary has no level, burn-in or spot checks."""
    level, burn, spot = summary.get("level"), summary.get("burn_in"), summary.get("spot_checks")
    contention = (summary.get("timings") or {}).get("contention") or {}
    if not (level or burn or spot):
        return ""
    out = ['<section id="burn-in"><h2>Level, burn-in and device checks</h2>']
    if level:
        out.append(f"<p>level {e(level.get('level'))} ({e(level.get('name'))}): {e(level.get('content'))}; profile "
                   f"{e(level.get('profile'))}; burn-in {e(level.get('burn_in_s') or 'none')} s</p>")
    if contention.get("contended"):
        out.append(f'<p class="bad">timings {e(contention.get("label"))}: {e(contention.get("note"))}</p>')
    if burn and burn.get("verdict") == "SKIPPED":
        out.append(f"<p>burn-in {e(burn.get('note'))}</p>")
    elif burn:
        png = burn_in_png(burn) if plots_ok else None
        if png:
            out.append(f'<img class="plot" alt="burn-in latency and memory over time" '
                       f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
        mem, lat, over = burn.get("memory") or {}, burn.get("latency") or {}, burn.get("overhead") or {}
        first = burn.get("first_failure") or {}
        frac = over.get("fraction_of_compute")
        rows = [("verdict", burn.get("verdict")), ("calls", f"{burn.get('calls')} in {burn.get('elapsed_s', 0):.0f} s"),
                ("first failing call", f"{first.get('call')} at {first.get('t_s')} s ({first.get('task')}, "
                                       f"{first.get('check')})" if first else "none"),
                ("repeat", f"{(burn.get('repeat') or {}).get('bit_identical')} bit-identical, "
                           f"{(burn.get('repeat') or {}).get('failed')} failed"),
                ("reference", f"{(burn.get('reference') or {}).get('judged')} judged, "
                              f"{(burn.get('reference') or {}).get('failed')} failed"),
                ("memory growth", f"{_mib(mem.get('growth_bytes'))} (bound {_mib(mem.get('bound_bytes'))}; "
                                  f"{mem.get('kind')})"),
                ("latency drift", f"{lat.get('drift_ratio'):.2f}x (bound {lat.get('bound')}x)"
                 if isinstance(lat.get("drift_ratio"), (int, float)) else "-"),
                ("overhead", f"{frac:.1%} of the model's compute" if isinstance(frac, (int, float)) else "-"),
                ("sensors", (burn.get("sensors") or {}).get("source") or (burn.get("sensors") or {}).get("note"))]
        out.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>")
        items = (burn.get("reasons") or [])[:10] + [f"finding: {f}" for f in burn.get("findings") or []]
        if items:
            out.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in items) + "</ul>")
    if spot:
        body = []
        for key, fig in (spot.get("figures") or {}).items():
            value = fig.get("tflops", fig.get("gbps"))
            frac = fig.get("fraction_of_peak")
            body.append(f"<tr><td>{e(key)}</td><td class=num>{e(f'{value:.3f}' if value is not None else '-')}</td>"
                        f"<td class=num>{e(fig.get('peak') or '-')}</td>"
                        f"<td class=num>{e(f'{frac:.0%}' if frac is not None else '-')}</td>"
                        f"<td>{'FLAGGED' if fig.get('flagged') else e(fig.get('note') or '')}</td></tr>")
        out.append(f"<p>spot checks on {e(spot.get('device_name'))}: {e(spot.get('peak_note'))}</p><table><tr>"
                   "<th>figure</th><th class=num>achieved</th><th class=num>published peak</th>"
                   f"<th class=num>fraction</th><th></th></tr>{''.join(body)}</table>")
    return "".join(out) + "</section>"
