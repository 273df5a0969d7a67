#!/usr/bin/env python3
"""A local double of Azure Key Vault's secrets REST API and of the Microsoft Entra ID token
endpoint it trusts, written from Microsoft's published REST references; checked by the official
Python SDK (`azure-keyvault-secrets` with `azure-identity`'s ClientSecretCredential), which
talks to it in the provider tests (tests/providers/doubles/sdk_azure_keyvault.py).

Two https listeners (the SDK refuses bearer tokens over http; the throwaway CA is written at
start, see throwaway_tls.py):

login (the `authority_host`):
  GET  /{tenant}/v2.0/.well-known/openid-configuration   (what MSAL reads first)
  POST /{tenant}/oauth2/v2.0/token    form: client_id, client_secret,
       grant_type=client_credentials, scope=https://vault.azure.net/.default
       -> {token_type: "Bearer", expires_in, ext_expires_in, access_token}
       errors: {error, error_description: "AADSTSnnn: ...", error_codes, trace_id, ...} —
       401 invalid_client (wrong secret), 400 unauthorized_client (unknown app),
       400 invalid_request (unknown tenant), 400 invalid_scope, 400 unsupported_grant_type

vault (the `vault_url`), every call with `api-version`:
  GET    /secrets?maxresults=N[&$skiptoken=T]  -> {value: [SecretItem], nextLink}  (paged)
  GET    /secrets/{name}[/{version}]           -> SecretBundle {value, id, attributes, ...}
  PUT    /secrets/{name}   {value, contentType, attributes, tags} -> SecretBundle (new version)
  PATCH  /secrets/{name}/{version}   {attributes, contentType, tags} -> SecretBundle, no value
  DELETE /secrets/{name}   -> DeletedSecretBundle (this vault has no soft-delete: no recoveryId)
  A request without a bearer token gets Key Vault's challenge: 401 with
  `WWW-Authenticate: Bearer authorization="{login}/{tenant}", resource="https://vault.azure.net"`.
  Errors are `{"error": {"code", "message", "innererror": {"code"}}}`: 401 Unauthorized (no,
  unknown or foreign-tenant token), 403 Forbidden/AccessDenied (a permission the app lacks),
  403 Forbidden/SecretDisabled (reading a disabled secret), 404 SecretNotFound,
  400 BadParameter (api-version missing, maxresults outside 1..25, a bad name). Messages are
  paraphrased. Names are case-insensitive, as in Key Vault.

Paging: a page holds min(maxresults, page_size) items (Key Vault's default and largest is 25;
tests set a small page_size so a listing spans several pages); `nextLink` is absolute, with the
port written out as Key Vault writes `:443`.

Configuration (one JSON argument):
  {"tenant": "TENANT_ID", "page_size": 2,
   "clients": {"APP_ID": {"secret": "...", "tenant": "TENANT_ID",
                          "permissions": ["get", "list", "set", "delete"]}}}
"""

import argparse
import base64
import json
import re
import secrets as random
import tempfile
import threading
import time
import uuid
from urllib.parse import parse_qs, quote, unquote

import double_http
import throwaway_tls

API_VERSIONS = {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"}
RESOURCE = "https://vault.azure.net"
TOKEN_TTL = 3599
NAME = re.compile(r"[0-9A-Za-z-]{1,127}")


class State:
    def __init__(self, config):
        self.lock = threading.Lock()
        self.tenant = config["tenant"]
        self.page_size = int(config.get("page_size", 25))
        self.clients = config.get("clients", {})
        # lowercased name -> {"name": as created, "versions": [bundle-ish dicts]}
        self.secrets = {}
        # token -> (app id, tenant, expiry)
        self.tokens = {}
        self.login_url = None
        self.vault_url = None


STATE = None


def aad_error(status, code, aadsts, description):
    trace = str(uuid.uuid4())
    return status, {
        "error": code,
        "error_description": f"AADSTS{aadsts}: {description}\r\nTrace ID: {trace}\r\n"
                             f"Correlation ID: {uuid.uuid4()}\r\nTimestamp: {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}",
        "error_codes": [aadsts],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": trace,
        "correlation_id": str(uuid.uuid4()),
        "error_uri": f"{STATE.login_url}/error?code={aadsts}",
    }


class LoginHandler(double_http.Handler):
    request_log = []

    def dispatch(self):
        path, _ = self.split()
        match = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path)
        if match and self.command == "GET":
            self.send_json(*self.openid_configuration(unquote(match.group(1))))
            return
        match = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", path)
        if match and self.command == "POST":
            with STATE.lock:
                self.send_json(*self.token(unquote(match.group(1))))
            return
        self.send_json(404, {"error": "not_found", "error_description": f"{self.command} {path}"})

    def openid_configuration(self, tenant):
        if tenant != STATE.tenant:
            return aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{STATE.login_url}/{tenant}"
        return 200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{STATE.login_url}/{tenant}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
        }

    def token(self, tenant):
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw = self.body_bytes().decode("utf-8", "replace")
        if content_type != "application/x-www-form-urlencoded":
            return aad_error(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'grant_type'.")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if tenant != STATE.tenant:
            return aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return aad_error(400, "unsupported_grant_type", 70003,
                             "The app requested an unsupported grant type.")
        client = STATE.clients.get(form.get("client_id", ""))
        if client is None or client.get("tenant", STATE.tenant) != tenant:
            return aad_error(400, "unauthorized_client", 700016,
                             f"Application with identifier '{form.get('client_id', '')}' was not "
                             f"found in the directory '{tenant}'.")
        if not form.get("client_secret"):
            return aad_error(401, "invalid_client", 7000216,
                             "'client_assertion', 'client_secret' or 'request' is required for "
                             "the 'client_credentials' grant type.")
        if form["client_secret"] != client["secret"]:
            return aad_error(401, "invalid_client", 7000215,
                             "Invalid client secret provided. Ensure the secret being sent in the "
                             "request is the client secret value, not the client secret ID, for a "
                             f"secret added to app '{form['client_id']}'.")
        if form.get("scope") != f"{RESOURCE}/.default":
            return aad_error(400, "invalid_scope", 1002012,
                             f"The provided value for scope {form.get('scope', '')} is not valid. "
                             "Client credential flows must have a scope value with /.default "
                             "suffixed to the resource identifier (application ID URI).")
        token = random.token_urlsafe(48)
        STATE.tokens[token] = (form["client_id"], tenant, time.time() + TOKEN_TTL)
        return 200, {"token_type": "Bearer", "expires_in": TOKEN_TTL,
                     "ext_expires_in": TOKEN_TTL, "access_token": token}


class Refused(Exception):
    def __init__(self, status, code, message, inner=None, headers=None):
        super().__init__(message)
        body = {"error": {"code": code, "message": message}}
        if inner:
            body["error"]["innererror"] = {"code": inner}
        self.answer = (status, body, headers)


def challenge():
    return {"WWW-Authenticate": f'Bearer authorization="{STATE.login_url}/{STATE.tenant}", '
                                f'resource="{RESOURCE}"'}


def attributes(version):
    return {"enabled": version["enabled"], "created": version["created"],
            "updated": version["updated"], "recoveryLevel": "Purgeable", "recoverableDays": 0}


def item_json(entry):
    latest = entry["versions"][-1]
    item = {"id": f"{STATE.vault_url}/secrets/{entry['name']}", "attributes": attributes(latest),
            "tags": latest["tags"]}
    if latest["contentType"] is not None:
        item["contentType"] = latest["contentType"]
    return item


def bundle_json(entry, version, with_value=True):
    bundle = {"id": f"{STATE.vault_url}/secrets/{entry['name']}/{version['version']}",
              "attributes": attributes(version), "tags": version["tags"]}
    if with_value:
        bundle["value"] = version["value"]
    if version["contentType"] is not None:
        bundle["contentType"] = version["contentType"]
    return bundle


class VaultHandler(double_http.Handler):
    request_log = []

    def dispatch(self):
        try:
            with STATE.lock:
                status, body = self.route()
            self.send_json(status, body)
        except Refused as refused:
            status, body, headers = refused.answer
            self.send_json(status, body, headers)

    def route(self):
        path, query = self.split()
        self.body = self.body_bytes()  # read before answering, even a challenge
        version = query.get("api-version")
        if version is None:
            raise Refused(400, "BadParameter", "The 'api-version' query parameter is missing.")
        if version not in API_VERSIONS:
            raise Refused(400, "BadParameter", f"The specified version ({version}) is not recognized.")
        app = self.authorized()
        if path == "/secrets" and self.command == "GET":
            return self.list_secrets(app, query)
        match = re.fullmatch(r"/secrets/([^/]+)(?:/([^/]*))?", path)
        if match:
            name, secret_version = unquote(match.group(1)), match.group(2)
            if not NAME.fullmatch(name):
                raise Refused(400, "BadParameter",
                              "The request URI contains an invalid name: " + name)
            if self.command == "GET":
                return self.get_secret(app, name, secret_version or "")
            if self.command == "PUT" and secret_version is None:
                return self.set_secret(app, name)
            if self.command == "PATCH":
                return self.update_secret(app, name, secret_version or "")
            if self.command == "DELETE" and secret_version is None:
                return self.delete_secret(app, name)
        raise Refused(404, "NotFound", f"The requested resource {self.command} {path} is not found.")

    # --- authorization ---------------------------------------------------------------------

    def authorized(self):
        token = self.bearer()
        if token is None:
            raise Refused(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                          headers=challenge())
        entry = STATE.tokens.get(token)
        if entry is None or entry[2] < time.time():
            raise Refused(401, "Unauthorized", "AKV10013: Token could not be validated.",
                          headers=challenge())
        app, tenant, _ = entry
        if tenant != STATE.tenant:
            raise Refused(401, "Unauthorized",
                          f"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{STATE.tenant}/.",
                          headers=challenge())
        return app

    def allowed(self, app, permission):
        if permission not in STATE.clients[app].get("permissions", []):
            raise Refused(403, "Forbidden",
                          f"The user, group or application 'appid={app};iss=https://sts.windows.net/"
                          f"{STATE.tenant}/' does not have secrets {permission} permission on key "
                          "vault 'berth-double'. For help resolving this issue, please see "
                          "https://go.microsoft.com/fwlink/?linkid=2125287",
                          inner="AccessDenied")

    # --- secrets ---------------------------------------------------------------------------

    def list_secrets(self, app, query):
        self.allowed(app, "list")
        try:
            maxresults = int(query.get("maxresults", "25"))
        except ValueError:
            maxresults = 0
        if not 1 <= maxresults <= 25:
            raise Refused(400, "BadParameter", "invalid maxresults")
        skip = query.get("$skiptoken")
        offset = 0
        if skip:
            try:
                offset = json.loads(base64.urlsafe_b64decode(skip + "=="))["offset"]
            except (ValueError, KeyError, TypeError):
                raise Refused(400, "BadParameter", "invalid $skiptoken")
        names = sorted(STATE.secrets)
        size = min(maxresults, STATE.page_size)
        page = [item_json(STATE.secrets[n]) for n in names[offset:offset + size]]
        next_link = None
        if offset + size < len(names):
            token = base64.urlsafe_b64encode(json.dumps({"offset": offset + size}).encode()).decode().rstrip("=")
            next_link = (f"{STATE.vault_url}/secrets?api-version={query['api-version']}"
                         f"&$skiptoken={quote(token)}&maxresults={maxresults}")
        return 200, {"value": page, "nextLink": next_link}

    def entry(self, name):
        entry = STATE.secrets.get(name.lower())
        if entry is None:
            raise Refused(404, "SecretNotFound",
                          f"A secret with (name/id) {name} was not found in this key vault. If you "
                          "recently deleted this secret you may be able to recover it using the "
                          "correct recovery command. For help resolving this issue, please see "
                          "https://go.microsoft.com/fwlink/?linkid=2125182")
        return entry

    def version_of(self, entry, name, version):
        if not version:
            return entry["versions"][-1]
        for v in entry["versions"]:
            if v["version"] == version:
                return v
        raise Refused(404, "SecretNotFound",
                      f"A secret with (name/id) {name}/{version} was not found in this key vault.")

    def get_secret(self, app, name, version):
        self.allowed(app, "get")
        entry = self.entry(name)
        found = self.version_of(entry, name, version)
        if not found["enabled"]:
            raise Refused(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                          inner="SecretDisabled")
        return 200, bundle_json(entry, found)

    def request_json(self):
        try:
            body = json.loads(self.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Refused(400, "BadParameter", "The request body is not a JSON object.")
        return body

    def set_secret(self, app, name):
        self.allowed(app, "set")
        body = self.request_json()
        if not isinstance(body.get("value"), str):
            raise Refused(400, "BadParameter", "Property value is required.")
        attrs = body.get("attributes") or {}
        now = int(time.time())
        entry = STATE.secrets.setdefault(name.lower(), {"name": name, "versions": []})
        version = {"version": uuid.uuid4().hex, "value": body["value"],
                   "enabled": attrs.get("enabled", True) is not False,
                   "contentType": body.get("contentType"), "tags": body.get("tags") or {},
                   "created": now, "updated": now}
        entry["versions"].append(version)
        return 200, bundle_json(entry, version)

    def update_secret(self, app, name, version):
        self.allowed(app, "set")
        body = self.request_json()
        entry = self.entry(name)
        found = self.version_of(entry, name, version)
        attrs = body.get("attributes") or {}
        if "enabled" in attrs and attrs["enabled"] is not None:
            found["enabled"] = bool(attrs["enabled"])
        if body.get("contentType") is not None:
            found["contentType"] = body["contentType"]
        if body.get("tags") is not None:
            found["tags"] = body["tags"]
        found["updated"] = int(time.time())
        return 200, bundle_json(entry, found, with_value=False)

    def delete_secret(self, app, name):
        self.allowed(app, "delete")
        entry = self.entry(name)
        del STATE.secrets[name.lower()]
        deleted = bundle_json(entry, entry["versions"][-1], with_value=False)
        deleted["deletedDate"] = int(time.time())
        return 200, deleted


def main():
    global STATE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the tenant, the page size and the apps, as JSON")
    args = parser.parse_args()
    STATE = State(json.loads(args.config))
    with tempfile.TemporaryDirectory(prefix="berth-azure-double-") as directory:
        ca_path, context = throwaway_tls.make(directory)
        login, STATE.login_url = double_http.listen(LoginHandler, context)
        vault, STATE.vault_url = double_http.listen(VaultHandler, context)
        double_http.serve([login, vault], {"authority": STATE.login_url,
                                           "vault": STATE.vault_url, "ca": ca_path})


if __name__ == "__main__":
    main()
