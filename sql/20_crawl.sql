-- Crawl outcome per shard and status.
CREATE OR REPLACE VIEW crawl_status AS
SELECT shard, status, count(*) AS rows
FROM raw
GROUP BY ALL
ORDER BY shard, status;
