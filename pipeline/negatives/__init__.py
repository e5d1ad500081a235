"""Text hard negatives: rule-based edits (table `neg_text`), kNN-mined ones (`neg_knn`), and
SugarCrepe import/export."""

from pipeline.negatives.text import TextNegativesStage  # noqa: F401  (registers `negatives`)
