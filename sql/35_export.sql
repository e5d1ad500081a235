-- What `foil export` writes: one row per curated sample with one hard negative, plus two rows
-- per kept Img-Diff pair. No image bytes here: the export stage takes a row's image from its own
-- shard of `raw` and fetches a negative image (or an Img-Diff image) from the one shard of
-- `neg_image` (or `imgdiff`) named in the row, so no shard reads another shard's images.
--
-- The two tables of image stages may not exist yet, so the rows they contribute come through two
-- views that are empty here and defined over their table by 36_export_neg_image.sql and
-- 37_export_imgdiff.sql (skipped, and these stay empty, until that table exists).
CREATE OR REPLACE VIEW export_negative_images AS
SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS kind, NULL::VARCHAR AS negative_caption,
       NULL::VARCHAR AS method, NULL::VARCHAR AS shard
WHERE false;

CREATE OR REPLACE VIEW export_pairs AS
SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS caption, NULL::VARCHAR AS negative_caption,
       NULL::VARCHAR AS pair_id, NULL::VARCHAR AS pair_side, NULL::VARCHAR AS pair_shard, NULL::VARCHAR AS shard
WHERE false;

CREATE OR REPLACE VIEW export_rows AS
WITH text_negative AS (
    SELECT sample_id, kind, negative_caption
    FROM negatives
    -- one negative per sample, kinds mixed by a stable hash rather than always the same kind
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY md5(sample_id || kind || negative_caption)) = 1
), image_negative AS (
    SELECT sample_id, kind, negative_caption, method, shard
    FROM export_negative_images
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY md5(sample_id || kind || negative_caption || method)) = 1
)
SELECT c.sample_id, c.caption,
       -- a negative image wins, and brings its own caption, so image and text negatives agree
       CASE WHEN i.sample_id IS NOT NULL THEN i.negative_caption ELSE t.negative_caption END AS negative_caption,
       CASE WHEN i.sample_id IS NOT NULL THEN i.kind ELSE t.kind END AS negative_kind,
       i.method AS negative_image_method,
       i.shard AS negative_image_shard,
       NULL::VARCHAR AS pair_id, NULL::VARCHAR AS pair_side, NULL::VARCHAR AS pair_shard,
       c.shard
FROM curated c
LEFT JOIN image_negative i ON i.sample_id = c.sample_id
LEFT JOIN text_negative t ON t.sample_id = c.sample_id
UNION ALL
SELECT p.sample_id, p.caption, p.negative_caption, 'imgdiff' AS negative_kind,
       'imgdiff' AS negative_image_method, NULL::VARCHAR AS negative_image_shard,
       p.pair_id, p.pair_side, p.pair_shard, p.shard
FROM export_pairs p;
