"""Ranking service: scores candidates for a subject with the sequence ranking model."""
