"""Shop data: the event and catalog schema, loaders for each source, and leakage-free time-aware splits."""
