-- The blind refinement (pipeline/negatives/blind.py), once `neg_blind` exists (this file is
-- skipped until then, and `negatives` stays every candidate of 30_negatives.sql).
-- `negatives` keeps the candidates the refinement kept, with their blind scores; kNN negatives
-- are real captions, not scored, and kept.
CREATE OR REPLACE VIEW negatives AS
SELECT n.*, b.blind_score, b.blind_score_refined
FROM (SELECT * FROM neg_text UNION ALL BY NAME SELECT * FROM neg_knn) n
LEFT JOIN neg_blind b
  ON b.sample_id = n.sample_id AND b.kind = n.kind AND b.negative_caption = n.negative_caption
WHERE b.filter_reason IS NULL;

-- Per kind: how often a text-only scorer (held-out folds) picks the caption over the negative,
-- over every candidate (before) and over the kept ones under a scorer refitted on them (after);
-- 0.5 is chance. Coverage: candidates and kept rows.
CREATE OR REPLACE VIEW blind_accuracy AS
WITH scored AS (
    SELECT kind, filter_reason,
           CASE WHEN blind_score > 0 THEN 1.0 WHEN blind_score = 0 THEN 0.5 WHEN blind_score < 0 THEN 0.0 END AS right_before,
           CASE WHEN blind_score_refined > 0 THEN 1.0 WHEN blind_score_refined = 0 THEN 0.5 WHEN blind_score_refined < 0 THEN 0.0 END AS right_after
    FROM neg_blind
), per_kind AS (
    SELECT kind, count(*) AS candidates, count(*) FILTER (WHERE filter_reason IS NULL) AS kept,
           round(avg(right_before), 3) AS blind_accuracy_before, round(avg(right_after), 3) AS blind_accuracy_after
    FROM scored GROUP BY kind
)
SELECT * FROM (SELECT * FROM per_kind ORDER BY kind)
UNION ALL
SELECT 'all', count(*), count(*) FILTER (WHERE filter_reason IS NULL), round(avg(right_before), 3), round(avg(right_after), 3)
FROM scored;
