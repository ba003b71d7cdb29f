"""The HTTP API's routes: the FastAPI application of one host daemon.

Theory of operation. `build_app(context)` returns an ASGI application whose
every route is a thin call into the same library the CLI calls (no second
implementation): `servers.operations.Operations` for groups and servers,
`scaling.client` for scaling and CPU pools, `services.client` and
`services.status` for the service manager, `replication.status` for pairs,
`transfers.read_transfers` for image transfers (the records `image
send|receive` write to etcd).
Reads go to etcd on each request (what the CLI's `list`/`show` do), so a
read after an action's answer sees what the action did. An action answers
when the CLI's command would print: a lifecycle operation once the owning
host reports it done (or its timeout passes: 504).

Errors are one sentence in `{"detail": ...}`: 401 for a missing or wrong
token (checked before the body is read, `api.guard`, and again before the
handler, so nothing changed), 413 for a body over 1 MiB and 411 for one
sent without a length, 422 for a body or
parameter that does not fit its model, 404 for an unknown group, server or
service, 409 for a request the cluster's state refuses (or that another
request on the same server overtook), 503 when etcd does
not answer, 504 when the owning host did not carry it out in time, 502 for
another failure outside us. An unexpected exception is a BUG log line and a
500 that says nothing more.

The dashboard: `/` is one static page (`api/static/`, package data, no
build step, nothing fetched from outside the machine) that follows
`/events`, a server-sent event stream of cluster snapshots fed by one etcd
watch (`api.events.Feed`, one per application, kept in `app.state.feed`).
Neither is in the OpenAPI document: the page is not JSON, and the stream
never ends, which a schema-driven client cannot call. `/events` is a read
(the token when reads need it); the page and its assets are open: they hold
no state and no secret (the page asks the operator for the token and keeps
it in the tab's sessionStorage).

`/openapi.json` is the OpenAPI document; there is no `/docs` page because
FastAPI's would load its script from outside the machine. `/metrics` is the
Prometheus text of this process's registry (`common.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from servergroup.api.auth import Access
from servergroup.api.events import Feed, read_snapshot
from servergroup.api.guard import ActionGuard, unauthorized
from servergroup.api.models import (
    Done,
    GroupCreate,
    GroupView,
    HealthView,
    HostView,
    Lifecycle,
    MigrateRequest,
    PairView,
    Problem,
    RelocateRequest,
    ScaleView,
    ServerCreate,
    ServerView,
    ServicesView,
    ServiceView,
    TransferView,
    group_view,
    health_view,
    host_views,
    pair_view,
    scale_view,
    server_view,
    transfer_view,
)
from servergroup.common.component import ComponentHealth
from servergroup.common.errors import LocalError, RemoteError, ServergroupError, sentence
from servergroup.common.logsetup import log_bug
from servergroup.coordination import CoordinationError, Coordinator
from servergroup.replication.status import read_pair, read_pairs
from servergroup.scaling.client import read_pools, scale_cpu
from servergroup.scaling.protocol import MAX_TIMEOUT_MS, Direction
from servergroup.servers.model import MAX_VCPUS, NAME_PATTERN, Server
from servergroup.servers.operations import Operations, OperationSuperseded, OperationTimeout
from servergroup.servers.registry import GroupNotFound, Registry, ServerNotFound
from servergroup.services.client import (
    UnknownService,
    clear,
    enabled_sentence,
    get_status,
    read_services,
    relocate,
    set_enabled,
)
from servergroup.services.status import status_json, summaries, summary_json
from servergroup.transfers import read_transfers

log = logging.getLogger(__name__)

VERSION = "1"

#: The dashboard's files (package data).
STATIC = FilePath(__file__).with_name("static")
#: The page loads only its own files, and talks only to this API.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    """What the routes use: the daemon's etcd client, its host name, health and access rule."""

    coordinator: Coordinator
    host: str
    access: Access
    health: Callable[[], Mapping[str, ComponentHealth]]
    #: The default bound on a lifecycle operation (`[coordination] operation_timeout`).
    operation_timeout: float = 10.0


class Refused(Exception):
    """A request the access rule refused (401): `reason` is one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(LocalError):
    """No host, replication pair or transfer of that name (404)."""


#: (exception class, HTTP status): the first that matches wins.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 404),
    (GroupNotFound, 404),
    (ServerNotFound, 404),
    (UnknownService, 404),
    (OperationSuperseded, 409),  # another operator's request won: a conflict, not a failure
    (OperationTimeout, 504),
    (CoordinationError, 503),
    (LocalError, 409),
    (RemoteError, 502),
)


def status_of(exc: ServergroupError) -> int:
    """The HTTP status of one of our errors."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return 500


_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": Problem, "description": what}
    for code, what in (
        (401, "No or wrong bearer token; nothing was changed."),
        (404, "No such group, server or service."),
        (409, "The cluster's state refuses the request."),
        (503, "etcd did not answer."),
    )
}
_ACTION_ERRORS: dict[int | str, dict[str, object]] = {
    **_ERRORS,
    504: {"model": Problem, "description": "The owning host did not carry it out in time."},
    502: {"model": Problem, "description": "Something outside the API failed."},
}

ServerName = Annotated[str, Path(pattern=NAME_PATTERN.pattern)]
GroupName = ServerName
ServiceName = Annotated[str, Path(min_length=1, max_length=128)]
Endpoint = Annotated[str, Path(pattern=r"^[0-9.]{7,15}:[0-9]{1,5}$", description="ADDRESS:PORT")]
Timeout = Annotated[
    float | None,
    Query(gt=0, le=3600, description="Seconds to wait [default: operation_timeout]."),
]


def build_app(context: ApiContext) -> FastAPI:
    """The API of one host daemon (see the module docstring)."""
    app = FastAPI(
        title="servergroup",
        version=VERSION,
        summary="One host daemon's view of the cluster, and the CLI's actions.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    access = context.access
    c = context.coordinator
    app.add_middleware(ActionGuard, access=access)

    def ops(timeout: float | None = None) -> Operations:
        return Operations(Registry(c), timeout=timeout or context.operation_timeout)

    async def may_read(authorization: Annotated[str | None, Header()] = None) -> None:
        reason = access.check(authorization, action=False)
        if reason is not None:
            raise Refused(reason)

    async def may_act(authorization: Annotated[str | None, Header()] = None) -> None:
        reason = access.check(authorization, action=True)
        if reason is not None:
            raise Refused(reason)

    read = [Depends(may_read)]
    act = [Depends(may_act)]
    feed = Feed(c, lambda: read_snapshot(c, context.host))
    app.state.feed = feed

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return unauthorized(exc.reason)

    @app.exception_handler(ServergroupError)
    async def failed(request: Request, exc: ServergroupError) -> JSONResponse:
        code = status_of(exc)
        if code == 500:
            log_bug(log, f"API {request.method} {request.url.path}")
            return JSONResponse({"detail": "internal error (BUG): see the host's log"}, 500)
        return JSONResponse({"detail": sentence(str(exc))}, status_code=code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log_bug(log, f"API {request.method} {request.url.path}")
        return JSONResponse({"detail": "internal error (BUG): see the host's log"}, 500)

    # -- the dashboard -------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    @app.get("/events", dependencies=read, include_in_schema=False)
    async def events() -> StreamingResponse:
        """Server-sent events: a snapshot of the cluster now, then each time it changes."""
        return StreamingResponse(
            feed.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- the daemon --------------------------------------------------------------------------

    @app.get("/health", dependencies=read, responses=_ERRORS, tags=["daemon"])
    async def health() -> HealthView:
        """This host daemon's components: each one's state and one sentence."""
        return health_view(context.host, context.health())

    @app.get(
        "/metrics",
        dependencies=read,
        responses={**_ERRORS, 200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        response_class=Response,
        tags=["daemon"],
    )
    async def metrics() -> Response:
        """Prometheus metrics of this host daemon (text exposition format)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # -- hosts -------------------------------------------------------------------------------

    async def _hosts() -> list[HostView]:
        o = ops()
        live = await o.live_hosts()
        return host_views(live.values(), await read_pools(c), await o.list_servers())

    @app.get("/hosts", dependencies=read, responses=_ERRORS, tags=["hosts"])
    async def list_hosts() -> list[HostView]:
        """Live hosts (drivers, CPU pool, free CPUs), then dead hosts servers are still on."""
        return await _hosts()

    @app.get("/hosts/{name}", dependencies=read, responses=_ERRORS, tags=["hosts"])
    async def show_host(name: ServerName) -> HostView:
        for h in await _hosts():
            if h.name == name:
                return h
        raise NotFound(f"host {name!r} is neither running nor named by a server")

    # -- groups ------------------------------------------------------------------------------

    @app.get("/groups", dependencies=read, responses=_ERRORS, tags=["groups"])
    async def list_groups() -> list[GroupView]:
        """The server groups with their policies and members."""
        o = ops()
        servers = await o.list_servers()
        return [group_view(g, servers) for g in await o.list_groups()]

    @app.get("/groups/{name}", dependencies=read, responses=_ERRORS, tags=["groups"])
    async def show_group(name: GroupName) -> GroupView:
        o = ops()
        for g in await o.list_groups():
            if g.name == name:
                return group_view(g, await o.list_servers(name))
        raise GroupNotFound(f"group {name!r} does not exist")

    @app.post(
        "/groups", dependencies=act, responses=_ACTION_ERRORS, status_code=201, tags=["groups"]
    )
    async def create_group(body: GroupCreate) -> GroupView:
        """`servergroup group create`."""
        record = await ops().create_group(body.name, body.policy, evacuate=body.evacuate)
        return group_view(record, ())

    @app.delete("/groups/{name}", dependencies=act, responses=_ACTION_ERRORS, tags=["groups"])
    async def delete_group(name: GroupName) -> Done:
        """`servergroup group delete` (the group must have no servers)."""
        await ops().delete_group(name)
        return Done(done=f"group {name} deleted")

    # -- servers -----------------------------------------------------------------------------

    async def _view(server: Server) -> ServerView:
        return server_view(server, await ops().live_hosts())

    @app.get("/servers", dependencies=read, responses=_ERRORS, tags=["servers"])
    async def list_servers(group: Annotated[str | None, Query()] = None) -> list[ServerView]:
        """Servers (of one group, with `group`): state, host, vCPUs online, min and max."""
        o = ops()
        live = await o.live_hosts()
        return [server_view(s, live) for s in await o.list_servers(group)]

    @app.get("/servers/{name}", dependencies=read, responses=_ERRORS, tags=["servers"])
    async def show_server(name: ServerName) -> ServerView:
        return await _view(await ops().show_server(name))

    @app.post(
        "/servers", dependencies=act, responses=_ACTION_ERRORS, status_code=201, tags=["servers"]
    )
    async def create_server(body: ServerCreate, timeout: Timeout = None) -> ServerView:
        """`servergroup server create`: place it by its group's policy; answer once it runs."""
        server = await ops(timeout).create_server(
            body.name,
            body.group,
            body.vcpus,
            body.min_vcpus,
            body.host,
            driver=body.driver,
            memory_mb=body.memory_mb,
        )
        return await _view(server)

    @app.delete("/servers/{name}", dependencies=act, responses=_ACTION_ERRORS, tags=["servers"])
    async def delete_server(name: ServerName, timeout: Timeout = None) -> Done:
        """`servergroup server delete`: answer once its host removed it."""
        await ops(timeout).delete(name)
        return Done(done=f"server {name} deleted")

    @app.post(
        "/servers/{name}/migrate", dependencies=act, responses=_ACTION_ERRORS, tags=["servers"]
    )
    async def migrate_server(
        name: ServerName, body: MigrateRequest, timeout: Timeout = None
    ) -> ServerView:
        """`servergroup server migrate`: move it to another host (live by default)."""
        return await _view(await ops(timeout).migrate(name, body.to, live=body.live))

    @app.post(
        "/servers/{name}/resize", dependencies=act, responses=_ACTION_ERRORS, tags=["servers"]
    )
    async def resize_server(
        name: ServerName,
        vcpus: Annotated[int, Query(ge=1, le=MAX_VCPUS)],
        min_vcpus: Annotated[int | None, Query(ge=1, le=MAX_VCPUS)] = None,
        timeout: Timeout = None,
    ) -> ServerView:
        """`servergroup server resize`: a new flavor; a running server boots again."""
        return await _view(await ops(timeout).resize(name, vcpus, min_vcpus))

    @app.post(
        "/servers/{name}/scale/{direction}",
        dependencies=act,
        responses=_ACTION_ERRORS,
        tags=["servers"],
    )
    async def scale_server(
        name: ServerName,
        direction: Direction,
        timeout: Annotated[float, Query(ge=0.001, le=MAX_TIMEOUT_MS / 1000)] = 9.0,
    ) -> ScaleView:
        """`servergroup scale cpu DIRECTION`: one vCPU offline (down) or online (up)."""
        return scale_view(await scale_cpu(Registry(c), name, direction, timeout=timeout))

    @app.post(
        "/servers/{name}/{action}", dependencies=act, responses=_ACTION_ERRORS, tags=["servers"]
    )
    async def server_action(
        name: ServerName, action: Lifecycle, timeout: Timeout = None
    ) -> ServerView:
        """`servergroup server ACTION`: answer once the owning host carried it out."""
        o = ops(timeout)
        calls = {
            Lifecycle.PAUSE: o.pause,
            Lifecycle.UNPAUSE: o.unpause,
            Lifecycle.STOP: o.stop,
            Lifecycle.START: o.start,
            Lifecycle.REBOOT: o.reboot,
            Lifecycle.REBUILD: o.rebuild,
        }
        return await _view(await calls[action](name))

    # -- services ----------------------------------------------------------------------------

    @app.get("/services", dependencies=read, responses=_ERRORS, tags=["services"])
    async def list_services() -> ServicesView:
        """Services: state, instances wanted and running, nodes, master and its address."""
        listing = await read_services(c)
        return ServicesView.model_validate(
            {
                "services": [summary_json(s) for s in summaries(listing)],
                "errors": list(listing.errors),
            }
        )

    @app.get("/services/{name}", dependencies=read, responses=_ERRORS, tags=["services"])
    async def show_service(name: ServiceName) -> ServiceView:
        """One service: owners and tokens, monitor results, failures, bans, history."""
        return ServiceView.model_validate(status_json(await get_status(c, name)))

    @app.post(
        "/services/{name}/enable", dependencies=act, responses=_ACTION_ERRORS, tags=["services"]
    )
    async def enable_service(name: ServiceName) -> Done:
        """`servergroup service enable`."""
        changed = await set_enabled(c, name, True)
        return Done(done=enabled_sentence(name, True, changed), changed=changed)

    @app.post(
        "/services/{name}/disable", dependencies=act, responses=_ACTION_ERRORS, tags=["services"]
    )
    async def disable_service(name: ServiceName) -> Done:
        """`servergroup service disable`: stop it everywhere until enabled."""
        changed = await set_enabled(c, name, False)
        return Done(done=enabled_sentence(name, False, changed), changed=changed)

    @app.post(
        "/services/{name}/relocate", dependencies=act, responses=_ACTION_ERRORS, tags=["services"]
    )
    async def relocate_service(name: ServiceName, body: RelocateRequest) -> Done:
        """`servergroup service relocate`: move a running instance off its node."""
        done = await relocate(c, name, to=body.to, index=body.instance)
        return Done(done=done.describe())

    @app.post(
        "/services/{name}/clear", dependencies=act, responses=_ACTION_ERRORS, tags=["services"]
    )
    async def clear_service(name: ServiceName) -> Done:
        """`servergroup service clear`: forget failures, bans, blocks and a fatal error."""
        return Done(done=(await clear(c, name)).describe(name))

    # -- replication -------------------------------------------------------------------------

    @app.get("/replication", dependencies=read, responses=_ERRORS, tags=["replication"])
    async def list_pairs() -> list[PairView]:
        """Protected pairs: generation, active, backup, and each running node's status."""
        return [pair_view(pair) for pair in await read_pairs(c)]

    @app.get("/replication/{name}", dependencies=read, responses=_ERRORS, tags=["replication"])
    async def show_pair(name: ServiceName) -> PairView:
        pair = await read_pair(c, name)
        if pair is None:
            raise NotFound(f"no replication pair named {name!r}")
        return pair_view(pair)

    # -- image transfers ---------------------------------------------------------------------

    @app.get("/transfers", dependencies=read, responses=_ERRORS, tags=["transfers"])
    async def list_transfers() -> list[TransferView]:
        """Image transfers recorded by `servergroup image send|receive`, newest first."""
        now = time.time()
        return [transfer_view(t, now) for t in await read_transfers(c)]

    @app.get("/transfers/{endpoint}", dependencies=read, responses=_ERRORS, tags=["transfers"])
    async def show_transfer(endpoint: Endpoint) -> TransferView:
        """The last transfer from the sender at ADDRESS:PORT."""
        for t in await read_transfers(c):
            if t.endpoint == endpoint:
                return transfer_view(t, time.time())
        raise NotFound(f"no transfer recorded from {endpoint}")

    return app


__all__ = ["STATIC", "VERSION", "ApiContext", "NotFound", "Refused", "build_app", "status_of"]
