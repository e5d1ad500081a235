-- Img-Diff pairs (`foil imgdiff`). Skipped, like any file whose table is absent, until table
-- imgdiff exists; a later refresh picks it up.

-- Pairs per method and outcome: `kept` (filter_reason NULL) or the reason the pair was dropped,
-- with the trainable ones (not made by a random-weight pipeline) and the similarity range.
CREATE OR REPLACE VIEW imgdiff_reasons AS
SELECT method, coalesce(filter_reason, 'kept') AS outcome, count(*) AS pairs,
       count(*) FILTER (WHERE trainable) AS trainable,
       round(min(similarity), 4) AS min_similarity, round(max(similarity), 4) AS max_similarity,
       round(avg(len(boxes)), 2) AS mean_boxes
FROM imgdiff
GROUP BY ALL
ORDER BY method, pairs DESC;

-- Candidate boxes the Difference Area Generator did not keep, by reason (`box:crops_alike`,
-- `box:overlap`, ...), from the step's completion record.
CREATE OR REPLACE VIEW imgdiff_box_rejections AS
SELECT substr(reason, 5) AS reason, sum(json_extract(stats, '$$.counts."' || reason || '"')::BIGINT) AS boxes
FROM (SELECT stats, unnest(json_keys(stats, '$$.counts')) AS reason FROM shard_stats WHERE table_name = 'imgdiff')
WHERE reason LIKE 'box:%'
GROUP BY ALL
ORDER BY boxes DESC;

-- A stable pseudo-random pick of pairs to read, without their image bytes.
CREATE OR REPLACE VIEW imgdiff_samples AS
SELECT pair_id, method, caption_a, caption_b, object_a, object_b, round(similarity, 4) AS similarity,
       boxes, box_scores, difference_caption, filter_reason, trainable, shard
FROM imgdiff
QUALIFY row_number() OVER (PARTITION BY coalesce(filter_reason, 'kept') ORDER BY md5(pair_id)) <= 10
ORDER BY coalesce(filter_reason, 'kept'), md5(pair_id);
