"""Training shards: curated rows with their images and hard negatives (table `train`, webdataset tars)."""

from pipeline.export.export import ExportStage  # noqa: F401  (registers `export`)
