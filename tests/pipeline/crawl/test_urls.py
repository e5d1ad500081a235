from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.crawl.urls import ingest_urls


def test_all_formats_ingest_with_ids_dedup_and_shards(tmp_path):
    (tmp_path / "a.csv").write_text('url,caption\nhttp://h/1.png,"one, with comma"\nhttp://h/2.png,two\n')
    (tmp_path / "b.tsv").write_text("url\tcaption\nhttp://h/3.png\tthree\nhttp://h/1.png\tone, with comma\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"url": f"http://h/{i}.png", "caption": f"c{i}"}) for i in (4, 5)) + "\n")
    pq.write_table(pa.table({"url": ["http://h/6.png", "  ", None], "caption": ["six", "blank", "null"]}), tmp_path / "d.parquet")
    ds = Dataset(tmp_path / "ds")
    report = ingest_urls(ds, [str(tmp_path / f) for f in ("a.csv", "b.tsv", "c.jsonl", "d.parquet")], shard_rows=2)
    assert (report.rows_read, report.duplicates, report.empty_url, report.rows, report.shards) == (9, 1, 2, 6, 3)
    table = ds.table(S.URLS).read()
    assert table.column_names == S.URLS_SCHEMA.names
    assert table[S.SAMPLE_ID].to_pylist() == [S.sample_id(u, c) for u, c in zip(table[S.URL].to_pylist(), table[S.CAPTION].to_pylist())]
    assert len(set(table[S.SAMPLE_ID].to_pylist())) == 6
    assert table[S.CAPTION].to_pylist()[0] == "one, with comma"


def test_renamed_columns(tmp_path):
    pq.write_table(pa.table({"URL": ["http://h/1.png"], "TEXT": ["x"]}), tmp_path / "laion.parquet")
    report = ingest_urls(Dataset(tmp_path / "ds"), [str(tmp_path / "laion.parquet")], url_col="URL", caption_col="TEXT")
    assert report.rows == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", "link,caption\nhttp://h/1.png,x\n", r"missing\.csv: no column 'url' \(set --url-col\); columns are: link, caption"),
        ("empty.csv", "url,caption\n", r"empty\.csv: no rows"),
        ("latin1.csv", "url,caption\nhttp://h/1.png,caf\xe9\n".encode("latin-1"), r"latin1\.csv: cannot read as csv: text is not valid UTF-8"),
        ("list.xlsx", "whatever", r"unknown url list format '\.xlsx'"),
    ],
)
def test_bad_input_names_file_and_column(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        ingest_urls(Dataset(tmp_path / "ds"), [str(path)])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ingest_urls(Dataset(tmp_path / "ds"), [str(tmp_path / "nope.parquet")])


def test_shard_by_host_puts_one_host_in_each_shard(tmp_path):
    hosts = ["a.example", "B.example", "c.example"]
    urls = [f"http://{hosts[i % 3]}/{i}.png" for i in range(11)]  # interleaved, as lists usually are
    pq.write_table(pa.table({"url": urls, "caption": [f"c{i}" for i in range(11)]}), tmp_path / "u.parquet")
    ds = Dataset(tmp_path / "ds")
    report = ingest_urls(ds, [str(tmp_path / "u.parquet")], shard_rows=3, shard_by_host=True)
    table = ds.table(S.URLS)
    per_shard = {name: {u.split("/")[2].lower() for u in table.read_shard(name)[S.URL].to_pylist()} for name in table.finished_shards()}
    assert all(len(h) == 1 for h in per_shard.values()), per_shard
    # 4 rows of a and b, 3 of c: shards of at most 3 rows per host -> 2 + 2 + 1
    assert report.shards == 5 and sorted(table.read()[S.URL].to_pylist()) == sorted(urls)
    # Without the option the same list mixes hosts in a shard; the table's config records it.
    with pytest.raises(ConfigError, match="different urls config"):
        ingest_urls(ds, [str(tmp_path / "u.parquet")], shard_rows=3)
    mixed = Dataset(tmp_path / "mixed")
    ingest_urls(mixed, [str(tmp_path / "u.parquet")], shard_rows=3)
    t = mixed.table(S.URLS)
    assert any(len({u.split("/")[2] for u in t.read_shard(n)[S.URL].to_pylist()}) > 1 for n in t.finished_shards())
