"""Crawling: url lists in, table `raw` out (img2dataset's downloader behind foil's address guard)."""

from pipeline.crawl.crawl import CrawlStage  # noqa: F401  (registers `crawl`)
