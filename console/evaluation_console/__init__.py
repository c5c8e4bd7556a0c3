"""The kubectl plugin (`kubectl evaluation`) and the local web console for EvaluationTasks."""
