-- What every stage kept and dropped, from the completion marker each shard writes.
CREATE OR REPLACE VIEW shard_stats AS
SELECT regexp_extract(filename, '([^/]+)/_shards/[^/]+[.]json$$', 1) AS table_name,
       name AS shard, rows, json_extract(stats, '$$.rows_in')::BIGINT AS rows_in,
       json_extract(stats, '$$.seconds')::DOUBLE AS seconds, stats, written_at
FROM read_json('${dataset}/*/_shards/*.json', filename = true,
               columns = {'name': 'VARCHAR', 'rows': 'BIGINT', 'stats': 'JSON', 'written_at': 'VARCHAR'});

-- Dropped rows (or, for negatives, rejected candidates) by table and reason, largest first.
CREATE OR REPLACE VIEW drop_reasons AS
SELECT table_name, reason, sum(json_extract(stats, '$$.dropped."' || reason || '"')::BIGINT) AS rows
FROM (SELECT table_name, stats, unnest(json_keys(stats, '$$.dropped')) AS reason FROM shard_stats)
GROUP BY ALL
ORDER BY table_name, rows DESC;
