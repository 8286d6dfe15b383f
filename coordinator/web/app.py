"""`bridgestat web`: the coordinators' workspace in the browser (Starlette, served by uvicorn).

Server-rendered pages from the shared Jinja2 templates (`templates/web/`, the reports'
catalogues and number formats) and one small script (`static/workspace.js`) that polls a
study's progress. Three pages: Members (every node, its budget), Compare (an analysis from
the catalogue, its cost per member before confirming, then the chart, table and downloads)
and Studies (run a shipped or uploaded study file, its progress live, its report). Reading
pages await `AsyncNetwork` on the server's event loop; runs that spend go through `runs`.
Everything (assets too) is served by the application: the pages work without internet.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bridgestat.coordinator.analyses import REGISTRY
from bridgestat.coordinator.api import AsyncNetwork
from bridgestat.coordinator.client.fanout import Failure
from bridgestat.coordinator.client.network_file import NetworkSpec, load_network
from bridgestat.coordinator.report import study_report as report
from bridgestat.coordinator.report.i18n import (
    LANGUAGES,
    N_,
    TEMPLATE_DIR,
    Translator,
    check_language,
    render,
)
from bridgestat.coordinator.statistics import precision
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import (
    MemberBudget,
    MemberCost,
    Study,
    StudyError,
    check_against,
    check_per_query,
    load_study,
    parse_study,
    plan_costs,
    schema_tables,
)
from bridgestat.coordinator.web import forms
from bridgestat.coordinator.web.runs import (
    Run,
    RunNetwork,
    Runs,
    Step,
    csv_bytes,
    progress_words,
    xlsx_bytes,
)
from bridgestat.coordinator.web.security import (
    CSRF_FIELD,
    LANG_COOKIE,
    Guard,
    Session,
    Sessions,
    check_bind,
    csrf_ok,
)
from bridgestat.coordinator.web.state import Contacts, Pending, SpendLog
from bridgestat.v1 import node_service_pb2 as pb

STATIC = Path(__file__).resolve().parent / "static"
INFO_TIMEOUT = 5.0  # seconds a page waits for GetNodeInfo
RUN_TIMEOUT = 30.0  # deadline per query of a run
UPLOAD_LIMIT = 1_000_000  # bytes of an uploaded study file
RAW_NOTE = N_("Raw, unbiased noisy values as the nodes released them (pooling needs them): "
            "shares may lie outside 0-1; charts show them within the possible range.")


@dataclass
class Workspace:
    """Everything the pages share: the network, its clients, what is remembered."""

    network_file: Path
    spec: NetworkSpec
    insecure: bool
    data_dir: Path
    lang: str
    contacts: Contacts
    spend_log: SpendLog
    runs: Runs
    pending: dict[str, Pending]
    aio: AsyncNetwork | None = None

    @classmethod
    def open(cls, network_file: Path, data_dir: Path, lang: str,
             insecure: bool = False) -> Workspace:
        spec = load_network(network_file)
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(network_file, spec, insecure, data_dir, check_language(lang),
                   Contacts(data_dir / "members.json"), SpendLog(data_dir / "spend-log.jsonl"),
                   Runs(data_dir), {})

    def client(self) -> AsyncNetwork:
        """The reading client, made on the server's loop at first use."""
        if self.aio is None:
            self.aio = AsyncNetwork(self.spec.members, INFO_TIMEOUT, tls=self.spec.tls,
                                    insecure=self.insecure)
        return self.aio

    async def infos(self) -> dict[str, pb.GetNodeInfoResponse | Failure]:
        infos = await self.client().node_infos()
        self.contacts.update(infos)
        return infos

    def run_network(self, record: Run) -> RunNetwork:
        return RunNetwork(self.spec.members, RUN_TIMEOUT, tls=self.spec.tls,
                          insecure=self.insecure, record=record, spend_log=self.spend_log)


# -- helpers ----------------------------------------------------------------------------------


def ws(request: Request) -> Workspace:
    found: Workspace = request.app.state.workspace
    return found


def session_of(request: Request) -> Session:
    found: Session = request.scope["session"]
    return found


def lang_of(request: Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    return chosen if chosen in LANGUAGES else ws(request).lang


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    lang = lang_of(request)
    session = session_of(request)
    common = {"csrf": session.csrf, "csrf_field": CSRF_FIELD, "user": session.user,
              "path": request.url.path, "languages": LANGUAGES, "t": Translator(lang)}
    return HTMLResponse(render(f"web/{template}", lang, {**common, **context}), status)


async def form_of(request: Request) -> Mapping[str, Any]:
    """The POSTed form, refused (403) without the session's CSRF token."""
    form = await request.form(max_part_size=UPLOAD_LIMIT)
    token = form.get(CSRF_FIELD)
    if not csrf_ok(session_of(request), token if isinstance(token, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return form


def texts(form: Mapping[str, Any]) -> dict[str, str]:
    """The text fields of a form (several values of one name joined by commas)."""
    found: dict[str, str] = {}
    getlist = getattr(form, "getlist", None)
    for key in form:
        values = getlist(key) if getlist else [form[key]]
        found[key] = ", ".join(str(v) for v in values if isinstance(v, str))
    return found


async def plan_study(workspace: Workspace, study: Study
                     ) -> tuple[list[MemberCost], dict[str, str], dict[str, Any], Study]:
    """The checks `study plan` makes, on the server's loop: schema, target precisions and
    `epsilon: auto` turned into losses (and mean splits) as `study plan` does
    (`precision.resolve`), per-query caps, costs; and the study so resolved, to run."""
    infos = await workspace.infos()
    reachable = {m: i for m, i in infos.items() if not isinstance(i, Failure)}
    unreachable = {m: f"{i.code}: {i.message}" for m, i in infos.items()
                   if isinstance(i, Failure)}
    if not reachable:
        raise StudyError("no member is reachable, nothing can be checked or run")
    first = next(iter(reachable.values()))
    tables = schema_tables(first.schema)
    check_against(study, tables)
    budgets = tuple(MemberBudget(m, i.budget.total.epsilon, i.budget.spent.epsilon,
                                 i.budget.spent.rho, i.budget.total.delta or 1e-6,
                                 i.budget.max_per_query.epsilon) for m, i in reachable.items())
    study, _, _ = precision.resolve(study, budgets, tables)
    check_per_query(study, budgets)
    return list(plan_costs(study, budgets)), unreachable, tables, study


async def schema(workspace: Workspace) -> dict[str, Any]:
    infos = await workspace.infos()
    first = next((i for i in infos.values() if not isinstance(i, Failure)), None)
    return schema_tables(first.schema) if first is not None else {}


# -- members ----------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return RedirectResponse("/members", 303)


async def members(request: Request) -> Response:
    workspace = ws(request)
    infos = await workspace.infos()
    rows = workspace.contacts.views(workspace.spec.members, infos)
    return page(request, "members.html", rows=rows, network=str(workspace.network_file))


async def switch_language(request: Request) -> Response:
    lang = request.path_params["lang"]
    if lang not in LANGUAGES:
        raise HTTPException(404, f"no language {lang!r}")
    target = request.query_params.get("next", "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    response = RedirectResponse(target, 303)
    response.set_cookie(LANG_COOKIE, lang, max_age=365 * 24 * 3600, samesite="strict",
                        httponly=True)
    return response


# -- compare ----------------------------------------------------------------------------------


async def compare(request: Request) -> Response:
    workspace = ws(request)
    key = request.query_params.get("entry", "")
    entry = forms.find_entry(key) if key else None
    if key and entry is None:
        raise HTTPException(404, f"no analysis {key!r} in the catalogue")
    fields = forms.form_fields(entry, await schema(workspace), {}, {},
                               Translator(lang_of(request))) if entry else []
    return page(request, "compare.html", catalogue=forms.catalogue(), entry=entry,
                fields=fields, error="", earlier=workspace.runs.listed("compare")[:10])


async def compare_plan(request: Request) -> Response:
    workspace = ws(request)
    values = texts(await form_of(request))
    entry = forms.find_entry(values.get("entry", ""))
    if entry is None:
        raise HTTPException(400, "choose an analysis from the catalogue")
    t = Translator(lang_of(request))
    try:
        study = parse_study(forms.study_doc(entry, values), "comparison form")
        costs, unreachable, _, study = await plan_study(workspace, study)
    except StudyError as exc:
        message = str(exc)
        names = forms.field_names(REGISTRY[entry.kind])
        field = forms.error_field(message, names)
        fields = forms.form_fields(entry, await schema(workspace), values,
                                   {field: message} if field else {}, t)
        return page(request, "compare.html", 422, catalogue=forms.catalogue(), entry=entry,
                    fields=fields, error=message, earlier=[])
    run_id = secrets.token_hex(8)
    workspace.pending[run_id] = Pending(run_id, "compare", study, session_of(request).id,
                                        entry.title, entry.key)
    return page(request, "confirm.html", kind="compare", run_id=run_id, title=entry.title,
                study=study, costs=costs, unreachable=unreachable,
                affordable=all(c.affordable for c in costs), action="/compare/run",
                back=f"/compare?entry={entry.key}")


async def confirm_run(request: Request) -> Response:
    """The confirm step of a comparison or a study: start the run of a planned key once."""
    workspace = ws(request)
    form = await form_of(request)
    run_id = str(form.get("run_id") or "")
    kind = "compare" if request.url.path.startswith("/compare") else "studies"
    active = workspace.runs.active.get(run_id)
    pending = workspace.pending.get(run_id)
    if active is None:
        if workspace.runs.results(kind, run_id) is not None:  # finished before a restart
            return RedirectResponse(f"/{kind}/{run_id}", 303)
        if pending is None or pending.expired or pending.session != session_of(request).id:
            raise HTTPException(403, "this confirmation is unknown or has expired: plan the "
                                "run again (nothing was spent)")
        steps = [Step(a.id, a.title) for a in pending.study.analyses]
        record = Run(run_id, kind, workspace.runs.folder(kind, run_id), pending.title,
                     session_of(request).user, steps,
                     tuple(m.name for m in workspace.spec.members))
        if kind == "studies":
            record.folder.mkdir(parents=True, exist_ok=True)
            (record.folder / "study.yaml").write_text(
                Path(pending.study.source).read_text("utf-8")
                if Path(pending.study.source).is_file() else "", "utf-8")
        active = workspace.runs.start(record, pending.study, workspace.run_network(record))
    if kind == "compare" and active.task is not None:
        await asyncio.shield(active.task)
    return RedirectResponse(f"/{kind}/{run_id}", 303)


async def compare_result(request: Request) -> Response:
    workspace = ws(request)
    run_id = request.path_params["run_id"]
    doc = workspace.runs.results("compare", run_id)
    active = workspace.runs.active.get(run_id)
    if doc is None and active is None:
        raise HTTPException(404, f"no comparison {run_id!r}")
    analysis = (doc or {}).get("analyses") or []
    lang = lang_of(request)
    section = Markup(report.analysis_html(analysis[0], doc["members"], lang)) \
        if analysis and doc else None
    tables = [(i, t.get("name") or str(i + 1)) for i, t in
              enumerate(analysis[0].get("tables") or [])] if analysis else []
    return page(request, "result.html", run_id=run_id, doc=doc, section=section,
                tables=tables, run=active, raw_note=Translator(lang)(RAW_NOTE))


def _analysis(request: Request) -> dict[str, Any]:
    doc = ws(request).runs.results("compare", request.path_params["run_id"])
    if not doc or not doc.get("analyses"):
        raise HTTPException(404, "no results for this comparison")
    found: dict[str, Any] = doc["analyses"][0]
    return found


async def compare_csv(request: Request) -> Response:
    analysis = _analysis(request)
    try:
        index = int(request.query_params.get("table", "0"))
        body = csv_bytes(analysis, index)
    except (KeyError, ValueError):
        raise HTTPException(404, "no such table") from None
    name = f"{analysis['id']}-{request.path_params['run_id']}-{index}.csv"
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


async def compare_xlsx(request: Request) -> Response:
    analysis = _analysis(request)
    body = xlsx_bytes(analysis, Translator(lang_of(request))(RAW_NOTE))
    name = f"{analysis['id']}-{request.path_params['run_id']}.xlsx"
    return Response(body, media_type="application/vnd.openxmlformats-officedocument."
                    "spreadsheetml.sheet",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


# -- studies ----------------------------------------------------------------------------------


def shipped_studies() -> dict[str, Path]:
    return {p.stem: p for p in sorted(STANDARD_STUDY.parent.glob("*.yaml"))}


async def studies(request: Request) -> Response:
    return page(request, "studies.html", shipped=shipped_studies(), error="",
                earlier=ws(request).runs.listed("studies"))


async def study_plan(request: Request) -> Response:
    workspace = ws(request)
    form = await form_of(request)
    upload = form.get("upload")
    run_id = secrets.token_hex(8)
    try:
        if isinstance(upload, UploadFile) and upload.filename:
            raw = await upload.read()
            if len(raw) > UPLOAD_LIMIT:
                raise StudyError(f"{upload.filename}: larger than {UPLOAD_LIMIT:,} bytes")
            folder = workspace.runs.folder("studies", run_id)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "study.yaml"
            path.write_bytes(raw)
            study = replace(load_study(path), source=upload.filename)
            source = path
        else:
            chosen = shipped_studies().get(str(form.get("shipped") or ""))
            if chosen is None:
                raise StudyError("choose a shipped study or upload a study file")
            study, source = load_study(chosen), chosen
        costs, unreachable, _, study = await plan_study(workspace, study)
    except (StudyError, yaml.YAMLError) as exc:
        return page(request, "studies.html", 422, shipped=shipped_studies(), error=str(exc),
                    earlier=workspace.runs.listed("studies"))
    study = replace(study, source=str(source))
    workspace.pending[run_id] = Pending(run_id, "study", study, session_of(request).id,
                                        study.title)
    return page(request, "confirm.html", kind="studies", run_id=run_id, title=study.title,
                study=study, costs=costs, unreachable=unreachable,
                affordable=all(c.affordable for c in costs), action="/studies/run",
                back="/studies")


async def study_page(request: Request) -> Response:
    workspace = ws(request)
    run_id = request.path_params["run_id"]
    active = workspace.runs.active.get(run_id)
    doc = workspace.runs.results("studies", run_id)
    if active is None and doc is None:
        raise HTTPException(404, f"no study run {run_id!r}")
    progress = active.progress() if active else None
    return page(request, "study_run.html", run_id=run_id, doc=doc, progress=progress,
                run=active, words=progress_words(Translator(lang_of(request))))


async def study_progress(request: Request) -> Response:
    active = ws(request).runs.active.get(request.path_params["run_id"])
    if active is None:
        return JSONResponse({"state": "done", "steps": [], "members": [], "log": []})
    return JSONResponse({**active.progress(),
                         "words": progress_words(Translator(lang_of(request)))})


async def study_report(request: Request) -> Response:
    workspace = ws(request)
    run_id = request.path_params["run_id"]
    doc = workspace.runs.results("studies", run_id)
    if doc is None:
        raise HTTPException(404, f"no results for study run {run_id!r}")
    lang = lang_of(request)
    target = workspace.runs.folder("studies", run_id) / f"report-{lang}.html"
    if not target.exists() or run_id in workspace.runs.active and \
            workspace.runs.active[run_id].state == "running":
        await asyncio.to_thread(report.write_report, doc, target, lang)
    return FileResponse(target, media_type="text/html; charset=utf-8")


async def study_results(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    path = ws(request).runs.folder("studies", run_id) / "results.json"
    if not path.exists():
        raise HTTPException(404, "no results yet")
    return FileResponse(path, media_type="application/json",
                        headers={"content-disposition":
                                 f'attachment; filename="results-{run_id}.json"'})


async def report_css(request: Request) -> Response:
    return FileResponse(TEMPLATE_DIR / "report.css", media_type="text/css")


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if "session" not in request.scope:
        return Response(detail, status, media_type="text/plain")
    return page(request, "error.html", status, code=status, detail=detail)


def create_app(workspace: Workspace, sessions: Sessions, secure: bool) -> Guard:
    """The ASGI application: the routes behind the token guard."""
    routes = [
        Route("/", home), Route("/members", members),
        Route("/lang/{lang}", switch_language),
        Route("/compare", compare), Route("/compare/plan", compare_plan, methods=["POST"]),
        Route("/compare/run", confirm_run, methods=["POST"]),
        Route("/compare/{run_id}", compare_result),
        Route("/compare/{run_id}/table.csv", compare_csv),
        Route("/compare/{run_id}/tables.xlsx", compare_xlsx),
        Route("/studies", studies), Route("/studies/plan", study_plan, methods=["POST"]),
        Route("/studies/run", confirm_run, methods=["POST"]),
        Route("/studies/{run_id}", study_page),
        Route("/studies/{run_id}/progress", study_progress),
        Route("/studies/{run_id}/report", study_report),
        Route("/studies/{run_id}/results.json", study_results),
        Route("/static/report.css", report_css),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error,
                                                       Exception: http_error})
    app.state.workspace = workspace
    return Guard(app, sessions, secure)


# -- serving ----------------------------------------------------------------------------------


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(network: Path, *, lang: str = "en", host: str = "127.0.0.1", port: int = 8765,
          data_dir: Path | None = None, certfile: str | None = None,
          keyfile: str | None = None, user: str | None = None, insecure: bool = False) -> None:
    """Check the binding, open the workspace, print its URL with the token, serve."""
    import uvicorn  # the server only when serving

    check_bind(host, certfile, keyfile)
    workspace = Workspace.open(network, data_dir or Path("bridgestat-web"), lang, insecure)
    sessions = Sessions(user=user)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    scheme = "https" if certfile else "http"
    bound = sock.getsockname()[1]
    app = create_app(workspace, sessions, secure=bool(certfile))
    config = uvicorn.Config(app, log_level="warning", ssl_certfile=certfile,
                            ssl_keyfile=keyfile, access_log=False)
    print(f"bridgestat web: the workspace of {network} (data in {workspace.data_dir})\n"
          f"Open this URL in your browser (it carries the access token; keep it private):\n"
          f"    {scheme}://{url_host(host)}:{bound}/?token={sessions.token}", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        print("bridgestat web: stopped", file=sys.stderr)
