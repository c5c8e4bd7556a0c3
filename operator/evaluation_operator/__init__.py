"""EvaluationTask operator."""
