-- Kept Img-Diff pairs as two training rows each (see 35_export.sql): image A with caption A, whose
-- hard negatives are image B and caption B, and the same the other way round. A pair's rows are
-- handed to one `raw` shard's export (by a hash of the pair id), so each pair is exported once;
-- their sample ids are hashes of (pair id, side), so reruns give the same ids.
CREATE OR REPLACE VIEW export_pairs AS
WITH kept AS (
    SELECT pair_id, caption_a, caption_b, shard AS pair_shard
    FROM imgdiff
    WHERE filter_reason IS NULL AND trainable AND caption_a IS NOT NULL AND caption_b IS NOT NULL
), raw_shards AS (
    SELECT shard, row_number() OVER (ORDER BY shard) - 1 AS i, count(*) OVER () AS n
    FROM (SELECT DISTINCT shard FROM raw)
), placed AS (
    SELECT k.*, r.shard FROM kept k JOIN raw_shards r ON r.i = md5_number(k.pair_id) % r.n
)
SELECT substr(md5(pair_id || ':a'), 1, 16) AS sample_id, caption_a AS caption, caption_b AS negative_caption,
       pair_id, 'a' AS pair_side, pair_shard, shard
FROM placed
UNION ALL
SELECT substr(md5(pair_id || ':b'), 1, 16) AS sample_id, caption_b AS caption, caption_a AS negative_caption,
       pair_id, 'b' AS pair_side, pair_shard, shard
FROM placed;
