-- Crawl outcome per shard and status.
CREATE OR REPLACE VIEW crawl_status AS
SELECT shard, status, count(*) AS rows
FROM raw
GROUP BY ALL
ORDER BY shard, status;

-- Per shard: rows by status and error kind, and how long the shard took (from its marker).
CREATE OR REPLACE VIEW crawl_stats AS
WITH shard_time AS (
    SELECT name AS shard, rows AS shard_rows, CAST(stats ->> 'seconds' AS DOUBLE) AS shard_seconds, written_at
    FROM read_json('${dataset}/raw/_shards/*.json',
                   columns = {name: 'VARCHAR', rows: 'BIGINT', stats: 'JSON', written_at: 'VARCHAR'})
)
SELECT r.shard, r.status, r.error_kind, count(*) AS rows,
       any_value(t.shard_rows) AS shard_rows, any_value(t.shard_seconds) AS shard_seconds, any_value(t.written_at) AS written_at
FROM raw r
LEFT JOIN shard_time t ON t.shard = r.shard
GROUP BY ALL
ORDER BY r.shard, rows DESC;

-- The whole crawl in one row: success rate and images per second of shard time.
CREATE OR REPLACE VIEW crawl_summary AS
SELECT count(*) AS rows,
       count(*) FILTER (WHERE status = 'success') AS success,
       round(count(*) FILTER (WHERE status = 'success') / count(*), 4) AS success_rate,
       (SELECT sum(shard_seconds) FROM (SELECT DISTINCT shard, shard_seconds FROM crawl_stats)) AS shard_seconds
FROM raw;
