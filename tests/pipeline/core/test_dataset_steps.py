"""Whole-dataset steps (dedup, kNN mining, url ingest, imports, training records) commit through
the same mechanism as per-shard stages: killed mid-write, rerun, refused on a changed config, and
kept as they are when nothing changed. Views read committed shards only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import MARKERS, Dataset
from pipeline.curate.dedup import DUPLICATES, DedupConfig, dedup
from pipeline.stages import stage_class
from tests.conftest import make_raw

REPO = Path(__file__).resolve().parents[3]

# Dedup in a child process that SIGKILLs itself at the worst moment: its shard file is in place,
# its completion marker is about to be written.
KILLED_DEDUP = textwrap.dedent(
    """
    import os, signal, sys
    from pipeline.core import store
    from pipeline.core.store import Dataset
    from pipeline.curate.dedup import DedupConfig, dedup

    real = store.atomic_write_bytes
    def dying(fs, target, data):
        if "/duplicates/_shards/" in target:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fs, target, data)
    store.atomic_write_bytes = dying
    dedup(Dataset(sys.argv[1]), DedupConfig(max_phash_distance=6))
    """
)


def _scored(tmp_path: Path, name: str) -> Dataset:
    ds = Dataset(tmp_path / name)
    make_raw(ds, shards=3, rows=20, size=32, seed=1)
    raw = ds.table(S.RAW).read_shard("part-00000")
    # exact copies of two rows under other sample ids, in another shard, so dedup finds something
    copies = raw.slice(0, 2).set_column(0, S.SAMPLE_ID, pa.array(["zz-copy-0", "zz-copy-1"]))
    ds.table(S.RAW).write_shard("part-00003", copies)
    ds.table(S.RAW).write_manifest("test", {}, [], expected_shards=[f"part-{i:05d}" for i in range(4)])
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    return ds


def _duplicates(ds: Dataset) -> list[tuple]:
    rows = ds.table(DUPLICATES).read().to_pylist()
    return sorted((r[S.SAMPLE_ID], r["duplicate_of"], r[S.KIND]) for r in rows)


def test_dedup_killed_mid_write_leaves_nothing_visible_and_a_rerun_completes(tmp_path):
    reference, killed = _scored(tmp_path, "reference"), _scored(tmp_path, "killed")
    dedup(reference, DedupConfig(max_phash_distance=6))
    expected = _duplicates(reference)
    assert len(expected) >= 2

    proc = subprocess.run([sys.executable, "-c", KILLED_DEDUP, killed.root], cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    table = killed.table(DUPLICATES)
    assert (Path(table.root) / "part-00000.parquet").is_file()  # the shard file was written ...
    assert not table.exists() and not table.finished_shards()  # ... but never committed
    Catalog(killed).refresh()
    assert Catalog(killed).query("select count(*) n from duplicates").to_pylist() == [{"n": 0}]

    report = dedup(killed, DedupConfig(max_phash_distance=6))
    assert not report["resumed"] and _duplicates(killed) == expected
    assert table.manifest()["complete"] and table.manifest()["config"]["params"]["max_phash_distance"] == 6

    again = dedup(killed, DedupConfig(max_phash_distance=6))  # nothing changed: kept as it is
    assert again["resumed"] and _duplicates(killed) == expected


def test_dedup_refuses_a_changed_config_without_overwrite_and_reruns_on_new_input(tmp_path):
    ds = _scored(tmp_path, "ds")
    dedup(ds, DedupConfig(max_phash_distance=6))
    written = _duplicates(ds)
    with pytest.raises(ConfigError, match=r"different dedup config; rerun with --overwrite"):
        dedup(ds, DedupConfig(max_phash_distance=2))
    assert _duplicates(ds) == written  # the refused run changed nothing
    replaced = dedup(ds, DedupConfig(max_phash_distance=2), overwrite=True)
    assert not replaced["resumed"] and ds.table(DUPLICATES).manifest()["config"]["params"]["max_phash_distance"] == 2

    # A new scored shard is new input: the same config recomputes rather than keeping a stale result.
    raw = ds.table(S.RAW).read_shard("part-00003").set_column(0, S.SAMPLE_ID, pa.array(["zz-copy-2", "zz-copy-3"]))
    ds.table(S.RAW).write_shard("part-00004", raw)
    ds.table(S.RAW).write_manifest("test", {}, [])
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    grown = dedup(ds, DedupConfig(max_phash_distance=2))
    assert not grown["resumed"] and {"zz-copy-2", "zz-copy-3"} <= {sid for sid, _, _ in _duplicates(ds)}


def test_views_read_only_committed_shards(tmp_path):
    ds = Dataset(tmp_path / "ds")
    make_raw(ds, shards=2, rows=10)
    stray = ds.table(S.RAW).read_shard("part-00000").set_column(0, S.SAMPLE_ID, pa.array([f"stray-{i}" for i in range(10)]))
    pq.write_table(stray, Path(ds.table(S.RAW).root) / "part-00009.parquet")  # a shard file without a marker
    assert not (Path(ds.table(S.RAW).root) / MARKERS / "part-00009.json").exists()
    Catalog(ds).refresh()
    assert Catalog(ds).query("select count(*) n, count(distinct shard) s from raw").to_pylist() == [{"n": 20, "s": 2}]
    assert ds.table(S.RAW).read().num_rows == 20


def test_url_ingest_keeps_an_unchanged_list_and_overwrite_replaces_it(tmp_path):
    from pipeline.crawl.urls import ingest_urls

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("url,caption\nhttp://x/1.png,one\nhttp://x/2.png,two\nhttp://x/2.png,two\n")
    second.write_text("url,caption\nhttp://x/3.png,three\n")
    ds = Dataset(tmp_path / "ds")
    report = ingest_urls(ds, [str(first)], shard_rows=1)
    assert (report.rows, report.duplicates, report.shards) == (2, 1, 2)
    markers = {p.name: p.stat().st_mtime_ns for p in (Path(ds.table(S.URLS).root) / MARKERS).iterdir()}
    ingest_urls(ds, [str(first)], shard_rows=1)
    assert {p.name: p.stat().st_mtime_ns for p in (Path(ds.table(S.URLS).root) / MARKERS).iterdir()} == markers
    with pytest.raises(ConfigError, match=r"table 'urls' was written with a different"):
        ingest_urls(ds, [str(first)], shard_rows=2)  # another way of reading lists needs --overwrite
    replaced = ingest_urls(ds, [str(second)], shard_rows=1, overwrite=True)
    assert replaced.rows == 1 and ds.table(S.URLS).read()[S.URL].to_pylist() == ["http://x/3.png"]
