-- The url lists' kept columns (`foil crawl --keep-columns uid,clip_l14_similarity_score`), one
-- JSON object per row, keyed by sample_id: what DataComp interop reads (uids for
-- `foil export --datacomp-uids`, precomputed CLIP scores for `curate.clip_score_from`).
-- Empty here; 06_kept_columns_raw.sql defines it over raw when raw has the column (a raw table
-- written by an import or a test may not), and is skipped, leaving this one, when it has not.
CREATE OR REPLACE VIEW raw_extra AS
SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS extra
WHERE false;
