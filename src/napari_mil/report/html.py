"""One self-contained HTML page of a :class:`ReviewReport` (pictures as ``data:`` URIs)."""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any

from .content import ReviewReport, classes_label, format_value, reviewed_counts

__all__ = ["render_html", "DATA_SCRIPT_ID"]

#: id of the ``<script type="application/json">`` element holding the report's numbers
DATA_SCRIPT_ID = "napari-mil-report-data"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:4px;
margin-top:28px;font-size:1.2em}.sub{color:#666;margin-top:2px}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}
td.l,th.l{text-align:left}.maps{display:flex;flex-wrap:wrap;gap:12px}
.maps figure{margin:0;width:520px}.maps img{width:100%}figcaption{font-size:.8em;color:#555}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.tile{width:150px;font-size:.75em;text-align:center;
border:1px solid #ddd;padding:4px}.tile img{width:140px;height:140px;image-rendering:auto}
.mark{font-size:1.4em;font-weight:bold}.agree{color:#1a8f3a}.disagree{color:#c62828}
.none{color:#999}.curves{display:flex;gap:12px;flex-wrap:wrap}pre{background:#f7f7f7;
padding:8px;font-size:.75em;overflow-x:auto;white-space:pre-wrap}
@media print{.maps figure{width:48%}body{margin:0}}
"""


def _img(data: bytes, alt: str, cls: str = "", mime: str = "image/png") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{escape(alt)}" src="data:{mime};base64,{b64}">'


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="l">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
                 for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{escape(v)}</td>' if i < left else f"<td>{escape(v)}</td>"
                         for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _summary(r: ReviewReport) -> str:
    rows = [[c, format_value(p)] for c, p in zip(r.class_names, r.probabilities, strict=True)]
    return ('<section id="summary"><h2>Slide prediction</h2>'
            f"<p>Predicted class: <b>{escape(r.predicted_class or '—')}</b></p>"
            '<div class="curves">' + _table(["class", "probability"], rows)
            + _img(r.probabilities_png, "slide probabilities") + "</div></section>")


def _maps(r: ReviewReport) -> str:
    figs = []
    for m in r.maps:
        st = m.stats
        cap = (f"{escape(m.name)} [{escape(m.scale)}]: {st.get('tiles', 0)} tiles, "
               f"min {format_value(st.get('min'))}, mean {format_value(st.get('mean'))}, "
               f"max {format_value(st.get('max'))}"
               + (f"; each value painted over its {escape(m.footprint)}" if m.footprint else ""))
        figs.append(f"<figure>{_img(m.png, f'{m.name} [{m.scale}] over the slide')}"
                    f"<figcaption>{cap}</figcaption></figure>")
    return ('<section id="heatmaps"><h2>Heatmaps over the slide</h2>'
            "<p>Each tile map of the result drawn over the slide thumbnail (level-0 pixel "
            "axes). Instance scores use a fixed 0–1 scale; attention is scaled to its own "
            "minimum–maximum.</p>"
            f'<div class="maps">{"".join(figs)}</div></section>')


def _attention(r: ReviewReport) -> str:
    if not r.attention_rows:
        return ('<section id="attention"><h2>Attention per magnification</h2>'
                "<p>This model reports no attention.</p></section>")
    rows = [[a["scale"], str(a["tiles"]), format_value(a["max"]), format_value(a["top10_share"]),
             format_value(a["effective_tiles"])] for a in r.attention_rows]
    return ('<section id="attention"><h2>Attention per magnification</h2>'
            "<p><i>top-10 share</i>: fraction of the attention on the 10 most attended tiles; "
            "<i>effective tiles</i>: 1/Σw² (how many tiles the attention is spread over).</p>"
            + _table(["scale", "tiles", "max weight", "top-10 share", "effective tiles"], rows)
            + "</section>")


def _gallery(r: ReviewReport) -> str:
    if not r.gallery:
        return ""
    agree, disagree, none = reviewed_counts(r.gallery)
    cells = []
    for t in r.gallery:
        sym, cls = {"agree": ("✓", "agree"), "disagree": ("✗", "disagree")}.get(
            t.mark or "", ("–", "none"))
        cells.append(
            f'<div class="tile" data-index="{t.index}">'
            f'{_img(t.jpeg, f"top {t.rank} tile", mime="image/jpeg")}'
            f"<div>#{t.rank} · {escape(t.source)} {format_value(t.value)}</div>"
            f"<div>x {t.x:,} y {t.y:,} [{escape(t.scale)}]</div>"
            f'<div class="mark {cls}" title="{escape(t.mark or "not reviewed")}">{sym}</div></div>')
    src = f" Marks from {escape(r.marks_source)}." if r.marks_source else ""
    return (f'<section id="gallery"><h2>Top {len(r.gallery)} tiles and the reviewer\'s marks</h2>'
            f"<p>✓ agree {agree} · ✗ disagree {disagree} · not reviewed {none}.{src}</p>"
            f'<div class="gallery">{"".join(cells)}</div></section>')


def _agreement(r: ReviewReport) -> str:
    if not r.agreement:
        return ('<section id="agreement"><h2>Agreement with annotations</h2>'
                "<p>No annotations were given (<code>--annotations</code>).</p></section>")
    head = ["layer", "scale", "classes", "tiles", "pos", "AUROC", "AP", "Dice", "IoU",
            "mass in", "top-k hit"]
    rows = [[a.layer, a.scale or "-", classes_label(a.classes), str(a.n_tiles), str(a.n_positive),
             format_value(a.auroc), format_value(a.average_precision), format_value(a.dice),
             format_value(a.iou), format_value(a.mass_inside), format_value(a.top_k_hit_rate)]
            for a in r.agreement]
    s = r.settings
    pos = "+".join(r.positive_classes) or "(every polygon: no classes)"
    left = f"; not positive: {escape(', '.join(r.classes_left_out))}" if r.classes_left_out else ""
    curves = "".join(_img(p, alt) for p, alt in ((r.roc_png, "ROC curves"),
                                                 (r.pr_png, "precision-recall curves")) if p)
    return ('<section id="agreement"><h2>Agreement with annotations</h2>'
            f"<p>Annotations: {escape(r.annotations_source)}. Positive classes: "
            f"{escape(pos)}{left}. Threshold {s.threshold:g} on normalised values, top-k "
            f"{s.top_k}, a tile is annotated when ≥ {s.min_coverage:g} of it is covered.</p>"
            + _table(head, rows, left=3) + f'<div class="curves">{curves}</div></section>')


def _checkpoint_text(run: dict) -> str:
    ckpt = run.get("checkpoint") or {}
    if not ckpt:
        return "— (not recorded with the result)"
    return f"{ckpt.get('file') or '?'} (content hash {str(ckpt.get('sha') or '?')})"


def _provenance(r: ReviewReport) -> str:
    p = r.provenance
    sl, res = p["slide"], p["result"]
    card = p.get("model_card") or {}
    ext = p.get("extractor_card") or card.get("extractor") or {}
    rows = [
        ["slide file", str(sl["file"])], ["slide content hash", str(sl["content_hash"])],
        ["pixel size", f"{sl['mpp']:g} µm/px"],
        ["dimensions", f"{sl['dimensions_px'][0]:,} × {sl['dimensions_px'][1]:,} px"],
        ["result file", str(res["file"] or "—")], ["result created", str(res["created_utc"])],
        ["analysis time", f"{res['elapsed_s']:g} s"],
        ["complete", "yes" if res["complete"] else "no (partial result)"],
        ["damaged slide tiles", str(res["damaged_tiles"])],
        ["model", str(card.get("architecture", "—"))],
        ["checkpoint", _checkpoint_text(p.get("run") or {})],
        ["extractor", str(ext.get("name", "—") if isinstance(ext, dict) else ext)],
        ["result written by", f"napari-mil {res['written_by']}" if res["written_by"] else "—"],
        ["report written by", f"napari-mil {p['software']['napari_mil']}"],
        ["report generated", r.generated_utc],
    ]

    def block(title: str, obj: Any) -> str:
        return (f"<details><summary>{escape(title)}</summary>"
                f"<pre>{escape(json.dumps(obj, indent=1, default=str))}</pre></details>")

    return ('<section id="provenance"><h2>Provenance</h2>'
            + _table(["what", "value"], rows, left=2)
            + block("model card", card) + block("extractor card", p.get("extractor_card") or {})
            + block("run settings", p.get("settings") or {}) + "</section>")


def render_html(report: ReviewReport) -> str:
    """The report as one HTML document; every picture embedded, the numbers also as JSON."""
    data = json.dumps(report.data(), default=str).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Review report · {escape(report.slide_name)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>Review report · {escape(report.slide_name)}</h1>"
        f'<p class="sub">napari-mil · generated {escape(report.generated_utc)}</p></header>'
        + _summary(report) + _maps(report) + _attention(report) + _gallery(report)
        + _agreement(report) + _provenance(report)
        + f'<script type="application/json" id="{DATA_SCRIPT_ID}">{data}</script>'
        + "</body></html>\n"
    )
