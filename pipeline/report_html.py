"""`foil report`: one self-contained HTML page of a dataset, for a person to look at.

The page holds what the catalog knows, drawn: the funnel; histograms of the scores curation
decides on (size, aspect ratio, language, CLIP score), with the recipe's thresholds marked; crawl
outcomes per status and error kind; grids of kept and dropped images with their captions and drop
reasons; text negatives beside their positives with the edit highlighted; image negatives and
Img-Diff pairs with their boxes drawn, when those tables exist; training curves and the eval
table. It opens from disk with no network: every image and plot is inlined as a `data:` URI, the
CSS is inline and there is no script. Plots are matplotlib figures (Agg, through `Figure`, so no
pyplot state is shared); images are thumbnails and every grid is capped, so the page stays a few
MB whatever the dataset's size.

Sections are a registry (`SECTIONS`): each reads through one read-only catalog connection and
returns its HTML, or None when its tables are absent (the section is then listed as skipped, with
why, at the end of the page and in the result).
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.core import schema as S
from pipeline.core.catalog import CLIP_SCORE_FROM, Catalog
from pipeline.core.store import Dataset

REPORT_FILE = "report.html"
THUMB_PX = 112  # longest side of a grid thumbnail
PAIR_PX = 200  # longest side of an image in a pair (negatives, Img-Diff), where boxes must be legible
PLOT_DPI = 90

BOX_COLORS = ("#e4002b", "#0072ce", "#f2a900", "#00a651", "#7a3fbf")


@dataclass(frozen=True)
class ReportLimits:
    """How much of a dataset one page shows."""

    kept: int = 24  # images in the kept grid
    dropped: int = 24  # rows in the dropped grid (spread over the drop reasons)
    negatives_per_kind: int = 4  # text negatives shown per kind
    negatives: int = 44  # text negatives in all
    image_negatives: int = 12
    imgdiff_pairs: int = 12
    curves: int = 8  # training metrics plotted


@dataclass
class ReportResult:
    path: str
    bytes: int
    seconds: float
    images: int  # <img> elements on the page (plots and thumbnails)
    sections: dict[str, str] = field(default_factory=dict)  # section -> "ok" | "skipped: why"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "seconds": round(self.seconds, 2), "images": self.images, "sections": self.sections}


# -- reading ---------------------------------------------------------------------------------
class _Reader:
    """Queries over one read-only catalog connection, and which views and tables exist."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.con = catalog.connect()
        names = self.con.sql(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal UNION SELECT table_name FROM duckdb_tables()"
        ).fetchall()
        self.names = {n for (n,) in names}
        self.images = 0

    def has(self, *names: str) -> bool:
        return all(n in self.names for n in names)

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def scalar(self, sql: str) -> Any:
        return self.con.execute(sql).fetchone()[0]

    def images_of(self, table: str, ids: list[str], column: str = S.IMAGE, key: str = S.SAMPLE_ID) -> dict[str, bytes]:
        if not ids:
            return {}
        got = self.con.execute(f'SELECT "{key}", "{column}" FROM "{table}" WHERE "{key}" IN (SELECT unnest(?::VARCHAR[]))', [ids]).fetchall()
        return {k: v for k, v in got if v is not None}

    def close(self) -> None:
        self.con.close()


# -- drawing ---------------------------------------------------------------------------------
def _data_uri(blob: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode('ascii')}"


def thumbnail(blob: bytes | None, px: int = THUMB_PX, boxes: list[list[int]] | None = None) -> str | None:
    """A PNG/JPEG data URI of `blob` scaled to at most `px` (boxes drawn at full size first), or
    None when the bytes do not decode."""
    if not blob:
        return None
    from PIL import Image, ImageDraw

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            im = im.convert("RGBA" if has_alpha else "RGB")
    except Exception:  # a row's bytes that no decoder reads: shown as text, never as a broken <img>
        return None
    if boxes:
        draw = ImageDraw.Draw(im)
        width = max(2, round(max(im.size) / 96))
        for i, box in enumerate(boxes):
            if box is not None and len(box) == 4:
                draw.rectangle([int(v) for v in box], outline=BOX_COLORS[i % len(BOX_COLORS)], width=width)
    scale = px / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    elif scale >= 2:  # tiny images (emoji at 32 px) stay crisp when shown larger
        factor = int(scale)
        im = im.resize((im.width * factor, im.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    if has_alpha:
        im.save(buf, format="PNG", optimize=True)
        return _data_uri(buf.getvalue(), "image/png")
    im.save(buf, format="JPEG", quality=82)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _figure(width: float = 4.4, height: float = 2.7, fit_labels: bool = False) -> Any:
    """A figure on its own (no pyplot state). Fixed margins unless `fit_labels` (bar charts with
    long category names): constrained layout costs about as much as drawing the plot again."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=PLOT_DPI, layout="constrained" if fit_labels else None)
    if not fit_labels:
        fig.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.88)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _data_uri(buf.getvalue(), "image/png")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


class _Page:
    """Collects the HTML of one report, counting its images."""

    def __init__(self) -> None:
        self.images = 0

    def img(self, uri: str | None, alt: str, cls: str = "") -> str:
        if uri is None:
            return f'<div class="noimg {cls}">{_e(alt)}</div>'
        self.images += 1
        return f'<img class="{cls}" src="{uri}" alt="{_e(alt)}">'

    def plot(self, fig: Any, alt: str) -> str:
        return self.img(_png(fig), alt, "plot")


def table_html(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 4) -> str:
    if not rows:
        return '<p class="muted">(no rows)</p>'
    cols = columns or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{round(v, digits)}"
        return _e(v)

    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def highlight_edit(caption: str, negative: str, span: list[int] | None, edit_to: str | None) -> tuple[str, str]:
    """(positive, negative) as HTML with the edited characters marked.

    `span` holds (start, end) pairs on the positive and `edit_to` their new texts joined by '|'
    (pipeline.negatives.text); the marks are placed only when applying them to the positive
    rebuilds the negative exactly, so a mark never points at the wrong words."""
    pairs = list(zip(span[0::2], span[1::2])) if span else []
    news = edit_to.split("|") if edit_to is not None else []
    if not pairs or len(news) != len(pairs):
        return _e(caption), _e(negative)
    parts, last, neg_ranges, length = [], 0, [], 0
    for (start, end), new in zip(pairs, news):
        if not 0 <= last <= start <= end <= len(caption):
            return _e(caption), _e(negative)
        parts.append(caption[last:start])
        length += start - last
        neg_ranges.append((length, length + len(new)))
        parts.append(new)
        length += len(new)
        last = end
    if "".join(parts) + caption[last:] != negative:
        return _e(caption), _e(negative)

    def mark(text: str, ranges: list[tuple[int, int]], tag: str) -> str:
        out, pos = [], 0
        for start, end in ranges:
            out.append(_e(text[pos:start]))
            out.append(f"<{tag}>{_e(text[start:end])}</{tag}>" if end > start else '<span class="caret">&#8248;</span>')
            pos = end
        return "".join(out) + _e(text[pos:])

    return mark(caption, pairs, "del"), mark(negative, neg_ranges, "ins")


# -- sections --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    key: str
    title: str
    build: Callable[[_Reader, _Page, ReportLimits], str | None]


def _overview(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    rows = []
    for name in sorted(r.catalog.dataset.tables()):
        if r.has(name):
            rows.append({"table": name, "rows": r.scalar(f'SELECT count(*) FROM "{name}"')})
    thresholds = r.catalog.thresholds()
    th = ", ".join(f"{k}={v}" for k, v in thresholds.items())
    return table_html(rows) + f'<p class="muted">curation thresholds: {_e(th)}</p>'


def _funnel(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("funnel"):
        return None
    rows = r.rows("SELECT reason, rows FROM funnel")
    if not rows:
        return None
    fig = _figure(6.4, max(1.8, 0.5 + 0.32 * len(rows)), fit_labels=True)
    ax = fig.subplots()
    reasons = [x["reason"] for x in rows][::-1]
    counts = [x["rows"] for x in rows][::-1]
    colors = ["#2a9d8f" if x == "kept" else "#e76f51" for x in reasons]
    ax.barh(reasons, counts, color=colors)
    for y, c in enumerate(counts):
        ax.text(c, y, f" {c}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    ax.set_title("rows removed per reason, in rule order; kept")
    ax.margins(x=0.12)
    return f'<div class="row">{page.plot(fig, "funnel")}{table_html(rows)}</div>'


def _crawl(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has(S.RAW):
        return None
    status = r.rows(f"SELECT {S.STATUS}, count(*) AS rows FROM raw GROUP BY ALL ORDER BY rows DESC, {S.STATUS}")
    kinds = r.rows(
        f"SELECT {S.STATUS}, coalesce({S.ERROR_KIND}, '') AS {S.ERROR_KIND}, count(*) AS rows FROM raw "
        f"WHERE {S.STATUS} <> '{S.STATUS_SUCCESS}' GROUP BY ALL ORDER BY rows DESC LIMIT 30"
    )
    fig = _figure(5.0, max(1.8, 0.6 + 0.32 * len(status)), fit_labels=True)
    ax = fig.subplots()
    labels = [x[S.STATUS] for x in status][::-1]
    counts = [x["rows"] for x in status][::-1]
    ax.barh(labels, counts, color=["#2a9d8f" if s == S.STATUS_SUCCESS else "#e9c46a" for s in labels])
    for y, c in enumerate(counts):
        ax.text(c, y, f" {c}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    ax.set_title("crawl outcome per status")
    ax.margins(x=0.12)
    summary = ""
    if r.has("crawl_summary"):
        summary = table_html(r.rows("SELECT * FROM crawl_summary"))
    failures = f"<h3>failures by error kind</h3>{table_html(kinds)}" if kinds else '<p class="muted">every url downloaded.</p>'
    return f'<div class="row">{page.plot(fig, "crawl outcomes")}<div>{summary}{failures}</div></div>'


def _histogram(page: _Page, values: list[float], title: str, xlabel: str, cuts: list[tuple[float, str]], bins: int = 30, log: bool = False) -> str:
    fig = _figure()
    ax = fig.subplots()
    ax.hist(values, bins=bins, color="#457b9d")
    for value, label in cuts:
        ax.axvline(value, color="#e63946", linestyle="--", linewidth=1.2, label=label)
    if cuts:
        ax.legend(fontsize=7)
    if log:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return page.plot(fig, title)


def _scores(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("curation"):
        return None
    rows = r.rows(
        "SELECT least(width, height) AS side, greatest(aspect_ratio, 1 / aspect_ratio) AS aspect, language, "
        "language_score, clip_score FROM curation WHERE width IS NOT NULL AND aspect_ratio > 0"
    )
    if not rows:
        return None
    t = r.catalog.thresholds()
    plots = [
        _histogram(page, [x["side"] for x in rows], "image size (smaller side)", "pixels",
                   [(min(t["min_width"], t["min_height"]), "min size")]),
        _histogram(page, [x["aspect"] for x in rows], "aspect ratio (long / short side)", "ratio",
                   [(t["max_aspect_ratio"], "max aspect ratio")]),
    ]
    langs: dict[str, int] = {}
    for x in rows:
        langs[x["language"] or "?"] = langs.get(x["language"] or "?", 0) + 1
    top = sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
    fig = _figure()
    ax = fig.subplots()
    ax.bar([k for k, _ in top], [v for _, v in top], color="#8ab17d")
    ax.set_title("caption language (langid)", fontsize=10)
    ax.set_ylabel("rows")
    plots.append(page.plot(fig, "caption language"))
    english = [x["language_score"] for x in rows if x["language"] == "en" and x["language_score"] is not None]
    if english:
        cuts = [(t["min_english_score"], "min English score")] if t["min_english_score"] > 0 else []
        plots.append(_histogram(page, english, "English score of English captions", "langid probability", cuts))
    clip = [x["clip_score"] for x in rows if x["clip_score"] is not None]
    if clip:
        cuts = [(t["min_clip_score"], "min CLIP score")] if t["min_clip_score"] > -1 else []
        source = t[CLIP_SCORE_FROM]
        plots.append(_histogram(page, clip, f"CLIP score ({source})", "image-text cosine", cuts))
    return '<div class="grid plots">' + "".join(plots) + "</div>"


def _card(page: _Page, uri: str | None, caption: str | None, note: str | None = None, alt: str = "no image") -> str:
    note_html = f'<div class="reason">{_e(note)}</div>' if note else ""
    return f'<figure class="card">{page.img(uri, alt, "thumb")}<figcaption>{_e(caption)}{note_html}</figcaption></figure>'


def _samples(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("curation", S.RAW):
        return None
    kept = r.rows(f"SELECT sample_id, caption FROM curation WHERE drop_reason IS NULL ORDER BY md5(sample_id) LIMIT {limits.kept}")
    # dropped rows spread over the reasons (a few of each) rather than all of the largest one
    dropped = r.rows(
        "SELECT sample_id, caption, drop_reason, status, error FROM curation WHERE drop_reason IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY drop_reason ORDER BY md5(sample_id)) <= 4 "
        f"ORDER BY drop_reason, md5(sample_id) LIMIT {limits.dropped}"
    )
    images = r.images_of(S.RAW, [x[S.SAMPLE_ID] for x in kept + dropped if x.get(S.STATUS, S.STATUS_SUCCESS) == S.STATUS_SUCCESS])
    kept_html = "".join(_card(page, thumbnail(images.get(x[S.SAMPLE_ID])), x[S.CAPTION]) for x in kept)
    dropped_html = "".join(
        _card(page, thumbnail(images.get(x[S.SAMPLE_ID])), x[S.CAPTION], x["drop_reason"] + (f": {x['error'][:80]}" if x["error"] else ""),
              alt="not downloaded" if x[S.STATUS] != S.STATUS_SUCCESS else "undecodable")
        for x in dropped
    )
    total = r.scalar("SELECT count(*) FROM curation WHERE drop_reason IS NULL")
    return (
        f"<h3>kept ({len(kept)} of {total})</h3><div class=\"grid\">{kept_html or '<p class=muted>none</p>'}</div>"
        f"<h3>dropped, with the reason</h3><div class=\"grid\">{dropped_html or '<p class=muted>none dropped</p>'}</div>"
    )


def _text_negatives(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("negatives"):
        return None
    rows = r.rows(
        f"SELECT sample_id, kind, caption, negative_caption, edit_span, edit_to, generator FROM negatives "
        f"QUALIFY row_number() OVER (PARTITION BY kind ORDER BY md5(sample_id || kind)) <= {limits.negatives_per_kind} "
        f"ORDER BY kind, md5(sample_id || kind) LIMIT {limits.negatives}"
    )
    if not rows:
        return None
    images = r.images_of(S.RAW, sorted({x[S.SAMPLE_ID] for x in rows})) if r.has(S.RAW) else {}
    items = []
    for x in rows:
        pos, neg = highlight_edit(x[S.CAPTION] or "", x[S.NEG_CAPTION] or "", x[S.EDIT_SPAN], x[S.EDIT_TO])
        items.append(
            f'<div class="neg">{page.img(thumbnail(images.get(x[S.SAMPLE_ID]), 64), "positive image", "small")}'
            f'<div><div class="kind">{_e(x[S.KIND])} <span class="muted">{_e(x[S.GENERATOR])}</span></div>'
            f'<div class="pos">{pos}</div><div class="negtext">{neg}</div></div></div>'
        )
    counts = table_html(r.rows("SELECT * FROM neg_text_kinds")) if r.has("neg_text_kinds") else ""
    return f'{counts}<div class="negs">{"".join(items)}</div>'


def _image_negatives(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has(S.NEG_IMAGE):
        return None
    counts = r.rows(
        f"SELECT {S.METHOD}, {S.KIND}, count(*) AS rows, count(*) FILTER (WHERE {S.TRAINABLE}) AS trainable, "
        f"round(avg({S.SCORE_NEGATIVE} - {S.SCORE_POSITIVE}), 4) AS mean_margin FROM neg_image GROUP BY ALL ORDER BY ALL"
    )
    rows = r.rows(
        f"SELECT sample_id, {S.KIND}, {S.CAPTION}, {S.NEG_CAPTION}, {S.METHOD}, {S.SOURCE_ID}, {S.BOX}, "
        f"{S.SCORE_NEGATIVE}, {S.SCORE_POSITIVE}, {S.TRAINABLE}, {S.IMAGE} FROM neg_image "
        f"QUALIFY row_number() OVER (PARTITION BY {S.METHOD} ORDER BY md5(sample_id || {S.KIND})) <= {limits.image_negatives} "
        f"ORDER BY {S.METHOD}, md5(sample_id || {S.KIND}) LIMIT {limits.image_negatives}"
    )
    positives = r.images_of(S.RAW, sorted({x[S.SAMPLE_ID] for x in rows})) if r.has(S.RAW) else {}
    items = []
    for x in rows:
        box = [x[S.BOX]] if x[S.BOX] else None
        scores = f"score(neg image, neg caption) {x[S.SCORE_NEGATIVE]:.3f} · score(neg image, caption) {x[S.SCORE_POSITIVE]:.3f}" if x[S.SCORE_NEGATIVE] is not None and x[S.SCORE_POSITIVE] is not None else ""
        items.append(
            '<div class="pair">'
            f'<figure>{page.img(thumbnail(positives.get(x[S.SAMPLE_ID]), PAIR_PX, box), "positive", "pairimg")}<figcaption>{_e(x[S.CAPTION])}</figcaption></figure>'
            f'<figure>{page.img(thumbnail(x[S.IMAGE], PAIR_PX, box), "negative image", "pairimg")}<figcaption class="negtext">{_e(x[S.NEG_CAPTION])}</figcaption></figure>'
            f'<div class="meta">{_e(x[S.METHOD])} · {_e(x[S.KIND])}{"" if x[S.TRAINABLE] else " · not trainable"}<br>{_e(scores)}</div></div>'
        )
    return f'{table_html(counts)}<div class="pairs">{"".join(items)}</div>'


def _imgdiff(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has(S.IMGDIFF):
        return None
    outcomes = r.rows(
        f"SELECT {S.METHOD}, coalesce({S.FILTER_REASON}, 'kept') AS outcome, count(*) AS pairs, "
        f"round(avg(len({S.BOXES})), 2) AS mean_boxes FROM imgdiff GROUP BY ALL ORDER BY pairs DESC"
    )
    # kept pairs first, then a few dropped ones with their reason
    rows = r.rows(
        f"SELECT {S.PAIR_ID}, {S.CAPTION_A}, {S.CAPTION_B}, {S.OBJECT_A}, {S.OBJECT_B}, {S.SIMILARITY}, {S.BOXES}, "
        f"{S.DIFFERENCE_CAPTION}, {S.FILTER_REASON}, {S.IMAGE_A}, {S.IMAGE_B} FROM imgdiff "
        f"ORDER BY {S.FILTER_REASON} IS NOT NULL, md5({S.PAIR_ID}) LIMIT {limits.imgdiff_pairs}"
    )
    items = []
    for x in rows:
        boxes = [b for b in (x[S.BOXES] or []) if b]
        sim = f"similarity {x[S.SIMILARITY]:.3f}" if x[S.SIMILARITY] is not None else ""
        outcome = f"dropped: {x[S.FILTER_REASON]}" if x[S.FILTER_REASON] else f"kept · {len(boxes)} box{'es' if len(boxes) != 1 else ''}"
        items.append(
            '<div class="pair">'
            f'<figure>{page.img(thumbnail(x[S.IMAGE_A], PAIR_PX, boxes), "image a", "pairimg")}<figcaption>{_e(x[S.CAPTION_A])}</figcaption></figure>'
            f'<figure>{page.img(thumbnail(x[S.IMAGE_B], PAIR_PX, boxes), "image b", "pairimg")}<figcaption>{_e(x[S.CAPTION_B])}</figcaption></figure>'
            f'<div class="meta"><b>{_e(x[S.OBJECT_A])} → {_e(x[S.OBJECT_B])}</b> · {_e(sim)} · {_e(outcome)}'
            f'<br>{_e(x[S.DIFFERENCE_CAPTION])}</div></div>'
        )
    return f'{table_html(outcomes)}<div class="pairs">{"".join(items)}</div>'


def _training(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("train_metrics"):
        return None
    rows = r.rows("SELECT run_id, step, name, value FROM train_metrics WHERE value IS NOT NULL ORDER BY run_id, name, step")
    if not rows:
        return None
    names = sorted({x["name"] for x in rows}, key=lambda n: (n != "loss", n))[: limits.curves]
    plots = []
    for name in names:
        fig = _figure(4.0, 2.5)
        ax = fig.subplots()
        runs = sorted({x["run_id"] for x in rows if x["name"] == name})
        for run in runs:
            pts = [(x["step"], x["value"]) for x in rows if x["name"] == name and x["run_id"] == run]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None, label=run)
        if len(runs) > 1:
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        plots.append(page.plot(fig, f"training curve: {name}"))
    runs = table_html(r.rows("SELECT run_id, steps, round(samples_per_second, 1) AS samples_per_second, started_at FROM runs")) if r.has(S.RUNS) else ""
    return f'{runs}<div class="grid plots">{"".join(plots)}</div>'


def _eval(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("eval_metrics"):
        return None
    rows = r.rows("SELECT run_id, name, value FROM eval_metrics")
    if not rows:
        return None
    runs = sorted({x["run_id"] for x in rows})
    by_name: dict[str, dict[str, Any]] = {}
    for x in rows:
        by_name.setdefault(x["name"], {"metric": x["name"]})[x["run_id"]] = x["value"]
    return table_html([by_name[n] for n in sorted(by_name)], ["metric", *runs])


def _counters(r: _Reader, page: _Page, limits: ReportLimits) -> str | None:
    if not r.has("drop_reasons"):
        return None
    rows = r.rows("SELECT table_name, reason, rows FROM drop_reasons WHERE rows > 0 LIMIT 80")
    return table_html(rows) if rows else None


SECTIONS: tuple[Section, ...] = (
    Section("overview", "Tables", _overview),
    Section("funnel", "Funnel", _funnel),
    Section("crawl", "Crawl outcomes", _crawl),
    Section("scores", "Scores curation decides on", _scores),
    Section("samples", "Kept and dropped images", _samples),
    Section("text_negatives", "Text hard negatives", _text_negatives),
    Section("image_negatives", "Image hard negatives", _image_negatives),
    Section("imgdiff", "Img-Diff pairs", _imgdiff),
    Section("training", "Training curves", _training),
    Section("eval", "Evaluation", _eval),
    Section("counters", "What each stage dropped, and why", _counters),
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1320px;color:#1d2733;padding:0 16px}
h1{margin-bottom:0}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:36px}h3{margin:18px 0 8px}
.muted{color:#6b7785;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border:1px solid #dde3ea;padding:3px 8px;text-align:left}
th{background:#f2f5f8}tbody tr:nth-child(even){background:#fafbfc}
.row{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.plots img{border:1px solid #eef1f4}
.card{width:128px;margin:0;font-size:11px}.card img.thumb,.card .noimg{width:112px;height:112px;object-fit:contain;background:#f2f5f8;border-radius:4px}
.noimg{display:flex;align-items:center;justify-content:center;color:#9aa5b1;font-size:11px;text-align:center;background:#f2f5f8}
.reason{color:#c0392b;font-weight:600;margin-top:2px;word-break:break-word}
.negs{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:8px}
.neg{display:flex;gap:10px;align-items:center;border:1px solid #eef1f4;border-radius:4px;padding:6px;font-size:13px}
.neg img.small,.neg .noimg{width:64px;height:64px;object-fit:contain;flex:none}
.kind{font-size:11px;font-weight:600;color:#457b9d}
del{background:#fde2e1;text-decoration:line-through;color:#9b1c1c}ins{background:#d8f5df;text-decoration:none;color:#14532d;font-weight:600}
.caret{color:#14532d;font-weight:700}
.negtext{color:#7a2e0e}
.pairs{display:flex;flex-wrap:wrap;gap:16px}
.pair{display:flex;flex-wrap:wrap;gap:8px;border:1px solid #eef1f4;border-radius:4px;padding:8px;max-width:440px;font-size:12px}
.pair figure{margin:0;width:200px}.pair img.pairimg,.pair .noimg{width:200px;height:200px;object-fit:contain;background:#f2f5f8}
.meta{width:100%;color:#3d4b5c}
footer{margin-top:40px}
"""


def render_report(dataset: Dataset, limits: ReportLimits | None = None) -> tuple[str, dict[str, str], int]:
    """(the page's HTML, section -> 'ok' | 'skipped: why', number of <img>)."""
    limits = limits or ReportLimits()
    catalog = Catalog(dataset)
    reader = _Reader(catalog)
    page = _Page()
    status: dict[str, str] = {}
    parts = []
    try:
        for section in SECTIONS:
            body = section.build(reader, page, limits)
            if body is None:
                status[section.key] = "skipped: its tables are absent or empty"
                continue
            status[section.key] = "ok"
            parts.append(f'<section id="{section.key}"><h2>{_e(section.title)}</h2>{body}</section>')
    finally:
        reader.close()
    skipped = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in status.items() if v != "ok")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>foil report: {_e(dataset.url)}</title><style>{CSS}</style></head><body>"
        f'<h1>foil report</h1><p class="muted">dataset <code>{_e(dataset.url)}</code> · {when}</p>'
        + "".join(parts)
        + f'<footer class="muted">{"Not shown (no data yet): <ul>" + skipped + "</ul>" if skipped else ""}'
        "Made by <code>foil report</code> from the dataset's DuckDB catalog.</footer></body></html>"
    )
    return doc, status, page.images


def write_report(dataset: Dataset, out: str | None = None, limits: ReportLimits | None = None) -> ReportResult:
    """Render the report and write it (default: <dataset>/report.html), atomically."""
    start = time.perf_counter()
    doc, status, images = render_report(dataset, limits)
    data = doc.encode("utf-8")
    if out is None:
        dataset.write_text(REPORT_FILE, doc)
        path = dataset.uri(REPORT_FILE)
    else:
        path = os.path.abspath(out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return ReportResult(path=path, bytes=len(data), seconds=time.perf_counter() - start, images=images, sections=status)
