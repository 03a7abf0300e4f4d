"""The OpenAPI 3.1 document served at /openapi.json, built from the request models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from slatebandit import __version__
from slatebandit.items import Item
from slatebandit.server.openapi_schemas import ERROR, EXPERIMENT, REF, SLATE
from slatebandit.server.rules import RuleRequest
from slatebandit.server.schemas import (
    EvaluationRequest,
    EventRequest,
    RewardRequest,
    SlateRequest,
)


def _path(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def _body(ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": ref}, "application/msgpack": {"schema": ref}},
    }


_COUNT = {"type": "integer", "minimum": 1, "maximum": 100}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _answers(status: int, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": description}
    if schema is not None:
        ok["content"] = {
            "application/json": {"schema": schema},
            "application/msgpack": {"schema": schema},
        }
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
    return {
        str(status): ok,
        "400": {"description": "invalid input; nothing was written", **error},
        "401": {"description": "missing or unknown API key", **error},
        "403": {"description": "the key lacks the scope", **error},
        "404": {"description": "unknown event or item", **error},
        "413": {"description": "body too large", **error},
        "415": {"description": "neither JSON nor msgpack", **error},
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _rule_paths(security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The merchandising rules' routes (``server.rules``)."""
    return {
        "/v1/rules": {
            "get": {
                "summary": "The rules in force, by name (scope catalog)",
                "security": security,
                "responses": _answers(200, "{rules: [{name, version, updated_at, ...body}]}"),
            }
        },
        "/v1/rules/{name}": {
            "put": {
                "summary": "Define or replace a rule: pin, boost, bury, promote or block "
                "(scope admin); every worker applies it within a catalog poll",
                "security": security,
                "parameters": [_path("name")],
                "requestBody": _body(_ref(RuleRequest)),
                "responses": {
                    **_answers(201, "created durably: its version 1"),
                    "200": {"description": "its next version, stored durably"},
                },
            },
            "delete": {
                "summary": "End a rule; its versions stay for replay (scope admin)",
                "security": security,
                "parameters": [_path("name")],
                "responses": _answers(200, "ended durably"),
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR, "Slate": SLATE, "Experiment": EXPERIMENT}
    for model in (SlateRequest, RewardRequest, EventRequest, EvaluationRequest, Item, RuleRequest):
        schemas[model.__name__] = model.model_json_schema(ref_template=REF)
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "slatebandit", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "paths": {
            "/v1/slates": {
                "post": {
                    "summary": "A slate of k items with the propensity of every slot (scope serve)",
                    "security": security,
                    "parameters": [
                        {
                            "name": "explain",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "add each item's top contributing features",
                        },
                        {
                            "name": "dry_run",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "the slate this user would get, with every "
                            "candidate's score; never logged, counts no impression, teaches "
                            "nothing, has no event_id (scope analyst)",
                        },
                    ],
                    "requestBody": _body(_ref(SlateRequest)),
                    "responses": _answers(
                        200, "the slate, logged durably", {"$ref": REF.format(model="Slate")}
                    ),
                }
            },
            "/v1/rewards": {
                "post": {
                    "summary": "A reward for an item of a decision, with the money it was "
                    "worth (value) if any; stored once (scope serve)",
                    "security": security,
                    "requestBody": _body(_ref(RewardRequest)),
                    "responses": _answers(
                        202,
                        "stored durably (or already stored: duplicate=true); logged=spool while "
                        "the database is unreachable: duplicate=null, checked when shipped; "
                        "logged=parked when the decision is unknown but another machine's spool "
                        "may hold it (machine registry): stored durably, duplicate=null, joined "
                        "when that decision ships; an unknown decision otherwise: 404",
                    ),
                }
            },
            "/v1/events": {
                "post": {
                    "summary": "A shopper's view, click, add-to-cart or purchase (scope serve)",
                    "security": security,
                    "requestBody": _body(_ref(EventRequest)),
                    "responses": _answers(
                        202,
                        "stored durably; the user's next slate reflects it (logged=spool: once "
                        "the database is back and the spool shipped)",
                    ),
                }
            },
            "/v1/items": {
                "put": {
                    "summary": "Upsert a list of items, recommendable at once (scope catalog)",
                    "security": security,
                    "requestBody": _body(
                        {"type": "array", "items": _ref(Item), "maxItems": 10_000}
                    ),
                    "responses": _answers(200, "items upserted durably and indexed"),
                },
                "get": {
                    "summary": "Search live items by id or title (scope analyst)",
                    "security": security,
                    "parameters": [
                        _query("q", {"type": "string", "maxLength": 128}, "text in id or title"),
                        _query("limit", _COUNT, "at most this many (default 20)"),
                    ],
                    "responses": _answers(200, "the items found, by id"),
                },
            },
            "/v1/items/{item_id}": {
                "get": {
                    "summary": "One live item and its nearest neighbours in the index "
                    "(scope analyst)",
                    "security": security,
                    "parameters": [
                        _path("item_id"),
                        _query("neighbours", _COUNT, "how many neighbours (default 10)"),
                    ],
                    "responses": _answers(200, "the item, and its neighbours by similarity"),
                },
                "delete": {
                    "summary": "Delete an item; it is never shown again (scope catalog)",
                    "security": security,
                    "parameters": [_path("item_id")],
                    "responses": _answers(200, "deleted durably"),
                },
            },
            "/v1/users/{user_id}": {
                "delete": {
                    "summary": "Erase a shopper: their events, state and the rewards on their "
                    "decisions are deleted, the decisions redacted (scope admin)",
                    "security": security,
                    "parameters": [_path("user_id")],
                    "responses": _answers(200, "erased durably: counts of what was removed"),
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Model versions, champion and the version served (scope analyst)",
                    "security": security,
                    "responses": _answers(200, "the registry"),
                }
            },
            "/v1/models/{version}/promote": {
                "post": {
                    "summary": "Make a version the champion (scope admin)",
                    "security": security,
                    "parameters": [_path("version", "integer")],
                    "responses": _answers(200, "promoted durably; this worker serves it at once"),
                }
            },
            "/v1/models/rollback": {
                "post": {
                    "summary": "Make the previous champion the champion again (scope admin)",
                    "security": security,
                    "responses": _answers(200, "rolled back durably"),
                }
            },
            **_rule_paths(security),
            "/v1/experiments": {
                "get": {
                    "summary": "The A/B experiments (scope analyst)",
                    "security": security,
                    "responses": _answers(200, "running and stopped experiments"),
                }
            },
            "/v1/experiments/{name}": {
                "put": {
                    "summary": "Create an experiment or change its arms and shares (scope admin)",
                    "security": security,
                    "parameters": [_path("name")],
                    "requestBody": _body({"$ref": REF.format(model="Experiment")}),
                    "responses": {
                        **_answers(201, "created durably"),
                        "200": {"description": "changed durably"},
                        "409": {"description": "another experiment runs, or this one stopped"},
                    },
                },
                "get": {
                    "summary": "One experiment (scope analyst)",
                    "security": security,
                    "parameters": [_path("name")],
                    "responses": _answers(200, "the experiment"),
                },
                "delete": {
                    "summary": "Stop assigning users; the report stays (scope admin)",
                    "security": security,
                    "parameters": [_path("name")],
                    "responses": _answers(200, "stopped durably"),
                },
            },
            "/v1/experiments/{name}/report": {
                "get": {
                    "summary": "Per arm: slates, clicks, CTR with a 95% interval, difference to "
                    "the control arm (scope analyst)",
                    "security": security,
                    "parameters": [_path("name")],
                    "responses": _answers(200, "the report"),
                }
            },
            "/v1/evaluations": {
                "get": {
                    "summary": "The newest 20 evaluations, newest first, without their results "
                    "(scope analyst)",
                    "security": security,
                    "responses": _answers(200, "{evaluations: [{id, status, progress, request}]}"),
                },
                "post": {
                    "summary": "Start an off-policy replay of the log (scope analyst)",
                    "security": security,
                    "requestBody": _body(_ref(EvaluationRequest)),
                    "responses": _answers(202, "started; poll the location"),
                },
            },
            "/v1/evaluations/{evaluation_id}": {
                "get": {
                    "summary": "An evaluation: status, progress, and the report when done "
                    "(scope analyst)",
                    "security": security,
                    "parameters": [_path("evaluation_id")],
                    "responses": _answers(200, "the evaluation"),
                }
            },
            "/v1/stats": {
                "get": {
                    "summary": "The console overview's figures (scope analyst): slates, items "
                    "shown and clicks per time bucket by policy and arm, rewards by arrival, "
                    "each route's cumulative latency histogram, models, learner lag, database "
                    "and spool",
                    "security": security,
                    "parameters": [
                        _query(
                            "minutes",
                            {"type": "integer", "minimum": 1, "maximum": 10080},
                            "the window (default 60)",
                        ),
                        _query(
                            "step",
                            {"enum": [10, 60, 300, 900, 3600]},
                            "seconds per bucket (default 60)",
                        ),
                    ],
                    "responses": _answers(200, "the figures"),
                }
            },
            "/v1/metrics/summary": {
                "get": {
                    "summary": "What the window's slates led to (scope analyst): slates, CTR "
                    "(click rewards per shown slot), conversion rate (purchase rewards per shown "
                    "slot) and revenue per slate (the rewards' value), each {value, low, high} "
                    "with its 95% interval; overall, by placement (with its share of the "
                    "slates) and by policy",
                    "security": security,
                    "parameters": [
                        _query(
                            "minutes",
                            {"type": "integer", "minimum": 1, "maximum": 10080},
                            "the window (default 60)",
                        ),
                    ],
                    "responses": _answers(200, "the summary, read from the log at most every 10 s"),
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness, catalog size, database reachability and the spool "
                    "(status degraded while the database is unreachable or records wait in "
                    "the spool)",
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}
            },
            "/v1/access": {
                "get": {
                    "summary": "Who the presented key is: {open, key: none|missing|unknown|ok, "
                    "scopes}; always a 200 (the console asks it first)",
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, summed across the workers (scope analyst); "
                    "the README's table of metrics lists them",
                    "responses": {
                        "200": {
                            "description": "Prometheus' text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
