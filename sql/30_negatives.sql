-- Text hard negatives: generated edits (neg_text) and kNN-mined captions (neg_knn) together.
CREATE OR REPLACE VIEW negatives AS
SELECT * FROM neg_text
UNION ALL BY NAME
SELECT * FROM neg_knn;

CREATE OR REPLACE VIEW neg_text_kinds AS
SELECT kind, count(*) AS negatives, count(DISTINCT sample_id) AS samples
FROM negatives
GROUP BY ALL
ORDER BY kind;

-- Thirty negatives per kind, a stable pseudo-random pick, for a person to read.
CREATE OR REPLACE VIEW neg_samples AS
SELECT kind, caption, negative_caption, generator
FROM negatives
QUALIFY row_number() OVER (PARTITION BY kind ORDER BY md5(sample_id || kind)) <= 30
ORDER BY kind, md5(sample_id || kind);
