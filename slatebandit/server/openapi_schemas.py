"""The answers' schemas of the OpenAPI document (``server.openapi``) that no request model
gives: the error envelope, a slate, an experiment."""

from __future__ import annotations

REF = "#/components/schemas/{model}"
ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
            "required": ["code", "message", "field"],
        }
    },
}
SLATE = {
    "type": "object",
    "properties": {
        "event_id": {"type": ["string", "null"], "description": "null for a dry run"},
        "dry_run": {"type": "boolean", "description": "present (true) for a dry run"},
        "candidates": {
            "type": "array",
            "description": "a dry run's: every candidate scored, best first",
            "items": {
                "type": "object",
                "properties": {
                    "item_id": {"type": "string"},
                    "score": {"type": "number"},
                    "source": {"type": "string"},
                },
            },
        },
        "policy": {"type": "string"},
        "model_version": {"type": "integer"},
        "logged": {
            "enum": ["database", "spool", "none"],
            "description": "where the decision went: committed, spooled while the database is "
            "unreachable (shipped when it returns), or nowhere (the spool failed too; rewards "
            "for it are dropped)",
        },
        "experiment": {"type": "string", "description": "present when an A/B experiment chose"},
        "arm": {"type": "string"},
        "next_page": {
            "type": ["string", "null"],
            "description": "post the same request with page_token set to this for the next k "
            "items, none of this chain's earlier ones; null when the chain ends (a short page, "
            "or 500 items shown)",
        },
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "item_id": {"type": "string"},
                    "slot": {"type": "integer"},
                    "propensity": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "kind": {"enum": ["exploit", "explore", "diverse"]},
                    "source": {"enum": ["similar", "session", "popular", "fresh", "context"]},
                    "score": {"type": "number"},
                    "reason": {"type": "string"},
                    "explanation": {
                        "type": "object",
                        "description": "with ?explain=true: the top contributing features",
                        "properties": {
                            "features": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "feature": {"type": "string"},
                                        "contribution": {"type": "number"},
                                    },
                                },
                            }
                        },
                    },
                },
            },
        },
    },
}
EXPERIMENT = {
    "type": "object",
    "properties": {
        "arms": {
            "type": "array",
            "minItems": 2,
            "maxItems": 16,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                    "policy": {"type": "string", "description": "a policy SPEC", "maxLength": 64},
                    "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                },
                "required": ["name", "policy", "share"],
                "additionalProperties": False,
            },
        },
        "control": {"type": "string", "description": "default: the first arm"},
    },
    "required": ["arms"],
    "additionalProperties": False,
}
