-- Text hard negatives per kind, and one negative per curated sample for export.
CREATE OR REPLACE VIEW neg_text_kinds AS
SELECT kind, count(*) AS negatives, count(DISTINCT sample_id) AS samples
FROM neg_text
GROUP BY ALL
ORDER BY kind;

CREATE OR REPLACE VIEW export_rows AS
SELECT c.sample_id, c.caption, n.negative_caption, n.kind AS negative_kind, r.image, c.shard
FROM curated c
JOIN raw r ON r.sample_id = c.sample_id
LEFT JOIN (
    SELECT sample_id, kind, negative_caption
    FROM neg_text
    -- one negative per sample, kinds mixed by a stable hash rather than always the same kind
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY md5(sample_id || kind || negative_caption)) = 1
) n ON n.sample_id = c.sample_id;
