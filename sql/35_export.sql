-- One negative per curated sample (any kind): what `foil export` writes. The image is not here:
-- the export stage takes it from its own shard of `raw`, so no shard reads another's images.
CREATE OR REPLACE VIEW export_rows AS
SELECT c.sample_id, c.caption, n.negative_caption, n.kind AS negative_kind, c.shard
FROM curated c
LEFT JOIN (
    SELECT sample_id, kind, negative_caption
    FROM negatives
    -- one negative per sample, kinds mixed by a stable hash rather than always the same kind
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY md5(sample_id || kind || negative_caption)) = 1
) n ON n.sample_id = c.sample_id;
