"""Text negatives on captions no one here wrote: coverage per kind and throughput per core.

Two caption sets from Debian packages (`make bench` installs them):

- tuxpaint-stamps-default: the English sentence of each stamp's .txt file ("A frog.").
- openclipart-svg: the title of each SVG (its first <dc:title>), noisy like real alt-text.

For each set, the negatives stage runs in this one process over every caption. Coverage of a kind
is the share of captions that got a valid negative of that kind. Throughput is captions/s on one
core (spaCy parse plus all eleven kinds), after the models are loaded. The rejection counts say
why candidates were refused.

    .venv/bin/python tests/benchmarks/negatives.py [--limit N]
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path

TUXPAINT = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART = Path("/usr/share/openclipart/svg")
_TITLE = re.compile(rb"<dc:title>([^<]{1,200})</dc:title>")


def tuxpaint_captions() -> list[str]:
    out = []
    for path in sorted(TUXPAINT.rglob("*.txt")):
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        if first and "=" not in first[0] and first[0].strip():
            out.append(first[0].strip())
    return out


def openclipart_titles() -> list[str]:
    out = []
    for path in sorted(OPENCLIPART.rglob("*.svg")):
        m = _TITLE.search(path.read_bytes()[:20000])
        if m:
            title = m.group(1).decode("utf-8", "replace").strip()
            if title and title.lower() != "open clip art library":
                out.append(title)
    return out


def run(name: str, captions: list[str]) -> None:
    import pyarrow as pa

    from pipeline.core import schema as S
    from pipeline.negatives.text import KINDS, TextNegativesStage
    from pipeline.core.stage import StageStats

    stage = TextNegativesStage()
    ids = [f"{name}-{i}" for i in range(len(captions))]
    warm = pa.RecordBatch.from_pydict({S.SAMPLE_ID: ids[:1], S.CAPTION: captions[:1]})
    list(stage.process(warm))  # loads spaCy and WordNet, outside the timed part
    stage.stats = StageStats()
    start = time.perf_counter()
    made: Counter = Counter()
    per_kind_samples: dict[str, set[str]] = {k: set() for k in KINDS}
    for i in range(0, len(captions), 1024):
        batch = pa.RecordBatch.from_pydict({S.SAMPLE_ID: ids[i:i + 1024], S.CAPTION: captions[i:i + 1024]})
        for out in stage.run(iter([batch])):
            for sid, kind in zip(out.column(S.SAMPLE_ID).to_pylist(), out.column(S.KIND).to_pylist()):
                per_kind_samples[kind].add(sid)
                made[kind] += 1
    seconds = time.perf_counter() - start
    print(f"\n{name}: {len(captions)} captions, {sum(made.values())} negatives in {seconds:.1f} s: "
          f"{len(captions) / seconds:.0f} captions/s on one core")
    print(f"{'kind':28s} {'coverage':>9s}  top rejections")
    for kind in KINDS:
        rejections = Counter({k.split(":", 1)[1]: v for k, v in stage.stats.dropped.items() if k.startswith(kind + ":")})
        top = ", ".join(f"{r} {n}" for r, n in rejections.most_common(3))
        print(f"{kind:28s} {len(per_kind_samples[kind]) / len(captions):9.3f}  {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="at most this many captions per set")
    args = parser.parse_args()
    for name, read, root in (("tuxpaint-stamps-default", tuxpaint_captions, TUXPAINT), ("openclipart-svg", openclipart_titles, OPENCLIPART)):
        if not root.is_dir():
            raise SystemExit(f"{root} not found: install Debian's {name} (`make bench` does it)")
        captions = read()[: args.limit]
        run(name, captions)


if __name__ == "__main__":
    main()
