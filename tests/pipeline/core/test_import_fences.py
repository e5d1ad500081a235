"""The core, the crawl stage and `foil sql` stay light: none of them imports a model library, Ray
or Prefect. A regression here costs every command seconds and a gigabyte before it does anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from tests.conftest import make_raw

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "open_clip", "ray", "prefect", "transformers", "diffusers", "img2dataset", "spacy")

PROBE = """
import json, sys
import pipeline.core.catalog, pipeline.core.runners, pipeline.core.stage, pipeline.core.store, pipeline.stages
import pipeline.crawl
from flows.cli import main
code = main(["sql", "--dataset", sys.argv[1], "select count(*) as n from raw"])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_core_crawl_and_foil_sql_import_no_model_library_ray_or_prefect(tmp_path):
    ds_dir = tmp_path / "ds"
    from pipeline.core.store import Dataset

    ds = Dataset(ds_dir)
    make_raw(ds, shards=1, rows=3)
    Catalog(ds).refresh()
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ds_dir), *HEAVY], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-3].strip() == "3"  # the query answered (table output: header, rule, the count, row count)
    result = json.loads(lines[-1])
    assert result == {"code": 0, "heavy": []}, result
    assert S.RAW in ds.tables()
