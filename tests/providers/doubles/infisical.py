#!/usr/bin/env python3
"""A local double of Infisical's REST API, written from its public API reference and the
server's published routes; checked by Infisical's official Python SDK (`infisicalsdk`), which
talks to it in the provider tests (tests/providers/doubles/sdk_infisical.py).

What it serves — the endpoints berth and the SDK use, with Infisical's shapes:

  POST   /api/v1/auth/universal-auth/login   {clientId, clientSecret}
         -> {accessToken, expiresIn, accessTokenMaxTTL, tokenType: "Bearer"}
  GET    /api/v3/secrets/raw                 workspaceId, environment, secretPath (default /),
         recursive, expandSecretReferences, viewSecretValue, include_imports
         -> {secrets: [...], imports: []}      (not paged: Infisical answers everything at once)
  GET    /api/v3/secrets/raw/{name}          -> {secret}
  POST   /api/v3/secrets/raw/{name}          {workspaceId, environment, secretPath, secretValue, ...}
  PATCH  /api/v3/secrets/raw/{name}          {..., secretValue, newSecretName}
  DELETE /api/v3/secrets/raw/{name}          {workspaceId, environment, secretPath}
  POST   /api/v2/folders                     {projectId, environment, name, path}
  GET    /api/v2/folders                     projectId, environment, path

Behaviour kept from Infisical: a folder that does not exist lists as empty, an unknown project
or environment is 404; a secret can only be written into an existing folder; values are
trimmed on write (a trailing newline kept); `${KEY}` and `${env.folder.KEY}` references are
expanded when asked; every secret carries its `secretPath`. Errors are Infisical's body
`{reqId, statusCode, message, error}`: 401 `UnauthorizedError` for a bad login or a missing
token, 403 `TokenError` for an unknown token, 403 `PermissionDenied` for a project the identity
has no access to, 404 `NotFoundError`, 400 `BadRequestError`, 422 `ValidationFailure`. Messages
are paraphrased. Not served: secret imports, tags, versions, approvals, other auth methods.

Configuration (one JSON argument):
  {"projects": {"PROJECT_ID": ["dev", "prod"]},
   "identities": {"CLIENT_ID": {"secret": "...", "projects": ["PROJECT_ID"],
                                "read_values": true}}}
An identity with "read_values": false gets values hidden (`secretValueHidden: true`), as
Infisical does for an identity allowed to describe secrets but not to read them.
"""

import argparse
import json
import re
import secrets as random
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import unquote

import double_http

TOKEN_TTL = 7200
HIDDEN = "<hidden-by-infisical>"
REFERENCE = re.compile(r"\$\{([^}]+)\}")


def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def norm_path(path):
    """Infisical's removeTrailingSlash, with an empty path as the root."""
    path = (path or "/").strip()
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return path if path.startswith("/") else "/" + path


class State:
    def __init__(self, config):
        self.lock = threading.Lock()
        self.projects = {p: list(envs) for p, envs in config.get("projects", {}).items()}
        self.identities = config.get("identities", {})
        # (project, env) -> {folder path: folder record}
        self.folders = {
            (p, e): {"/": {"id": str(uuid.uuid4()), "name": "root", "parentId": None}}
            for p, envs in self.projects.items()
            for e in envs
        }
        # (project, env, folder path) -> {key: secret record}
        self.secrets = {}
        # token -> (client id, expiry)
        self.tokens = {}


STATE = None


def error(status, kind, message):
    return status, {"reqId": f"req-{uuid.uuid4().hex[:12]}", "statusCode": status,
                    "message": message, "error": kind}


class Refused(Exception):
    def __init__(self, status, kind, message):
        super().__init__(message)
        self.answer = error(status, kind, message)


def secret_json(project, env, path, key, record, hidden):
    return {
        "id": record["id"], "_id": record["id"], "workspace": project, "environment": env,
        "version": record["version"], "type": "shared", "secretKey": key,
        "secretValue": HIDDEN if hidden else record["value"],
        "secretValueHidden": hidden, "secretComment": record["comment"],
        "secretReminderNote": None, "secretReminderRepeatDays": None,
        "skipMultilineEncoding": record["skipMultilineEncoding"],
        "createdAt": record["createdAt"], "updatedAt": record["updatedAt"],
        "secretPath": path, "tags": [], "secretMetadata": [],
    }


def trim_value(value):
    # Infisical: val.at(-1) === "\n" ? `${val.trim()}\n` : val.trim()
    return value.strip() + "\n" if value.endswith("\n") else value.strip()


def expand(project, env, path, value, depth=0):
    if depth > 5:
        return value

    def one(match):
        parts = match.group(1).strip().split(".")
        if len(parts) == 1:
            ref_env, ref_path, key = env, path, parts[0]
        else:
            ref_env, ref_path, key = parts[0], "/" + "/".join(parts[1:-1]), parts[-1]
        record = STATE.secrets.get((project, ref_env, norm_path(ref_path)), {}).get(key)
        if record is None:
            return match.group(0)
        return expand(project, ref_env, norm_path(ref_path), record["value"], depth + 1)

    return REFERENCE.sub(one, value)


class InfisicalHandler(double_http.Handler):
    request_log = []

    def dispatch(self):
        path, query = self.split()
        routes = [
            ("POST", r"/api/v1/auth/universal-auth/login", self.login),
            ("GET", r"/api/v3/secrets/raw", self.list_secrets),
            ("GET", r"/api/v3/secrets/raw/([^/]+)", self.get_secret),
            ("POST", r"/api/v3/secrets/raw/([^/]+)", self.create_secret),
            ("PATCH", r"/api/v3/secrets/raw/([^/]+)", self.update_secret),
            ("DELETE", r"/api/v3/secrets/raw/([^/]+)", self.delete_secret),
            ("POST", r"/api/v2/folders", self.create_folder),
            ("GET", r"/api/v2/folders", self.list_folders),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and method == self.command:
                try:
                    with STATE.lock:
                        status, body = handler(query, *[unquote(g) for g in match.groups()])
                except Refused as refused:
                    status, body = refused.answer
                self.send_json(status, body)
                return
        self.send_json(*error(404, "NotFound", f"Route {self.command}:{path} not found"))

    # --- auth ------------------------------------------------------------------------------

    def login(self, _query):
        body = self.json_body() or {}
        client_id, client_secret = body.get("clientId"), body.get("clientSecret")
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            return 422, {"reqId": f"req-{uuid.uuid4().hex[:12]}", "statusCode": 422,
                         "error": "ValidationFailure",
                         "message": [{"code": "invalid_type", "path": ["clientId"],
                                      "message": "Required"}]}
        identity = STATE.identities.get(client_id)
        if identity is None or identity.get("secret") != client_secret:
            return error(401, "UnauthorizedError", "Invalid credentials")
        token = random.token_urlsafe(32)
        STATE.tokens[token] = (client_id, time.time() + TOKEN_TTL)
        return 200, {"accessToken": token, "expiresIn": TOKEN_TTL,
                     "accessTokenMaxTTL": TOKEN_TTL, "tokenType": "Bearer"}

    def identity(self):
        token = self.bearer()
        if token is None:
            raise Refused(401, "UnauthorizedError", "Missing Authorization Header in the request header.")
        entry = STATE.tokens.get(token)
        if entry is None or entry[1] < time.time():
            raise Refused(403, "TokenError",
                          "The provided access token is malformed. Please use a valid token or "
                          "generate a new one and try again.")
        return STATE.identities[entry[0]]

    def scope(self, project, env, action="read"):
        """The identity, after checking it may act on the project's environment."""
        identity = self.identity()
        if not project or not env:
            raise Refused(400, "BadRequestError", "Missing workspace id or environment")
        if project not in STATE.projects:
            raise Refused(404, "NotFoundError", f"Project with ID '{project}' not found")
        if project not in identity.get("projects", []):
            raise Refused(403, "PermissionDenied", f"You are not allowed to {action} on secrets")
        if env not in STATE.projects[project]:
            raise Refused(404, "NotFoundError",
                          f"Environment with slug '{env}' in project with ID {project} not found")
        return identity

    # --- secrets ---------------------------------------------------------------------------

    def list_secrets(self, query):
        project, env = query.get("workspaceId"), query.get("environment")
        identity = self.scope(project, env)
        base = norm_path(query.get("secretPath"))
        recursive = query.get("recursive") == "true"
        expand_refs = query.get("expandSecretReferences") == "true"
        hidden = query.get("viewSecretValue", "true") == "false" or not identity.get("read_values", True)
        folders = STATE.folders[(project, env)]
        if base not in folders:
            return 200, {"secrets": [], "imports": []}
        paths = sorted(
            p for p in folders
            if p == base or (recursive and p.startswith(base.rstrip("/") + "/"))
        )
        out = []
        for path in paths:
            for key, record in sorted(STATE.secrets.get((project, env, path), {}).items()):
                item = secret_json(project, env, path, key, record, hidden)
                if expand_refs and not hidden:
                    item["secretValue"] = expand(project, env, path, record["value"])
                out.append(item)
        return 200, {"secrets": out, "imports": []}

    def located(self, source, name, must_exist):
        project = source.get("workspaceId")
        env = source.get("environment")
        identity = self.scope(project, env, "read" if self.command == "GET" else "edit")
        path = norm_path(source.get("secretPath"))
        if path not in STATE.folders[(project, env)]:
            raise Refused(404, "NotFoundError",
                          f"Folder with path '{path}' in environment with slug '{env}' not found")
        bucket = STATE.secrets.setdefault((project, env, path), {})
        if must_exist and name not in bucket:
            raise Refused(404, "NotFoundError", f"Secret with name '{name}' not found")
        return identity, project, env, path, bucket

    def get_secret(self, query, name):
        identity, project, env, path, bucket = self.located(query, name, True)
        hidden = query.get("viewSecretValue", "true") == "false" or not identity.get("read_values", True)
        item = secret_json(project, env, path, name, bucket[name], hidden)
        if query.get("expandSecretReferences") == "true" and not hidden:
            item["secretValue"] = expand(project, env, path, bucket[name]["value"])
        return 200, {"secret": item}

    def create_secret(self, _query, name):
        body = self.json_body() or {}
        if not name.strip() or " " in name:
            raise Refused(422, "ValidationFailure", "Secret name cannot contain spaces.")
        if not isinstance(body.get("secretValue"), str):
            raise Refused(422, "ValidationFailure", "secretValue: Required")
        _, project, env, path, bucket = self.located(body, name, False)
        if name in bucket:
            raise Refused(400, "BadRequestError", "Secret already exist")
        stamp = now()
        bucket[name] = {
            "id": str(uuid.uuid4()), "version": 1, "value": trim_value(body["secretValue"]),
            "comment": body.get("secretComment") or "",
            "skipMultilineEncoding": bool(body.get("skipMultilineEncoding")),
            "createdAt": stamp, "updatedAt": stamp,
        }
        return 200, {"secret": secret_json(project, env, path, name, bucket[name], False)}

    def update_secret(self, _query, name):
        body = self.json_body() or {}
        _, project, env, path, bucket = self.located(body, name, True)
        record = bucket[name]
        if isinstance(body.get("secretValue"), str):
            record["value"] = trim_value(body["secretValue"])
        if isinstance(body.get("secretComment"), str):
            record["comment"] = body["secretComment"]
        record["version"] += 1
        record["updatedAt"] = now()
        new_name = body.get("newSecretName")
        if isinstance(new_name, str) and new_name and new_name != name:
            if new_name in bucket:
                raise Refused(400, "BadRequestError", "Secret with the new name already exist")
            bucket[new_name] = bucket.pop(name)
            name = new_name
        return 200, {"secret": secret_json(project, env, path, name, record, False)}

    def delete_secret(self, _query, name):
        body = self.json_body() or {}
        _, project, env, path, bucket = self.located(body, name, True)
        record = bucket.pop(name)
        return 200, {"secret": secret_json(project, env, path, name, record, False)}

    # --- folders ---------------------------------------------------------------------------

    def create_folder(self, _query):
        body = self.json_body() or {}
        project, env = body.get("projectId"), body.get("environment")
        self.scope(project, env, "create")
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise Refused(422, "ValidationFailure", "Folder name can only contain letters, numbers, dashes and underscores")
        parent = norm_path(body.get("path"))
        folders = STATE.folders[(project, env)]
        if parent not in folders:
            raise Refused(404, "NotFoundError",
                          f"Folder with path '{parent}' in environment with slug '{env}' not found")
        full = norm_path(parent.rstrip("/") + "/" + name)
        if full in folders:
            raise Refused(400, "BadRequestError", f"Folder with name '{name}' already exists")
        stamp = now()
        folders[full] = {"id": str(uuid.uuid4()), "name": name, "parentId": folders[parent]["id"],
                         "createdAt": stamp, "updatedAt": stamp}
        return 200, {"folder": self.folder_json(project, env, full)}

    def folder_json(self, project, env, path):
        record = STATE.folders[(project, env)][path]
        return {"id": record["id"], "name": record["name"], "envId": f"{project}:{env}",
                "path": path, "parentId": record["parentId"], "version": 1, "isReserved": False,
                "description": None, "createdAt": record.get("createdAt", now()),
                "updatedAt": record.get("updatedAt", now())}

    def list_folders(self, query):
        project, env = query.get("projectId"), query.get("environment")
        self.scope(project, env)
        parent = norm_path(query.get("path"))
        folders = STATE.folders[(project, env)]
        children = [p for p in sorted(folders)
                    if p != "/" and p.rsplit("/", 1)[0] == ("" if parent == "/" else parent)]
        return 200, {"folders": [self.folder_json(project, env, p) for p in children]}


def main():
    global STATE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the projects and identities, as JSON")
    args = parser.parse_args()
    STATE = State(json.loads(args.config))
    server, url = double_http.listen(InfisicalHandler)
    double_http.serve([server], {"url": url})


if __name__ == "__main__":
    main()
