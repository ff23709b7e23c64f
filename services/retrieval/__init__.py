"""Retrieval service: narrows the catalog to a few hundred candidates per request."""
