"""`kubectl evaluation`: list, show, download, samples, compare, logs, delete, console."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)

from evaluation_console import render
from evaluation_console.errors import ConsoleError, NotFoundError
from evaluation_console.kube import Kube, KubeOptions
from evaluation_console.model import task_row
from evaluation_console.reader import Reader, split_ref
from evaluation_console.samples import Verdict

F = TypeVar("F", bound=Callable[..., Any])
OUTPUTS = click.Choice(["table", "json", "yaml"])
out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    def __init__(self, options: KubeOptions) -> None:
        self.options = options
        self._reader: Reader | None = None

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            self._reader = Reader(Kube(self.options))
        return self._reader

    @property
    def namespace(self) -> str:
        return self.reader.kube.default_namespace

    def set_namespace(self, namespace: str) -> None:
        """`-n` given after the subcommand, as kubectl users type it."""
        self.options = dataclasses.replace(self.options, namespace=namespace)
        self._reader = None

    def ref(self, text: str) -> tuple[str, str]:
        return split_ref(text, self.namespace)


def _namespace_callback(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(State).set_namespace(value)


def namespace_option(func: F) -> F:
    return click.option("-n", "--namespace", expose_value=False, is_eager=True,
                        callback=_namespace_callback,
                        help="Namespace (default: the context's).")(func)


def output_option(func: F) -> F:
    return click.option("-o", "--output", type=OUTPUTS, default="table", show_default=True,
                        help="Output format.")(func)


def emit(value: Any, output: str, table: Callable[[], Any]) -> None:
    if output == "table":
        out.print(table())
    else:
        click.echo(render.dump(value, output))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kubeconfig", help="Path to the kubeconfig file (default: $KUBECONFIG, "
              "~/.kube/config).")
@click.option("--context", help="The kubeconfig context to use.")
@click.option("-n", "--namespace", help="Namespace (default: the context's).")
@click.option("--as", "as_user", help="Act as this user (Kubernetes impersonation).")
@click.option("--as-group", help="Act as this group (with --as).")
@click.pass_context
def cli(ctx: click.Context, kubeconfig: str | None, context: str | None,
        namespace: str | None, as_user: str | None, as_group: str | None) -> None:
    """Evaluation tasks: list, read, download, compare and delete them.

    Acts with your kubeconfig and RBAC, and with your own S3 credentials (or the task
    namespace's credentials Secret when you may read it).
    """
    ctx.obj = State(KubeOptions(kubeconfig=kubeconfig, context=context, namespace=namespace,
                                impersonate_user=as_user, impersonate_group=as_group))


@cli.command("list")
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Tasks of every namespace.")
@click.option("-w", "--watch", is_flag=True, help="Keep printing changes.")
@click.option("--watch-seconds", type=int, default=3600, hidden=True)
@output_option
@click.pass_obj
def list_tasks(state: State, all_namespaces: bool, watch: bool, watch_seconds: int,
               output: str) -> None:
    """Tasks with status, overall score, model, progress and age."""
    namespace = None if all_namespaces else state.namespace
    rows = state.reader.rows(namespace)
    if not rows and output == "table":
        where = "any namespace" if all_namespaces else f"namespace {namespace!r}"
        err.print(f"No evaluation tasks in {where}.")
    else:
        emit(rows, output, lambda: render.tasks_table(rows, all_namespaces))
    sys.stdout.flush()
    if not watch:
        return
    seen = {r.key: r for r in rows}
    for kind, obj in state.reader.kube.watch_tasks(namespace, watch_seconds):
        row = task_row(obj)
        if kind != "DELETED" and seen.get(row.key) == row:
            continue
        seen[row.key] = row
        if output == "table":
            table = render.tasks_table([row], all_namespaces)
            table.show_header = False
            out.print(table if kind != "DELETED" else f"{row.key} deleted")
        else:
            click.echo(render.dump({"type": kind, "task": row}, output))
        sys.stdout.flush()


@cli.command()
@namespace_option
@click.argument("task")
@output_option
@click.pass_obj
def show(state: State, task: str, output: str) -> None:
    """The details: scores, metrics with stderr, configuration, where the results are."""
    details = state.reader.details(*state.ref(task))
    emit(details, output, lambda: render.details_view(details))


@cli.command()
@namespace_option
@click.argument("task")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to save (default: ./<task>-results.zip).")
@click.pass_obj
def download(state: State, task: str, path: Path | None) -> None:
    """Save the task's results.zip; prints its sha256."""
    namespace, name = state.ref(task)
    target = path or Path(f"{name}-results.zip")
    save_bundle(state.reader, namespace, name, target)


def save_bundle(reader: Reader, namespace: str, name: str, target: Path) -> str:
    results, size, chunks = reader.bundle(namespace, name)
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".part")
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with partial.open("wb") as handle, Progress(*columns, console=err,
                                                    transient=True) as bar:
            job = bar.add_task("download", total=size)
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                bar.advance(job, len(chunk))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    err.print(escape(f"Saved {results.uri('results.zip')} ({size} bytes, read with "
                     f"{results.source}) to {target}"))
    click.echo(f"sha256 {digest.hexdigest()}  {target}")
    return digest.hexdigest()


@cli.command()
@namespace_option
@click.argument("task")
@click.option("-b", "--benchmark", help="Benchmark (default: the first).")
@click.option("--wrong", "verdict", flag_value=Verdict.WRONG.value, help="Wrong answers only.")
@click.option("--right", "verdict", flag_value=Verdict.RIGHT.value, help="Right answers only.")
@click.option("--grep", default="", help="Only samples whose input, prediction or reference "
              "contains this text (case-insensitive).")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@output_option
@click.pass_obj
def samples(state: State, task: str, benchmark: str | None, verdict: str | None, grep: str,
            limit: int, offset: int, output: str) -> None:
    """Predictions next to references, with per-sample scores."""
    namespace, name = state.ref(task)
    _, bench, page = state.reader.samples(namespace, name, benchmark,
                                          Verdict(verdict or Verdict.ALL.value), grep,
                                          offset, limit)
    emit(page, output, lambda: render.samples_table(page, bench.name))


@cli.command()
@namespace_option
@click.argument("tasks", nargs=-1, required=True)
@click.option("--samples", "benchmark", help="Also list the samples of this benchmark that "
              "the first two tasks answered differently.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@output_option
@click.pass_obj
def compare(state: State, tasks: tuple[str, ...], benchmark: str | None, limit: int,
            output: str) -> None:
    """Benchmarks x tasks, with deltas against the first task."""
    if len(tasks) < 2:
        raise ConsoleError("compare needs at least two tasks")
    refs = [state.ref(t) for t in tasks]
    _, comparison = state.reader.compare(refs)
    result: dict[str, Any] = {"comparison": comparison}
    diffs: list[Any] = []
    count = 0
    if benchmark:
        diffs, count = state.reader.sample_differences(refs[0], refs[1], benchmark, limit)
        result["differences"] = {"benchmark": benchmark, "count": count, "samples": diffs}
    if output != "table":
        click.echo(render.dump(result, output))
        return
    out.print(render.comparison_table(comparison))
    if benchmark:
        out.print(render.differences_table(diffs, count, comparison.tasks[0],
                                           comparison.tasks[1]))


@cli.command()
@namespace_option
@click.argument("task")
@click.pass_obj
def logs(state: State, task: str) -> None:
    """The runner's log (from the bundle, or from the pod while it exists)."""
    found = state.reader.logs(*state.ref(task))
    err.print(f"[dim]# {escape(found.source)}[/dim]")
    click.echo(found.text, nl=not found.text.endswith("\n"))


@cli.command()
@namespace_option
@click.argument("task")
@click.option("-y", "--yes", is_flag=True, help="Do not ask; do not offer the download.")
@click.option("--download-first", type=click.Path(dir_okay=False, path_type=Path),
              help="Save results.zip here before deleting.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the operator has purged the results and the task is gone.")
@click.option("--timeout", type=int, default=300, show_default=True)
@click.pass_obj
def delete(state: State, task: str, yes: bool, download_first: Path | None, wait: bool,
           timeout: int) -> None:
    """Delete a task and, for good, its results in S3."""
    namespace, name = state.ref(task)
    reader = state.reader
    row = task_row(reader.task(namespace, name))
    err.print(f"[bold red]Deleting {namespace}/{name} is irreversible.[/bold red] "
              f"It removes {escape(reader.purge_preview(namespace, name))}.")
    if download_first is None and not yes and row.has_bundle and click.confirm(
            "Download results.zip first?", default=True, err=True):
        download_first = Path(f"{name}-results.zip")
    if download_first is not None:
        save_bundle(reader, namespace, name, download_first)
    if not yes:
        click.confirm(f"Delete {namespace}/{name} and its results?", abort=True, err=True)
    reader.delete(namespace, name)
    if not wait:
        click.echo(f"{namespace}/{name} deletion requested; the operator purges its results.")
        return
    deadline = time.monotonic() + timeout
    with err.status("Waiting for the operator to purge the results..."):
        while time.monotonic() < deadline:
            try:
                current = reader.task(namespace, name)
            except NotFoundError:
                click.echo(f"{namespace}/{name} deleted; its results are purged.")
                return
            message = (current.get("status") or {}).get("message")
            time.sleep(1)
    raise ConsoleError(f"{namespace}/{name} is still there after {timeout}s"
                       + (f": {message}" if message else "")
                       + ". The operator keeps retrying the purge; check its status later.")


@cli.command("console")
@namespace_option
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--open/--no-open", "open_browser", default=True, show_default=True,
              help="Open the console in your browser.")
@click.pass_obj
def console_command(state: State, port: int, open_browser: bool) -> None:
    """The web console on 127.0.0.1, acting with your credentials."""
    from evaluation_console.web.server import serve

    serve(state.reader, port=port, open_browser=open_browser)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="kubectl evaluation", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("Aborted; nothing was deleted.")
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except ConsoleError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}")
        sys.exit(1)
