"""The local web console: Starlette pages over the same `Reader` as the CLI.

It listens on 127.0.0.1 only and acts with the credentials of the user who started it, so
it guards against the other people and pages that can reach 127.0.0.1:
- a random access token, printed in the URL once, becomes an HttpOnly SameSite=Strict
  cookie; every request without it is refused (as Jupyter does);
- the Host header must be 127.0.0.1 or localhost (no DNS rebinding);
- the one state-changing request, Delete, is a POST carrying a CSRF token derived from the
  access token, and its Origin, when sent, must be the console's own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import socket
import threading
import webbrowser
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from evaluation_console import render
from evaluation_console.errors import ConsoleError, NotFoundError
from evaluation_console.model import Phase, TaskRow, age, to_plain
from evaluation_console.reader import Reader
from evaluation_console.samples import SampleDiff, Verdict

HERE = Path(__file__).parent
COOKIE = "evaluation_console_token"
PAGE_SIZE = 25
MAX_COMPARE = 4
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]


def csrf_token(access_token: str) -> str:
    return hmac.new(access_token.encode(), b"csrf", hashlib.sha256).hexdigest()


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["score"] = lambda v: render.score(v)
    env.filters["pct"] = lambda v: 0 if v is None else max(0.0, min(100.0, v * 100))
    env.filters["metric"] = render.metric_value
    env.filters["age"] = age
    env.filters["signed"] = lambda v: "" if v is None else f"{v:+.4f}"
    return env


def filter_rows(rows: list[TaskRow], status: str, model: str) -> list[TaskRow]:
    chosen = []
    for row in rows:
        if status and row.phase.value != status:
            continue
        if model and model.casefold() not in row.model.casefold():
            continue
        chosen.append(row)
    return chosen


class AccessToken(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        offered = request.query_params.get("token")
        if offered is not None and hmac.compare_digest(offered, self.token):
            query = {k: v for k, v in request.query_params.multi_items() if k != "token"}
            target = request.url.path + (f"?{urlencode(query)}" if query else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return response
        if not hmac.compare_digest(request.cookies.get(COOKIE, ""), self.token):
            return PlainTextResponse(
                "Open the console with the link `kubectl evaluation console` printed "
                "(it carries the access token).", status_code=403)
        return await call_next(request)


class Console:
    def __init__(self, reader: Reader, token: str) -> None:
        self.reader = reader
        self.token = token
        self.env = _environment()

    def page(self, request: Request, template: str, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            request=request, csrf=csrf_token(self.token),
            default_namespace=self.reader.kube.default_namespace, **context)
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, error: ConsoleError) -> HTMLResponse:
        code = 404 if isinstance(error, NotFoundError) else (
            403 if str(error).startswith("refused") else 502)
        return self.page(request, "error.html", status_code=code, message=str(error))

    # --- pages --------------------------------------------------------------------------
    def _list_query(self, request: Request) -> tuple[str, str | None, str, str]:
        ns = request.query_params.get("namespace", self.reader.kube.default_namespace)
        return ns, (None if ns in ("", "*") else ns), request.query_params.get(
            "status", ""), request.query_params.get("model", "")

    def tasks(self, request: Request) -> Response:
        ns_text, namespace, status, model = self._list_query(request)
        try:
            rows = filter_rows(self.reader.rows(namespace), status, model)
        except ConsoleError as error:
            return self.error(request, error)
        return self.page(request, "list.html", rows=rows, namespace=ns_text,
                         status=status, model=model, phases=[p.value for p in Phase
                                                              if p is not Phase.PENDING],
                         flash=request.query_params.get("deleted", ""))

    def api_tasks(self, request: Request) -> Response:
        _, namespace, status, model = self._list_query(request)
        try:
            rows = filter_rows(self.reader.rows(namespace), status, model)
        except ConsoleError as error:
            return JSONResponse({"error": str(error)}, status_code=502)
        return JSONResponse([{**to_plain(r), "age": age(r.created),
                              "overallText": render.score(r.overall)} for r in rows])

    def details(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        try:
            details = self.reader.details(ns, name)
        except ConsoleError as error:
            return self.error(request, error)
        return self.page(request, "details.html", d=details)

    def api_details(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        try:
            return JSONResponse(to_plain(self.reader.details(ns, name)))
        except ConsoleError as error:
            return JSONResponse({"error": str(error)}, status_code=404)

    def samples(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        q = request.query_params
        try:
            verdict = Verdict(q.get("verdict", "all"))
        except ValueError:
            verdict = Verdict.ALL
        try:
            number = max(1, int(q.get("page", "1")))
        except ValueError:
            number = 1
        grep = q.get("q", "")
        try:
            details, bench, page = self.reader.samples(
                ns, name, q.get("benchmark") or None, verdict, grep,
                (number - 1) * PAGE_SIZE, PAGE_SIZE)
        except ConsoleError as error:
            return self.error(request, error)
        pages = max(1, math.ceil(page.matched / PAGE_SIZE))

        def link(**changes: Any) -> str:
            params = {"benchmark": bench.name, "verdict": verdict.value, "q": grep,
                      "page": number, **changes}
            return "?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

        return self.page(request, "samples.html", d=details, bench=bench, page=page,
                         verdict=verdict.value, q=grep, number=number, pages=pages, link=link)

    def compare(self, request: Request) -> Response:
        refs_text = [t for t in request.query_params.getlist("t") if t.strip()]
        default = self.reader.kube.default_namespace
        try:
            all_rows = self.reader.rows(None)
        except ConsoleError:
            all_rows = self.reader.rows(default)
        context: dict[str, Any] = {"choices": [r for r in all_rows
                                               if r.phase is Phase.COMPLETED],
                                   "chosen": refs_text, "comparison": None}
        if not refs_text:
            return self.page(request, "compare.html", **context)
        if not 2 <= len(refs_text) <= MAX_COMPARE:
            return self.page(request, "compare.html", status_code=400, **context,
                             problem=f"Choose 2 to {MAX_COMPARE} tasks to compare.")
        try:
            refs = [_ref(t, default) for t in refs_text]
            details, comparison = self.reader.compare(refs)
            benchmark = request.query_params.get("benchmark") or (
                comparison.rows[0].benchmark if comparison.rows else "")
            diffs: list[SampleDiff] = []
            count = 0
            if benchmark:
                try:
                    diffs, count = self.reader.sample_differences(refs[0], refs[1], benchmark,
                                                                  limit=20)
                except ConsoleError as error:
                    context["diff_problem"] = str(error)
        except ConsoleError as error:
            return self.error(request, error)
        context.update(details=details, comparison=comparison, benchmark=benchmark,
                       diffs=diffs, diff_count=count)
        return self.page(request, "compare.html", **context)

    def download(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        try:
            _, size, chunks = self.reader.bundle(ns, name)
        except ConsoleError as error:
            return self.error(request, error)
        return StreamingResponse(chunks, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{name}-results.zip"',
            "Content-Length": str(size), "Cache-Control": "no-store"})

    def logs(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        try:
            found = self.reader.logs(ns, name)
        except ConsoleError as error:
            return self.error(request, error)
        return self.page(request, "logs.html", ns=ns, name=name, logs=found)

    def confirm_delete(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        try:
            details = self.reader.details(ns, name)
            preview = self.reader.purge_preview(ns, name)
        except ConsoleError as error:
            return self.error(request, error)
        return self.page(request, "delete.html", d=details, preview=preview)

    async def delete(self, request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        form = await request.form()
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.url.netloc}"
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf_token(self.token)) or (
                origin is not None and origin != own):
            return PlainTextResponse("refused: the request did not come from this console's "
                                     "own Delete form (CSRF check failed)", status_code=403)
        if form.get("confirm") != name:
            return PlainTextResponse("type the task's name to confirm the deletion",
                                     status_code=400)
        try:
            self.reader.delete(ns, name)
        except ConsoleError as error:
            return self.error(request, error)
        return RedirectResponse("/?" + urlencode({"namespace": ns, "deleted": f"{ns}/{name}"}),
                                status_code=303)

    def app(self) -> Starlette:
        task = "/tasks/{namespace}/{name}"
        routes = [
            Route("/", self.tasks),
            Route("/api/tasks", self.api_tasks),
            Route("/api" + task, self.api_details),
            Route("/compare", self.compare),
            Route(task, self.details),
            Route(task + "/samples", self.samples),
            Route(task + "/logs", self.logs),
            Route(task + "/results.zip", self.download),
            Route(task + "/delete", self.confirm_delete, methods=["GET"]),
            Route(task + "/delete", self.delete, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS),
                      Middleware(AccessToken, token=self.token)]
        return Starlette(routes=routes, middleware=middleware)


def _ref(text: str, default: str) -> tuple[str, str]:
    from evaluation_console.reader import split_ref

    return split_ref(text, default)


def create_app(reader: Reader, token: str | None = None) -> tuple[Starlette, str]:
    token = token or secrets.token_urlsafe(24)
    return Console(reader, token).app(), token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(reader: Reader, port: int = 0, open_browser: bool = True) -> None:
    import uvicorn

    app, token = create_app(reader)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/?token={token}"
    print(f"Evaluation console: {url}\n(acting with your kubeconfig and S3 credentials; "
          "Ctrl-C stops it)", flush=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
