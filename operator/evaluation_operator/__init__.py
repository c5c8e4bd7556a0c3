"""EvaluationTask operator."""


def run() -> None:
    """The `evaluation-operator` console script: exactly `python -m evaluation_operator`, whose
    module keeps the `kubernetes` client out of the process only when run as the program."""
    import runpy

    runpy.run_module("evaluation_operator", run_name="__main__", alter_sys=True)
