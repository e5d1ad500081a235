-- Negative images `foil export` may carry (see 35_export.sql): rows of `neg_image` made by a
-- trained pipeline or mined from real images (`trainable`), of curated samples. Rows made by a
-- random-weight pipeline (the demo's tiny p2p) are never trained on.
CREATE OR REPLACE VIEW export_negative_images AS
SELECT n.sample_id, n.kind, n.negative_caption, n.method, n.shard
FROM neg_image n
WHERE n.trainable AND n.negative_caption IS NOT NULL;
