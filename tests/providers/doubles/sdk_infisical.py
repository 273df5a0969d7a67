#!/usr/bin/env python3
"""Writes fixture secrets into an Infisical (the double) with Infisical's official Python SDK,
`infisicalsdk`, and reads them back with it — so the double is checked by the vendor's client.

Standard input, one JSON object:
  {"url", "client_id", "client_secret", "project_id", "environment",
   "steps": [{"op": "folder", "path": "/", "name": "billing"},
             {"op": "set", "path": "/billing", "key": "KEY", "value": "v"},
             {"op": "delete", "path": "/", "key": "OLD"}],
   "read": "/",
   "probes": [{"client_id", "client_secret", "op": "login" | "list"}]}
Standard output: {"read": [[folder, key, value], ...], "probes": [...]} — every secret at and
below `read`, listed with `recursive=True` and references expanded, as the SDK sees it; and for
each probe, made as another identity, how the SDK understood the double's answer: {"ok": true}
or {"error": exception class, "status": HTTP status, "message": the SDK's message}. Exits
non-zero (with the SDK's error on stderr) when a step fails.
"""

import json
import sys

from infisical_sdk import InfisicalSDKClient
from infisical_sdk.infisical_requests import APIError


def probe(spec, p):
    client = InfisicalSDKClient(host=spec["url"], cache_ttl=None)
    try:
        client.auth.universal_auth.login(client_id=p["client_id"], client_secret=p["client_secret"])
        if p["op"] == "list":
            client.secrets.list_secrets(
                project_id=spec["project_id"], environment_slug=spec["environment"],
                secret_path="/", recursive=True,
            )
        return {"ok": True}
    except APIError as e:
        return {"error": type(e).__name__, "status": e.status_code, "message": str(e),
                "kind": e.response.get("error")}
    finally:
        client.close()


def main():
    spec = json.load(sys.stdin)
    project, env = spec["project_id"], spec["environment"]
    # cache_ttl=None: every read goes to the server, so what is printed is what it holds.
    client = InfisicalSDKClient(host=spec["url"], cache_ttl=None)
    client.auth.universal_auth.login(client_id=spec["client_id"], client_secret=spec["client_secret"])
    for step in spec.get("steps", []):
        if step["op"] == "folder":
            client.folders.create_folder(
                name=step["name"], environment_slug=env, project_id=project, path=step["path"]
            )
        elif step["op"] == "set":
            try:
                client.secrets.get_secret_by_name(
                    secret_name=step["key"], project_id=project, environment_slug=env,
                    secret_path=step["path"], expand_secret_references=False,
                )
                exists = True
            except APIError as e:
                if e.status_code != 404:
                    raise
                exists = False
            if exists:
                client.secrets.update_secret_by_name(
                    current_secret_name=step["key"], project_id=project, environment_slug=env,
                    secret_path=step["path"], secret_value=step["value"],
                )
            else:
                client.secrets.create_secret_by_name(
                    secret_name=step["key"], project_id=project, environment_slug=env,
                    secret_path=step["path"], secret_value=step["value"],
                )
        elif step["op"] == "delete":
            client.secrets.delete_secret_by_name(
                secret_name=step["key"], project_id=project, environment_slug=env,
                secret_path=step["path"],
            )
        else:
            raise ValueError(f"unknown step {step['op']!r}")
    listed = client.secrets.list_secrets(
        project_id=project, environment_slug=env, secret_path=spec.get("read", "/"),
        recursive=True, expand_secret_references=True,
    )
    read = [[s.secretPath, s.secretKey, s.secretValue] for s in listed.secrets]
    probes = [probe(spec, p) for p in spec.get("probes", [])]
    json.dump({"read": read, "probes": probes}, sys.stdout)
    client.close()


if __name__ == "__main__":
    main()
