-- raw_extra over raw's `extra` column (see 05_kept_columns.sql).
CREATE OR REPLACE VIEW raw_extra AS
SELECT sample_id, extra FROM raw WHERE extra IS NOT NULL;
