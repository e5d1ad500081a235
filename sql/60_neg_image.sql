-- Image hard negatives (`foil neg-image`). Skipped, like any file whose table is absent, until
-- table neg_image exists; a later refresh picks it up.

-- Rows per method and kind; `exact` counts mined rows whose image's caption is the negative
-- caption itself, `nearest` those found by the text-embedding search.
CREATE OR REPLACE VIEW neg_image_counts AS
SELECT method, kind, count(*) AS rows, count(*) FILTER (WHERE trainable) AS trainable,
       count(*) FILTER (WHERE list_contains(checks, 'exact_caption')) AS exact,
       count(*) FILTER (WHERE method = 'mined' AND NOT list_contains(checks, 'exact_caption')) AS nearest,
       count(DISTINCT sample_id) AS samples,
       round(avg(score_negative - score_positive), 4) AS mean_margin
FROM neg_image
GROUP BY ALL
ORDER BY method, kind;

-- Candidates rejected, per method and reason (`mined:below_floor`, `p2p:margin`, ...), from the
-- completion records of neg_image and of the tables the diffusion methods write first.
CREATE OR REPLACE VIEW neg_image_drops AS
SELECT split_part(reason, ':', 1) AS method, substr(reason, length(split_part(reason, ':', 1)) + 2) AS reason,
       sum(rows)::BIGINT AS rows
FROM drop_reasons
WHERE table_name IN ('neg_image', 'neg_image_p2p', 'neg_image_inpaint')
GROUP BY ALL
ORDER BY method, rows DESC;

-- A stable pseudo-random pick of negatives per method and kind, for a person to look at
-- (the report draws these as a grid of positive and negative images).
CREATE OR REPLACE VIEW neg_image_samples AS
SELECT sample_id, kind, caption, negative_caption, method, source_id, pipeline,
       round(score_negative, 3) AS score_negative, round(score_positive, 3) AS score_positive, trainable, shard
FROM neg_image
QUALIFY row_number() OVER (PARTITION BY method, kind ORDER BY md5(sample_id || kind || method)) <= 4
ORDER BY method, kind, md5(sample_id || kind || method);
