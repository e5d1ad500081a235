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
