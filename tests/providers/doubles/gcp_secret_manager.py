"""A local double of Google Cloud Secret Manager (REST API v1) and Google's OAuth token endpoint.

Written from Google's published REST reference, for berth's `gcp-secret-manager` tests; the
official client library (`google-cloud-secret-manager`, REST transport) checks it in
tests/providers/gcp-secret-manager/sdk.py. What it speaks:

- `POST /token`: the OAuth 2.0 JWT bearer grant (RFC 7523) as Google runs it for service
  accounts. The assertion must be an RS256 JWT signed by the service account's key (verified
  with its public key, `--public-key`), `iss` the account (`--client-email`), `aud`
  `https://oauth2.googleapis.com/token` (Google documents it as always that; this endpoint's
  own URL is taken too, as some libraries send the key's token_uri), a `scope`, and `iat`/`exp` at most an hour apart around now. Refusals are
  Google's: HTTP 400 `{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}`.
- The API takes `Authorization: Bearer` with a token from `/token`, or a self-signed JWT of
  the account (Google's "JWT access", AIP-4111: `aud` the API's URL or a `scope` claim), which
  is what the official client library sends by default.
- `GET /v1/projects/{p}/secrets?pageSize&pageToken&filter` (pages capped at
  `--max-page-size`, so a few secrets already span pages; `filter` understands `name:TEXT`,
  `labels.KEY=VALUE`, `labels.KEY:VALUE` and `labels.KEY:*`, joined by spaces or AND),
  `POST …/secrets?secretId=` (secrets.create), `GET|DELETE …/secrets/{id}`,
  `POST …/secrets/{id}:addVersion`, `GET …/versions/{v}` and `…/versions/{v}:access`
  (`latest` is the most recently created version, whatever its state),
  `POST …/versions/{v}:disable|enable|destroy`. `{p}` is the project id or its number;
  names in answers carry the number, as Google's do.
- Errors are Google's `{"error": {"code", "message", "status"}}`.

Test controls (not Google's): `GET /__double/health`, `GET /__double/requests` (method and
path of each API request, no headers), `POST /__double/fault` with
`{"list": "not-json"|"bad-name", "access": "bad-crc"|"not-base64"|"no-payload",
"token": "no-access-token"|"unavailable", "deny": [secret ids refused on access]}`
(`{}` clears every fault).

    python gcp_secret_manager.py --port 8080 --project berth-test --client-email sa@x \
        --public-key public.pem [--max-page-size 2] [--tls-cert c.pem --tls-key k.pem]
"""

import argparse
import base64
import binascii
import datetime
import json
import re
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
API_AUDIENCE = "https://secretmanager.googleapis.com/"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
STATES = {"ENABLED": 1, "DISABLED": 2, "DESTROYED": 3}


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    CODES = {
        "INVALID_ARGUMENT": 400,
        "FAILED_PRECONDITION": 400,
        "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "UNAVAILABLE": 503,
    }

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.code = self.CODES[status]
        self.message = message


class OAuthError(Exception):
    def __init__(self, error, description, code=400):
        super().__init__(description)
        self.error = error
        self.description = description
        self.code = code


class State:
    def __init__(self, args):
        self.project = args.project
        self.number = args.project_number
        self.client_email = args.client_email
        with open(args.public_key, "rb") as f:
            self.public_key = serialization.load_pem_public_key(f.read())
        self.max_page_size = args.max_page_size
        self.lock = threading.Lock()
        self.secrets = {}  # id -> {"labels", "createTime", "versions": [dict]}
        self.tokens = set()
        self.faults = {}
        self.requests = []

    # --- JWTs -------------------------------------------------------------------------------

    def verify_jwt(self, jwt):
        """The claims of an RS256 JWT signed by the service account, or OAuthError."""
        parts = jwt.split(".")
        if len(parts) != 3:
            raise OAuthError("invalid_grant", "Invalid JWT: not three parts.")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            raise OAuthError("invalid_grant", "Invalid JWT: not base64url JSON.")
        if header.get("alg") != "RS256":
            raise OAuthError("invalid_grant", "Invalid JWT: alg must be RS256.")
        try:
            self.public_key.verify(
                signature,
                (parts[0] + "." + parts[1]).encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != self.client_email:
            raise OAuthError("invalid_grant", "Invalid grant: account not found")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, int)
            or not isinstance(exp, int)
            or exp <= iat
            or exp - iat > 3600
            or iat > now + 300
            or exp < now
        ):
            raise OAuthError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        return claims

    def grant(self, form, token_url):
        fault = self.faults.get("token")
        if fault == "unavailable":
            raise OAuthError("temporarily_unavailable", "The service is unavailable.", 503)
        if form.get("grant_type") != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "Invalid grant_type: " + form.get("grant_type", ""))
        claims = self.verify_jwt(form.get("assertion", ""))
        if claims.get("aud") not in (TOKEN_AUDIENCE, token_url):
            raise OAuthError(
                "invalid_grant",
                "Invalid JWT: Failed audience check. The right audience is " + TOKEN_AUDIENCE,
            )
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            raise OAuthError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.double-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
        if fault == "no-access-token":
            return {"expires_in": 3599, "token_type": "Bearer"}
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def authenticate(self, authorization):
        if not authorization:
            raise ApiError(
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
            )
        invalid = ApiError(
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
        )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise invalid
        with self.lock:
            if token in self.tokens:
                return
        # A self-signed JWT (AIP-4111): the API as audience, or a scope.
        try:
            claims = self.verify_jwt(token)
        except OAuthError:
            raise invalid
        scopes = str(claims.get("scope", "")).split()
        if claims.get("aud") != API_AUDIENCE and CLOUD_PLATFORM not in scopes:
            raise invalid

    # --- resources --------------------------------------------------------------------------

    def check_project(self, project, permission):
        if project not in (self.project, self.number):
            raise ApiError(
                "PERMISSION_DENIED",
                f"Permission '{permission}' denied for resource 'projects/{project}' "
                "(or it may not exist).",
            )

    def secret_name(self, secret_id):
        return f"projects/{self.number}/secrets/{secret_id}"

    def secret_json(self, secret_id):
        s = self.secrets[secret_id]
        return {
            "name": self.secret_name(secret_id),
            "replication": {"automatic": {}},
            "createTime": s["createTime"],
            "labels": s["labels"],
            "etag": '"' + s["etag"] + '"',
        }

    def version_json(self, secret_id, version, numeric_enums):
        state = version["state"]
        return {
            "name": f"{self.secret_name(secret_id)}/versions/{version['n']}",
            "createTime": version["createTime"],
            "state": STATES[state] if numeric_enums else state,
            "replicationStatus": {"automatic": {}},
            "etag": '"' + version["etag"] + '"',
        }

    def secret(self, secret_id):
        s = self.secrets.get(secret_id)
        if s is None:
            raise ApiError("NOT_FOUND", f"Secret [{self.secret_name(secret_id)}] not found.")
        return s

    def version(self, secret_id, version_id):
        s = self.secret(secret_id)
        if version_id == "latest":
            if not s["versions"]:
                raise ApiError(
                    "NOT_FOUND",
                    f"Secret Version [{self.secret_name(secret_id)}/versions/latest] not found.",
                )
            return s["versions"][-1]
        for v in s["versions"]:
            if str(v["n"]) == version_id:
                return v
        raise ApiError(
            "NOT_FOUND",
            f"Secret Version [{self.secret_name(secret_id)}/versions/{version_id}] not found.",
        )

    def matches(self, secret_id, terms):
        labels = self.secrets[secret_id]["labels"]
        for term in terms:
            m = re.fullmatch(r"labels\.([A-Za-z0-9_-]+)([=:])(.+)", term)
            if m:
                key, op, value = m.groups()
                if op == ":" and value == "*":
                    if key not in labels:
                        return False
                elif labels.get(key) != value and not (op == ":" and value in labels.get(key, "")):
                    return False
            elif term.startswith("name:"):
                if term[5:] not in self.secret_name(secret_id):
                    return False
            else:
                raise ApiError("INVALID_ARGUMENT", f"Invalid filter: {term}")
        return True

    def list(self, project, query):
        self.check_project(project, "secretmanager.secrets.list")
        try:
            size = int(query.get("pageSize", "0") or 0)
        except ValueError:
            raise ApiError("INVALID_ARGUMENT", "Invalid value for pageSize")
        size = min(size if size > 0 else 25000, self.max_page_size)
        start = 0
        if query.get("pageToken"):
            try:
                start = int(base64.urlsafe_b64decode(query["pageToken"]).decode().split(":")[1])
            except (ValueError, IndexError, binascii.Error):
                raise ApiError("INVALID_ARGUMENT", "Invalid page token")
        terms = [t for t in query.get("filter", "").split() if t != "AND"]
        with self.lock:
            ids = [i for i in sorted(self.secrets) if self.matches(i, terms)]
            page = [self.secret_json(i) for i in ids[start : start + size]]
        out = {"totalSize": len(ids)}
        if page:
            out["secrets"] = page
        if start + size < len(ids):
            out["nextPageToken"] = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode()
        if self.faults.get("list") == "bad-name" and page:
            page[0]["name"] = "projects/1/topics/not-a-secret"
        return out

    def create(self, project, query, body):
        self.check_project(project, "secretmanager.secrets.create")
        secret_id = query.get("secretId", "")
        if not SECRET_ID.match(secret_id):
            raise ApiError("INVALID_ARGUMENT", "Secret ID must match [a-zA-Z0-9_-]{1,255}.")
        if not isinstance(body.get("replication"), dict):
            raise ApiError("INVALID_ARGUMENT", "Secret.replication is required.")
        with self.lock:
            if secret_id in self.secrets:
                raise ApiError("ALREADY_EXISTS", f"Secret [{self.secret_name(secret_id)}] already exists.")
            self.secrets[secret_id] = {
                "labels": body.get("labels", {}),
                "createTime": now_rfc3339(),
                "etag": secrets.token_hex(6),
                "versions": [],
            }
            return self.secret_json(secret_id)

    def add_version(self, project, secret_id, body, numeric_enums):
        self.check_project(project, "secretmanager.versions.add")
        payload = body.get("payload") or {}
        try:
            data = base64.b64decode(payload.get("data", ""), validate=True)
        except binascii.Error:
            raise ApiError("INVALID_ARGUMENT", "Invalid value at 'payload.data' (TYPE_BYTES)")
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != crc32c(data):
            raise ApiError("INVALID_ARGUMENT", "Checksum mismatch: data_crc32c does not match the payload.")
        with self.lock:
            s = self.secret(secret_id)
            version = {
                "n": len(s["versions"]) + 1,
                "state": "ENABLED",
                "data": data,
                "createTime": now_rfc3339(),
                "etag": secrets.token_hex(6),
            }
            s["versions"].append(version)
            return self.version_json(secret_id, version, numeric_enums)

    def access(self, project, secret_id, version_id):
        self.check_project(project, "secretmanager.versions.access")
        if secret_id in self.faults.get("deny", []):
            raise ApiError(
                "PERMISSION_DENIED",
                f"Permission 'secretmanager.versions.access' denied for resource "
                f"'{self.secret_name(secret_id)}/versions/{version_id}' (or it may not exist).",
            )
        with self.lock:
            v = self.version(secret_id, version_id)
            if v["state"] != "ENABLED":
                raise ApiError(
                    "FAILED_PRECONDITION",
                    f"Secret Version [{self.secret_name(secret_id)}/versions/{v['n']}] is in "
                    f"{v['state']} state.",
                )
            data = v["data"]
            out = {
                "name": f"{self.secret_name(secret_id)}/versions/{v['n']}",
                "payload": {
                    "data": base64.b64encode(data).decode(),
                    "dataCrc32c": str(crc32c(data)),
                },
            }
        fault = self.faults.get("access")
        if fault == "bad-crc":
            out["payload"]["dataCrc32c"] = str(crc32c(data) ^ 1)
        elif fault == "not-base64":
            out["payload"]["data"] = "%%%" + out["payload"]["data"]
        elif fault == "no-payload":
            del out["payload"]
        return out

    def set_state(self, project, secret_id, version_id, action, numeric_enums):
        self.check_project(project, f"secretmanager.versions.{action}")
        with self.lock:
            v = self.version(secret_id, version_id)
            if v["state"] == "DESTROYED":
                raise ApiError("FAILED_PRECONDITION", "The version is destroyed.")
            v["state"] = {"disable": "DISABLED", "enable": "ENABLED", "destroy": "DESTROYED"}[action]
            if action == "destroy":
                v["data"] = b""
            return self.version_json(secret_id, v, numeric_enums)

    def delete(self, project, secret_id):
        self.check_project(project, "secretmanager.secrets.delete")
        with self.lock:
            self.secret(secret_id)
            del self.secrets[secret_id]
        return {}


SECRETS = re.compile(r"^/v1/projects/([^/]+)/secrets$")
SECRET = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)(:addVersion)?$")
VERSION = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/([^/:]+)(?::(access|disable|enable|destroy))?$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set in main
    scheme = "http"

    def log_message(self, *args):
        pass

    def send(self, code, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self):
        raw = self.body()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError("INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(body, dict):
            raise ApiError("INVALID_ARGUMENT", "Invalid JSON payload received.")
        return body

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        state = self.state
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        # The client library asks for enums as numbers (`$alt=json;enum-encoding=int`).
        numeric_enums = "enum-encoding=int" in query.get("$alt", "")
        try:
            if path == "/__double/health":
                return self.send(200, {"ok": True})
            if path == "/__double/requests":
                with state.lock:
                    return self.send(200, {"requests": list(state.requests)})
            if path == "/__double/fault" and method == "POST":
                state.faults = json.loads(self.body() or b"{}")
                return self.send(200, state.faults)
            if path == "/token" and method == "POST":
                return self.token()
            with state.lock:
                state.requests.append({"method": method, "path": path, "query": sorted(query)})
            state.authenticate(self.headers.get("Authorization"))
            if m := SECRETS.match(path):
                if method == "GET":
                    out = state.list(m[1], query)
                    if state.faults.get("list") == "not-json":
                        return self.send(200, None, raw=b"<html>not json</html>")
                    return self.send(200, out)
                if method == "POST":
                    return self.send(200, state.create(m[1], query, self.json_body()))
            elif m := SECRET.match(path):
                if m[3] and method == "POST":
                    return self.send(200, state.add_version(m[1], m[2], self.json_body(), numeric_enums))
                if not m[3] and method == "GET":
                    state.check_project(m[1], "secretmanager.secrets.get")
                    with state.lock:
                        state.secret(m[2])
                        return self.send(200, state.secret_json(m[2]))
                if not m[3] and method == "DELETE":
                    return self.send(200, state.delete(m[1], m[2]))
            elif m := VERSION.match(path):
                if m[4] == "access" and method == "GET":
                    return self.send(200, state.access(m[1], m[2], m[3]))
                if m[4] is None and method == "GET":
                    state.check_project(m[1], "secretmanager.versions.get")
                    with state.lock:
                        v = state.version(m[2], m[3])
                        return self.send(200, state.version_json(m[2], v, numeric_enums))
                if m[4] and method == "POST":
                    self.json_body()
                    return self.send(200, state.set_state(m[1], m[2], m[3], m[4], numeric_enums))
            raise ApiError("NOT_FOUND", f"The requested URL {path} was not found on this server.")
        except ApiError as e:
            self.send(e.code, {"error": {"code": e.code, "message": e.message, "status": e.status}})

    def token(self):
        state = self.state
        if "application/x-www-form-urlencoded" not in self.headers.get("Content-Type", ""):
            return self.send(400, {"error": "invalid_request", "error_description": "Bad Request"})
        form = dict(urllib.parse.parse_qsl(self.body().decode("utf-8", "replace")))
        token_url = f"{self.scheme}://{self.headers.get('Host')}/token"
        try:
            self.send(200, state.grant(form, token_url))
        except OAuthError as e:
            self.send(e.code, {"error": e.error, "error_description": e.description})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--project-number", default="123456789012")
    parser.add_argument("--client-email", required=True)
    parser.add_argument("--public-key", required=True, help="PEM of the service account's public key")
    parser.add_argument("--max-page-size", type=int, default=2)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        Handler.scheme = "https"
    server.serve_forever()


if __name__ == "__main__":
    main()
