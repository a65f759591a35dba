"""The web UI under /ui: server-rendered pages over the same services the API routes call.

Pages read; actions (promote, rollback, archive) are POST forms carrying a CSRF token, each
calling the one service function its API route calls. Every route declares its scope like an
API route (``require``); ``registry.ui.access`` is the one place that knows about tokens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FPath
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.adapters import queries as adapter_queries
from registry.adapters import service as adapter_service
from registry.api.deps import SessionDep, get_context, require
from registry.auth.scopes import Scope
from registry.db.engine import session_scope
from registry.errors import (
    AliasNotFound,
    Forbidden,
    GateFailed,
    InvalidInput,
    PermissionDenied,
    RegistryError,
    TooLarge,
)
from registry.evals import queries as eval_queries
from registry.evals import service as eval_service
from registry.evals.compare import CompareRowOut, compare
from registry.evals.metrics import lower_is_better, split_name
from registry.jobs import queries as job_queries
from registry.jobs import service as job_service
from registry.lifecycle import policies as lifecycle_policies
from registry.lifecycle import queries as lifecycle_queries
from registry.lifecycle import service as lifecycle
from registry.ui import access, charts, queries
from registry.ui.access import Visitor

HERE = Path(__file__).parent
STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}
MAX_FORM_BYTES = 64 * 1024
LINEAGE_LIMIT = 100  # versions drawn per direction
HISTORY_LIMIT = 100
SECURITY_HEADERS = {
    # Everything is served from here; no inline script or style, no framing.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _path(value: str) -> str:
    return quote(value, safe="/")


def _ago(at: datetime | None) -> str:
    if at is None:
        return "—"
    seconds = (datetime.now(UTC) - at.replace(tzinfo=at.tzinfo or UTC)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _safe_url(url: str | None) -> str | None:
    """A link target only for http(s) URLs (never javascript: or data:)."""
    if url and url.lower().startswith(("https://", "http://")):
        return url
    return None


env = Environment(loader=FileSystemLoader(HERE / "templates"),
                  autoescape=select_autoescape(default=True, default_for_string=True),
                  trim_blocks=True, lstrip_blocks=True)
env.filters.update(path=_path, ago=_ago, size=_size, safe_url=_safe_url,
                   num=lambda v: "—" if v is None else f"{v:.4g}",
                   signed=lambda v: "—" if v is None else f"{v:+.4g}",
                   when=lambda t: t.strftime("%Y-%m-%d %H:%M") if t else "—")


def _login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/ui/login?" + urlencode({"next": target})


def ui_visitor(request: Request) -> Visitor:
    """Every UI request: the CSRF token and the principal the token cookie names (with auth
    on, a page asked for without one redirects to the login form)."""
    ctx = get_context(request)
    csrf, new = access.csrf_token(request)
    request.state.ui_new_csrf = csrf if new else None
    auth_on = access.auth_required(ctx.settings)
    principal = None
    secret = request.cookies.get(access.TOKEN_COOKIE)
    if secret:
        with session_scope(ctx.sessions) as session:
            principal = access.authenticate(session, secret)
    # The route's require(scope) takes it as the request's principal, as for a bearer token.
    request.state.principal = principal
    open_path = request.url.path in ("/ui/login", "/ui/logout") or \
        request.url.path.startswith("/ui/static/")
    if auth_on and principal is None and not open_path:
        raise StarletteHTTPException(303, "log in first", {"Location": _login_url(request)})
    visitor = Visitor(principal=principal, auth_on=auth_on, csrf=csrf)
    request.state.ui_visitor = visitor
    return visitor


VisitorDep = Annotated[Visitor, Depends(ui_visitor)]
router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(ui_visitor)])
READ = [require(Scope.READ)]
PROMOTE = [require(Scope.PROMOTE)]


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> Response:
    visitor: Visitor = request.state.ui_visitor
    html = env.get_template(template).render(v=visitor, Scope=Scope, path=request.url.path,
                                             **context)
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    _set_csrf(request, response)
    return response


def _set_csrf(request: Request, response: Response) -> None:
    new = getattr(request.state, "ui_new_csrf", None)
    if new:
        response.set_cookie(access.CSRF_COOKIE, new, httponly=True, samesite="strict",
                            path="/ui")


def error_page(request: Request, exc: RegistryError) -> Response:
    return render(request, "error.html", status=exc.status_code, error=exc)


def redirect(request: Request, url: str) -> Response:
    response = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    _set_csrf(request, response)
    return response


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form body (what every form here posts), last value of each field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidInput("expected a form (application/x-www-form-urlencoded)")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise TooLarge(f"form over {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("malformed form body") from None
    return dict(pairs)


FormDep = Annotated[dict[str, str], Depends(form_fields)]
NamePath = Annotated[str, FPath(max_length=200)]
PageNo = Annotated[int, Query(ge=1, le=queries.MAX_PAGE)]
Filter = Annotated[str | None, Query(max_length=queries.MAX_FILTER)]


def _blank(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _reason(form: dict[str, str]) -> str | None:
    reason = _blank(form.get("reason"))
    if reason is not None and len(reason) > 2000:
        raise InvalidInput("a reason is at most 2000 characters")
    return reason


def _check_action(request: Request, visitor: Visitor, form: dict[str, str],
                  adapter: str) -> None:
    if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
        raise Forbidden("the form's CSRF token does not match this browser's: reload the page "
                        "and try again")
    if not visitor.may(Scope.PROMOTE, adapter):
        raise PermissionDenied("this needs a token with the promote scope for this adapter: "
                               "log in at /ui/login")


# --- static files --------------------------------------------------------------------------


@router.get("/static/{filename}", dependencies=[require(None)])
def static(filename: str) -> Response:
    if filename not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((HERE / "static" / filename).read_bytes(), media_type=STATIC[filename],
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})


# --- pages ---------------------------------------------------------------------------------


@router.get("", dependencies=READ)
def adapters(request: Request, session: SessionDep, q: Filter = None, base: Filter = None,
             alias: Filter = None, status: Filter = None, page: PageNo = 1) -> Response:
    try:
        found = queries.adapters_page(session, text=_blank(q), base=_blank(base),
                                      alias=_blank(alias), status=_blank(status), page=page)
        bases, aliases = queries.filter_choices(session)
    except RegistryError as exc:
        return error_page(request, exc)
    filters = {k: v for k, v in (("q", q), ("base", base), ("alias", alias),
                                 ("status", status)) if v}
    return render(request, "adapters.html", found=found, bases=bases, aliases=aliases,
                  filters=filters, statuses=["registered", "validating", "validated", "failed",
                                             "archived"],
                  query=lambda **kw: urlencode({**filters, **kw}))


def _chart(session: Session, *, adapter_id: int, metric: str | None, metrics: list[str],
           holders: dict[int, list[str]], base_id: int | None) -> charts.MetricChart | None:
    if metric is None or metric not in metrics:
        return None
    suite, name = split_name(metric)
    series = queries.metric_series(session, adapter_id=adapter_id, suite=suite, metric=name)
    base = (eval_queries.base_score(session, base_id=base_id, suite=suite, metric=name)
            if base_id is not None else None)
    return charts.metric_chart(series, holders=holders,
                               base_value=base.value if base is not None else None)


@router.get("/adapters/{name:path}/versions/{version:int}", dependencies=READ)
def version_page(request: Request, name: NamePath,
                 version: Annotated[int, FPath(ge=1, le=2**31 - 1)],
                 session: SessionDep, done: Filter = None) -> Response:
    try:
        out = adapter_service.to_out(adapter_queries.get_version(session, name=name,
                                                                 version=version))
        lineage = adapter_service.lineage(session, name=name, version=version,
                                          limit=LINEAGE_LIMIT)
        parent = production = None
        if out.parent is not None:
            parent = adapter_service.to_out(adapter_queries.get_version(
                session, name=out.parent.name, version=out.parent.version))
        try:
            production = adapter_service.to_out(
                lifecycle_queries.resolve_alias(session, name=name, alias="production"))
        except AliasNotFound:
            production = None
        base_scores = (eval_service.base_scores_out(session, base=out.base_model,
                                                    revision=out.base_model_revision)
                       if out.base_model else [])
    except RegistryError as exc:
        return error_page(request, exc)
    vs_parent = compare(name=out.name, version=out.version, scores=out.scores,
                        base=out.base_model, other_ref=parent.ref if parent else None,
                        other_scores=parent.scores if parent else (), base_scores=base_scores)
    vs_prod = compare(name=out.name, version=out.version, scores=out.scores,
                      base=out.base_model, other_ref=production.ref if production else None,
                      other_scores=production.scores if production else ())
    prod_rows = {(r.suite, r.metric): r for r in vs_prod.rows}
    rows: list[tuple[CompareRowOut | None, CompareRowOut | None]] = [
        (r, prod_rows.get((r.suite, r.metric))) for r in vs_parent.rows]
    rows += [(None, r) for key, r in prod_rows.items()
             if key not in {(p.suite, p.metric) for p in vs_parent.rows}]
    return render(request, "version.html", out=out, rows=rows, parent=parent,
                  production=production, graph=charts.lineage_graph(lineage),
                  lineage=lineage, flash=_flash(done, None, None))


def _flash(done: str | None, alias: str | None, version: str | None) -> str | None:
    """The message after an action (from the redirect's query: only fixed words vary)."""
    messages = {
        "promote": f"{alias} now points at version {version}.",
        "force": f"{alias} now points at version {version} (forced).",
        "none": f"{alias} already pointed at version {version}: nothing changed.",
        "rollback": f"{alias} rolled back to version {version}.",
        "archived": "Archived: this version can no longer be promoted or rolled back to.",
    }
    return messages.get(done or "")


@router.get("/adapters/{name:path}", dependencies=READ)
def adapter_page(request: Request, name: NamePath, session: SessionDep, page: PageNo = 1,
                 metric: Filter = None, done: Filter = None, alias: Filter = None,
                 version: Filter = None) -> Response:
    try:
        adapter = adapter_queries.get_adapter(session, name)
        versions = queries.versions_page(session, adapter_id=adapter.id, page=page)
        aliases = lifecycle.list_aliases(session, name=name)
        history = lifecycle.history(session, name=name, limit=HISTORY_LIMIT)
        policies = lifecycle_policies.list_policies(session, name=name)
        metrics = queries.adapter_metrics(session, adapter_id=adapter.id)
        chosen = _blank(metric) or (metrics[0] if metrics else None)
        holders: dict[int, list[str]] = {}
        for a in aliases:
            holders.setdefault(a.version, []).append(a.alias)
        latest = None
        if versions.total:
            latest = adapter_queries.get_version(session, name=name, version=None)
        chart = _chart(session, adapter_id=adapter.id, metric=chosen, metrics=metrics,
                       holders=holders, base_id=latest.base_model_id if latest else None)
        values: dict[int, float] = {}
        if chart is not None:
            values = {p.version: p.value for p in chart.points}
        bases = queries.registered_bases(session)
        verdicts = queries.verdicts(session, version_ids=[r.id for r in versions.rows])
    except RegistryError as exc:
        return error_page(request, exc)
    return render(request, "adapter.html", adapter=adapter, versions=versions,
                  aliases=aliases, holders=holders, history=history, policies=policies,
                  metrics=metrics, metric=chosen, chart=chart, values=values, bases=bases,
                  verdicts=verdicts, latest=latest, flash=_flash(done, alias, version),
                  lower_better=lower_is_better(chosen) if chosen else False)


@router.get("/jobs", dependencies=READ)
def jobs(request: Request, session: SessionDep) -> Response:
    try:
        groups = {status: [job_service.to_out(j) for j in
                           job_queries.list_jobs(session, status=status, limit=limit)]
                  for status, limit in (("running", 100), ("queued", 100), ("failed", 50))}
    except RegistryError as exc:
        return error_page(request, exc)
    return render(request, "jobs.html", groups=groups, now=datetime.now(UTC))


# --- actions -------------------------------------------------------------------------------


@router.get("/actions/promote", dependencies=READ)
def promote_preview(request: Request, session: SessionDep, visitor: VisitorDep,
                    name: Annotated[str, Query(max_length=200)],
                    version: Annotated[str, Query(max_length=300)],
                    alias: Annotated[str, Query(max_length=100)] = "production",
                    reason: Annotated[str, Query(max_length=2000)] = "") -> Response:
    """The gates as they evaluate now, and a confirm button (the move happens on POST)."""
    try:
        if not visitor.may(Scope.READ, name):
            raise PermissionDenied(f"this token's namespaces do not include {name!r}")
        plan = lifecycle.check_promotion(session, name=name, alias=alias.strip(),
                                         version=version.strip(), reason=_blank(reason))
    except RegistryError as exc:
        return error_page(request, exc)
    return render(request, "promote.html", name=name, plan=plan, reason=reason, refused=None)


@router.post("/actions/promote", dependencies=PROMOTE)
def promote(request: Request, session: SessionDep, visitor: VisitorDep,
            form: FormDep) -> Response:
    name, alias = form.get("name", ""), form.get("alias", "").strip()
    version = form.get("version", "").strip()
    try:
        _check_action(request, visitor, form, name)
        reason = _reason(form)
        expect = _blank(form.get("expect_current"))
        expect_current: int | str | None = expect
        if expect is not None and expect != "none":
            if not expect.isdigit():
                raise InvalidInput("expect_current: a version number or 'none'")
            expect_current = int(expect)
        try:
            out = lifecycle.promote(session, name=name, alias=alias, version=version,
                                    actor=visitor.actor, reason=reason,
                                    expect_current=expect_current)
        except GateFailed as exc:
            # Nothing moved; the same gates, each with its values, say why.
            plan = lifecycle.check_promotion(session, name=name, alias=alias,
                                             version=version, reason=reason)
            return render(request, "promote.html", status=exc.status_code, name=name,
                          plan=plan, reason=reason or "", refused=exc.detail)
    except RegistryError as exc:
        return error_page(request, exc)
    return redirect(request, f"/ui/adapters/{_path(out.name)}?" + urlencode(
        {"done": out.action, "alias": out.alias, "version": out.version}))


@router.post("/actions/rollback", dependencies=PROMOTE)
def rollback(request: Request, session: SessionDep, visitor: VisitorDep,
             form: FormDep) -> Response:
    name = form.get("name", "")
    try:
        _check_action(request, visitor, form, name)
        out = lifecycle.rollback(session, name=name, alias=form.get("alias", "").strip(),
                                 actor=visitor.actor, reason=_reason(form))
    except RegistryError as exc:
        return error_page(request, exc)
    return redirect(request, f"/ui/adapters/{_path(out.name)}?" + urlencode(
        {"done": "rollback", "alias": out.alias, "version": out.version}))


@router.post("/actions/archive", dependencies=PROMOTE)
def archive(request: Request, session: SessionDep, visitor: VisitorDep,
            form: FormDep) -> Response:
    name, version = form.get("name", ""), form.get("version", "")
    try:
        _check_action(request, visitor, form, name)
        if not version.isascii() or not version.isdigit() or not 1 <= int(version) < 2**31:
            raise InvalidInput("version: a version number")
        target = lifecycle.archive(session, name=name, version=int(version),
                                   actor=visitor.actor, reason=_reason(form))
    except RegistryError as exc:
        return error_page(request, exc)
    return redirect(request, f"/ui/adapters/{_path(name)}/versions/{target.version}?done=archived")


# --- login ---------------------------------------------------------------------------------


def _next(value: str | None) -> str:
    """Only a path inside the UI (never another site)."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui"


@router.get("/login", dependencies=[require(None)])
def login_form(request: Request, next: Filter = None) -> Response:
    return render(request, "login.html", next=_next(next), failed=False)


@router.post("/login", dependencies=[require(None)])
def login(request: Request, visitor: VisitorDep, form: FormDep) -> Response:
    target = _next(form.get("next"))
    if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
        return error_page(request, Forbidden("the form's CSRF token does not match this "
                                             "browser's: reload the page and try again"))
    secret = form.get("token", "").strip()
    with session_scope(get_context(request).sessions) as session:
        principal = access.authenticate(session, secret)
    if principal is None:
        return render(request, "login.html", status=401, next=target, failed=True)
    response = redirect(request, target)
    # A session cookie (no Max-Age): entered once per browser session.
    response.set_cookie(access.TOKEN_COOKIE, secret, httponly=True, samesite="strict",
                        path="/ui", secure=request.url.scheme == "https")
    return response


@router.post("/logout", dependencies=[require(None)])
def logout(request: Request, form: FormDep) -> Response:
    if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
        return error_page(request, Forbidden("the form's CSRF token does not match this "
                                             "browser's: reload the page and try again"))
    response = redirect(request, "/ui/login")
    response.delete_cookie(access.TOKEN_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response
