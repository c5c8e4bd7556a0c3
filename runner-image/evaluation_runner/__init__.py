"""Benchmark runner for EvaluationTask Jobs."""
