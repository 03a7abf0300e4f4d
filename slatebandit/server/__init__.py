"""The HTTP API: Starlette app factory, lifespan, routes, request schemas, auth."""

from slatebandit.server.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
