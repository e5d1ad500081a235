"""DuckDB views over a foil dataset. Each .sql file here is run, in name order, by
`pipeline.core.catalog.Catalog.refresh`; `${name}` placeholders are curation thresholds and `${dataset}`, the dataset folder;
write `$$` for a literal dollar sign."""
