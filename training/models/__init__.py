"""Torch models (training only): the two-tower retriever and the SASRec-style sequence ranker."""
