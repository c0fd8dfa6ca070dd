"""The OpenAPI 3.0 document served at ``/openapi.json``, written by hand to match
``api/app.py`` (a test checks that every route of the app is documented here)."""

from __future__ import annotations

from typing import Any

from nebula_edge import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERR = _json(_ref("Error"), "Error")
_SHA_PARAM = {"name": "sha", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_HTML = {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_PARAM = {"name": "name", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": NAME_PATTERN}}

_LIMITS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {k: {"type": "integer", "minimum": 0}
                   for k in ("timeout_ms", "memory_mb", "fuel", "max_output_bytes")},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Nebula-Edge agent", "version": __version__,
             "description": "Deploy WebAssembly modules to a peer-to-peer mesh and run them."},
    "paths": {
        "/deploy": {"post": {
            "summary": "Deploy a module (base64 bytes in JSON)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("DeployRequest")}}},
            "responses": {"201": _json(_ref("ModuleResponse"), "Deployed"), "400": ERR,
                          "401": ERR, "403": ERR, "413": ERR},
        }},
        "/exec": {"post": {
            "summary": "Call a module",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("ExecRequest")}}},
            "responses": {"200": {**_json(_ref("ExecResponse"), "Result"), "headers": {
                "X-Nebula-Peer": {"description": "Peer id of the agent that ran the call",
                                  "schema": {"type": "string"}}}},
                          "400": ERR, "401": ERR, "404": ERR,
                          "413": ERR, "422": ERR, "502": ERR, "503": ERR, "504": ERR},
        }},
        "/modules": {"get": {
            "summary": "Current version of every module",
            "responses": {"200": _json({"type": "object", "properties": {
                "modules": {"type": "array", "items": _ref("Module")}}}, "Modules")},
        }},
        "/modules/{name}": {
            "parameters": [NAME_PARAM],
            "get": {"summary": "A module's versions",
                    "responses": {"200": _json({"type": "object"}, "Module"), "404": ERR}},
            "put": {"summary": "Deploy raw module bytes",
                    "parameters": [{"name": k, "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["export", "wasi"]}
                                    if k == "abi" else {"type": "string"}}
                                   for k in ("abi", "export")] +
                                  [{"name": k, "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 0}}
                                   for k in ("timeout_ms", "memory_mb", "fuel",
                                             "max_output_bytes")],
                    "requestBody": {"required": True, "content": {
                        "application/wasm": {"schema": {"type": "string", "format": "binary"}},
                        "application/octet-stream": {"schema": {"type": "string",
                                                                "format": "binary"}}}},
                    "responses": {"201": _json(_ref("ModuleResponse"), "Deployed"), "400": ERR,
                                  "401": ERR, "403": ERR, "413": ERR, "415": ERR}},
            "delete": {"summary": "Delete a module (every version, mesh-wide)",
                       "responses": {"200": _json({"type": "object"}, "Deleted"), "400": ERR,
                                     "401": ERR, "403": ERR, "404": ERR}},
        },
        "/modules/{name}/rollback": {"post": {
            "summary": "Make an older version current again (the previous one, or the "
                       "one named by id)",
            "parameters": [NAME_PARAM],
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "restores": {"type": "string", "description": "id of the kept version "
                                 "to restore (unsigned requests; a signed order names it)"},
                    "order": {"type": "object"}, "signature": {"type": "string"}}}}}},
            "responses": {"200": _json(_ref("ModuleResponse"), "Rolled back"), "400": ERR,
                          "401": ERR, "403": ERR, "404": ERR},
        }},
        "/modules/{name}/logs": {"get": {
            "summary": "A module's call log on this agent: one record per call (time, agent, "
                       "duration, outcome, error code) and the WASI stderr lines it wrote, "
                       "oldest first; with follow=1 a stream of JSON lines (backlog, then "
                       "new entries as calls end). Needs the token when the agent has one.",
            "parameters": [NAME_PARAM,
                           {"name": "since", "in": "query", "required": False,
                            "description": "only entries with a larger seq",
                            "schema": {"type": "integer"}},
                           {"name": "limit", "in": "query", "required": False,
                            "description": "at most this many (the newest)",
                            "schema": {"type": "integer"}},
                           {"name": "follow", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["0", "1"]}}],
            "responses": {"200": {"description": "Log", "content": {
                "application/json": {"schema": _ref("Logs")},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
                "400": ERR, "401": ERR, "404": ERR, "503": ERR},
        }},
        "/ui": {"get": {"summary": "The dashboard (HTML; live, read-only)",
                        "responses": {"200": _HTML}}},
        "/ui/": {"get": {"summary": "The dashboard (same as /ui)",
                         "responses": {"200": _HTML}}},
        "/ui/static/{file}": {"get": {
            "summary": "The dashboard's script and stylesheet (app.js, style.css)",
            "parameters": [{"name": "file", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["app.js", "style.css"]}}],
            "responses": {"200": {"description": "Asset", "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}}}}, "404": ERR}}},
        "/ui/state": {"get": {
            "summary": "What the dashboard shows, as JSON: agents (status healthy, degraded "
                       "or lost; versions held), modules (holders per version, calls/s, "
                       "p50/p99, errors), recent events",
            "parameters": [{"name": "events", "in": "query", "required": False,
                            "description": "how many recent events (default 50)",
                            "schema": {"type": "integer"}}],
            "responses": {"200": _json(_ref("UiState"), "State"), "400": ERR}}},
        "/ui/events": {"get": {
            "summary": "The dashboard state as Server-Sent Events: an `event: state` with "
                       "the /ui/state JSON whenever it changes",
            "x-nebula-stream": True,
            "responses": {"200": {"description": "Event stream", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}}, "503": ERR}}},
        "/p2p/pieces/{sha}": {"get": {
            "summary": "Between agents: the piece table of a blob held here (size, piece "
                       "size, each piece's sha256; 'have' while still receiving it)",
            "parameters": [_SHA_PARAM,
                           {"name": "table", "in": "query", "required": False,
                            "description": "0 leaves the piece hashes out",
                            "schema": {"type": "string", "enum": ["0", "1"]}}],
            "responses": {"200": _json({"type": "object", "properties": {
                "v": {"type": "integer"}, "size": {"type": "integer"},
                "piece_size": {"type": "integer"},
                "hashes": {"type": "array", "items": {"type": "string"}},
                "have": {"type": "string"}}}, "Piece table"),
                "400": ERR, "401": ERR, "404": ERR}}},
        "/p2p/pieces/{sha}/{i}": {"get": {
            "summary": "Between agents: piece i of a blob, asked for with Range: bytes= its "
                       "span (206); 503 while this agent sends its most pieces at once",
            "parameters": [_SHA_PARAM,
                           {"name": "i", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 0}}],
            "responses": {"206": {"description": "The piece's bytes", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
                "400": ERR, "401": ERR, "404": ERR, "416": ERR, "503": ERR}}},
        "/peers": {"get": {"summary": "Live members of the mesh (connected: a direct connection)",
                           "responses": {"200": _json({"type": "object"}, "Peers")}}},
        "/healthz": {"get": {"summary": "Liveness and a summary",
                             "responses": {"200": _json({"type": "object"}, "Healthy")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
        "/debug/echo": {"post": {
            "summary": "Echo a JSON object (benchmark floor)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "object"}}}},
            "responses": {"200": _json({"type": "object"}, "Echo"), "400": ERR, "413": ERR}}},
    },
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "Required for changes when the agent runs with -token"}},
        "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "Limits": _LIMITS,
        "DeployRequest": {"type": "object", "required": ["name", "wasm"],
                          "additionalProperties": False, "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "wasm": {"type": "string", "format": "byte"},
            "abi": {"type": "string", "enum": ["export", "wasi"]},
            "export": {"type": "string"}, "limits": _ref("Limits"),
            "order": {"type": "object"}, "signature": {"type": "string"}}},
        "ExecRequest": {"type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string", "pattern": NAME_PATTERN},
                                       "arg": {},
                                       "args": {"type": "array", "items": {}}}},
        "ExecResponse": {"type": "object", "properties": {"result": {}, "output": {
            "type": "string"}}},
        "Module": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"},
            "sha256": {"type": "string"}, "size": {"type": "integer"},
            "abi": {"type": "string"}, "export": {"type": "string", "nullable": True},
            "limits": _ref("Limits"), "deployed_at": {"type": "number"},
            "publisher": {"type": "string"}, "peers": {"type": "integer"},
            "holders": {"type": "array", "items": {"type": "string"},
                        "description": "agents known to hold this version (mesh on)"},
            "rollback_of": {"type": "integer", "nullable": True},
            "id": {"type": "string", "description": "manifest id: names this version "
                   "unambiguously across agents (version numbers are per-agent labels)"},
            "restores": {"type": "string", "nullable": True,
                         "description": "a rollback's restored version, by manifest id"},
            "signature": {"type": "string", "nullable": True},
            "order": {"type": "object", "nullable": True}}},
        "ModuleResponse": {"type": "object", "properties": {"module": _ref("Module")}},
        "LogEntry": {"type": "object", "required": ["seq", "at", "agent", "module", "kind"],
                     "properties": {
            "seq": {"type": "integer"}, "at": {"type": "number"},
            "agent": {"type": "string"}, "module": {"type": "string"},
            "kind": {"type": "string", "enum": ["call", "stderr"]},
            "version": {"type": "integer"}, "duration_ms": {"type": "number"},
            "outcome": {"type": "string", "enum": ["ok", "error"]},
            "error": {"type": "string", "nullable": True},
            "stderr_lines": {"type": "integer"}, "call": {"type": "integer"},
            "line": {"type": "string"}}},
        "Logs": {"type": "object", "properties": {
            "name": {"type": "string"}, "agent": {"type": "string"},
            "entries": {"type": "array", "items": _ref("LogEntry")}}},
        "UiState": {"type": "object", "properties": {
            "agent": {"type": "object"}, "generated_at": {"type": "number"},
            "rate_window_s": {"type": "number"},
            "agents": {"type": "array", "items": {"type": "object"}},
            "modules": {"type": "array", "items": {"type": "object"}},
            "events": {"type": "array", "items": {"type": "object"}}}},
    }},
}
