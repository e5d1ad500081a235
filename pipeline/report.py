"""The run summary: what each stage kept and dropped, and how the model did, in one place.

Built from the catalog (so it shows what SQL shows), written into the dataset folder as
`summary.json` and `summary.md`, and printed at the end of `foil demo`.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset


def _rows(catalog: Catalog, sql: str) -> list[dict[str, Any]]:
    try:
        return catalog.query(sql).to_pylist()
    except Exception as exc:  # a view missing because its stage has not run yet
        return [{"unavailable": str(exc).splitlines()[0]}]


def build_summary(dataset: Dataset, timings: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    catalog = Catalog(dataset)
    return {
        "dataset": dataset.url,
        "crawl": _rows(catalog, "SELECT status, count(*) AS rows FROM raw GROUP BY ALL ORDER BY rows DESC"),
        "funnel": _rows(catalog, "SELECT * FROM funnel"),
        "negatives": _rows(catalog, "SELECT * FROM neg_text_kinds"),
        "negative_rejections": _rows(catalog, "SELECT table_name, reason, rows FROM drop_reasons WHERE table_name IN ('neg_text', 'neg_knn', 'neg_blind') LIMIT 40"),
        # How often a text-only scorer solves each kind, before and after the blind refinement (0.5: chance).
        "blind_accuracy": _rows(catalog, "SELECT * FROM blind_accuracy"),
        "train_rows": _rows(catalog, "SELECT split, count(*) AS rows, count(negative_caption) AS with_negative FROM train GROUP BY ALL ORDER BY split"),
        "eval": _rows(catalog, "SELECT run_id, name, round(value, 4) AS value FROM eval_metrics"),
        "runs": _rows(catalog, "SELECT run_id, steps, round(samples_per_second, 1) AS samples_per_second, checkpoint FROM runs"),
        # Img-Diff pairs per method and outcome (kept or the filter reason), and boxes not kept by reason.
        "imgdiff": _rows(catalog, "SELECT * FROM imgdiff_reasons"),
        "imgdiff_box_rejections": _rows(catalog, "SELECT * FROM imgdiff_box_rejections"),
        # Image negatives per method and kind (exact/nearest for mined), and candidates rejected by check.
        "image_negatives": _rows(catalog, "SELECT * FROM neg_image_counts"),
        "image_negative_rejections": _rows(catalog, "SELECT * FROM neg_image_drops"),
        "timings_seconds": {k: round(v, 2) for k, v in (timings or {}).items()},
        # Last, as it is long: 30 negatives per kind for a person to read.
        "negatives_sample": _rows(catalog, "SELECT * FROM neg_samples"),
        **(extra or {}),
    }


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(summary: dict[str, Any]) -> str:
    parts = [f"# foil run summary\n\ndataset: `{summary['dataset']}`\n"]
    for key, value in summary.items():
        if key == "dataset":
            continue
        parts.append(f"\n## {key}\n\n")
        if isinstance(value, list):
            parts.append(_markdown_table(value))
        elif isinstance(value, dict):
            parts.append(_markdown_table([{"name": k, "value": v} for k, v in value.items()]))
        else:
            parts.append(f"{value}\n")
    return "".join(parts)


def write_summary(dataset: Dataset, summary: dict[str, Any]) -> str:
    dataset.write_json("summary.json", summary)
    from pipeline.imgdiff.report import markdown_section

    # Img-Diff pairs drawn side by side with their boxes (small PNGs next to summary.md).
    text = render_markdown(summary) + markdown_section(dataset)
    from pipeline.negatives.image_report import markdown_section as image_negatives_grid

    text += image_negatives_grid(dataset)  # positive | negative image, both captions (PNGs next to summary.md)
    dataset.write_text("summary.md", text)
    return text

