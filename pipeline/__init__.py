"""foil data stages as a plain library: store, catalog, stages, runners. No Prefect here."""
