"""Shop data: the event and catalog schema, loaders for each source, and the per-customer hold-out split (what it
keeps apart and what it leaks: ``splits``)."""
