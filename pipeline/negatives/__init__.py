"""Text hard negatives: rule-based edits (table `neg_text`), kNN-mined ones (`neg_knn`), and
SugarCrepe import/export; image hard negatives (table `neg_image`: mined, p2p, inpaint)."""

from pipeline.negatives.text import TextNegativesStage  # noqa: F401  (registers `negatives`)
from pipeline.negatives.image_generate import GeneratedImageNegativesStage  # noqa: F401  (registers `neg_image`)
