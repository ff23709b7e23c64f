"""Gateway: the public RecommendationService. Fans out to retrieval, ranks, re-ranks, answers within budget."""
