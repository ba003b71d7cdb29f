"""The HTTP API of a host daemon: the cluster's state, the CLI's actions, `/metrics`.

`server.ApiServer` is the component `servergroup host` runs (`[api]` in the
configuration); `app.build_app` the FastAPI application it serves;
`models` the typed bodies the OpenAPI document is made from; `auth` the
bearer-token rule. docs/design/api.md says what each route does.
"""

from servergroup.api.app import ApiContext, build_app
from servergroup.api.auth import Access, read_token
from servergroup.api.server import ApiServer

__all__ = ["Access", "ApiContext", "ApiServer", "build_app", "read_token"]
