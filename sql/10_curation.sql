-- Curation: every crawled row, with the first rule it fails (in funnel order) or NULL if kept.
-- Thresholds come from the recipe's `curate` section; changing them only rebuilds this table and
-- the views over it, from the scores already written. A table, not a view: its pool-wide terms
-- (duplicate ranks, the CLIP-score quantile) are computed once per refresh, so `curated`,
-- `funnel` and the stages reading them never pay for them again (1M rows: well under a second).
CREATE OR REPLACE TABLE curation AS
WITH clip AS (
    -- The CLIP score the rules use: foil's own (`foil embed`), or one the url lists carried
    -- (`curate.clip_score_from`: a kept column such as DataComp's clip_l14_similarity_score).
    SELECT sample_id, clip_score FROM embeddings WHERE ${clip_score_from} = 'embeddings'
    UNION ALL
    SELECT sample_id, TRY_CAST(json_extract_string(extra, '$$.' || ${clip_score_from}) AS FLOAT) AS clip_score
    FROM raw_extra WHERE ${clip_score_from} <> 'embeddings'
)
SELECT
    r.sample_id, r.url, r.caption, r.status, r.error, r.shard,
    s.width, s.height, s.aspect_ratio, s.caption_words, s.caption_chars, s.sha256, s.phash,
    s.language, s.language_score, s.caption_flag, e.clip_score,
    CASE
        WHEN r.status <> 'success' THEN 'crawl:' || r.status
        WHEN s.sample_id IS NULL THEN 'not_scored'
        WHEN s.decode_error IS NOT NULL THEN 'decode_error'
        WHEN s.width < ${min_width} OR s.height < ${min_height} THEN 'too_small'
        WHEN greatest(s.aspect_ratio, 1 / s.aspect_ratio) > ${max_aspect_ratio} THEN 'extreme_aspect_ratio'
        WHEN s.caption_words < ${min_caption_words} OR s.caption_chars < ${min_caption_chars} THEN 'caption_too_short'
        WHEN s.caption_words > ${max_caption_words} THEN 'caption_too_long'
        WHEN ${drop_flagged_captions} = 1 AND s.caption_flag IS NOT NULL THEN 'caption:' || s.caption_flag
        WHEN ${min_english_score} > 0 AND (s.language IS DISTINCT FROM 'en' OR s.language_score < ${min_english_score}) THEN 'not_english'
        WHEN (${min_clip_score} > -1 OR ${clip_score_top_fraction} < 1) AND e.clip_score IS NULL THEN 'no_clip_score'
        WHEN e.clip_score < ${min_clip_score} THEN 'low_clip_score'
        -- DataComp's "CLIP score top k%": the cut is the pool's (1 - k) quantile of CLIP score
        WHEN ${clip_score_top_fraction} < 1
             AND e.clip_score < (SELECT quantile_cont(clip_score, 1 - ${clip_score_top_fraction}) FROM clip) THEN 'low_clip_score'
        WHEN row_number() OVER (PARTITION BY s.sha256 ORDER BY r.sample_id) > 1 THEN 'duplicate:sha256'
        WHEN d.kind IS NOT NULL THEN 'duplicate:' || d.kind
    END AS drop_reason, d.duplicate_of
FROM raw r
LEFT JOIN scores s ON s.sample_id = r.sample_id
LEFT JOIN clip e ON e.sample_id = r.sample_id
LEFT JOIN duplicates d ON d.sample_id = r.sample_id;

CREATE OR REPLACE VIEW curated AS
SELECT * EXCLUDE (drop_reason, duplicate_of) FROM curation WHERE drop_reason IS NULL;

-- Rows removed per reason, in the order the rules are applied; `kept` is what remains.
CREATE OR REPLACE VIEW funnel AS
SELECT reason, rows
FROM (SELECT coalesce(drop_reason, 'kept') AS reason, count(*) AS rows FROM curation GROUP BY 1)
ORDER BY CASE
    WHEN reason LIKE 'crawl:%' THEN 1 WHEN reason = 'not_scored' THEN 2 WHEN reason = 'decode_error' THEN 3
    WHEN reason = 'too_small' THEN 4 WHEN reason = 'extreme_aspect_ratio' THEN 5
    WHEN reason = 'caption_too_short' THEN 6 WHEN reason = 'caption_too_long' THEN 7
    WHEN reason LIKE 'caption:%' THEN 8 WHEN reason = 'not_english' THEN 9
    WHEN reason IN ('no_clip_score', 'low_clip_score') THEN 10
    WHEN reason LIKE 'duplicate:%' THEN 11 ELSE 12 END, reason;
