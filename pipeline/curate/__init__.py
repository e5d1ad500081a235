"""Curation inputs: rule scores per image (table `scores`) and duplicates (table `duplicates`).
The decisions themselves are SQL views (sql/10_curation.sql)."""

from pipeline.curate.score import ScoreStage  # noqa: F401  (registers `score`)
