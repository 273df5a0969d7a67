#!/usr/bin/env python3
"""Writes fixture secrets into an Azure Key Vault (the double) with Microsoft's official Python
SDK — `azure-keyvault-secrets`'s SecretClient, authenticated by `azure-identity`'s
ClientSecretCredential against the double's token endpoint — and reads them back with it, so
the double is checked by the vendor's client: its challenge, token, paging and errors.

Pointing the SDK at the double takes three documented switches, none of which changes what
goes over the wire: `authority=` (the double's login address) with
`disable_instance_discovery=True` (MSAL would otherwise ask login.microsoftonline.com whether
that authority is known), `verify_challenge_resource=False` (the challenge names
https://vault.azure.net, which a vault on 127.0.0.1 is not a subdomain of), and
`connection_verify=` the double's throwaway CA.

Standard input, one JSON object:
  {"authority", "vault", "ca", "tenant_id", "client_id", "client_secret", "page_size": 2,
   "steps": [{"op": "set", "name": "my-db-url", "value": "v"},
             {"op": "disable", "name": "old"}, {"op": "delete", "name": "gone"}]}
   "probes": [{"client_id", "client_secret", "op": "list" | "get", "name"}]}
Standard output: {"read": [[name, enabled, value or null], ...], "pages": N, "probes": [...]}
— every secret as the SDK lists it (pages of `page_size`), with the value of each enabled one;
and for each probe, made as another app, how the SDK understood the double's answer:
{"ok": true} or {"error": exception class, "status": HTTP status, "code": Key Vault's error
code, "message": first line}. Exits non-zero (with the SDK's error on stderr) when a step fails.
"""

import json
import sys

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

# The API version berth speaks (the SDK's default is newer; the double serves both).
API_VERSION = "7.4"


def connect(spec, client_id, client_secret):
    credential = ClientSecretCredential(
        spec["tenant_id"], client_id, client_secret,
        authority=spec["authority"], disable_instance_discovery=True,
        connection_verify=spec["ca"],
    )
    client = SecretClient(
        spec["vault"], credential, api_version=API_VERSION,
        verify_challenge_resource=False, connection_verify=spec["ca"],
    )
    return credential, client


def probe(spec, p):
    credential, client = connect(spec, p["client_id"], p["client_secret"])
    try:
        if p["op"] == "list":
            list(client.list_properties_of_secrets())
        else:
            client.get_secret(p["name"])
        return {"ok": True}
    except ClientAuthenticationError as e:
        code = e.error.code if e.error else None
        return {"error": type(e).__name__, "status": e.status_code, "code": code,
                "message": str(e.message).splitlines()[0]}
    except HttpResponseError as e:
        return {"error": type(e).__name__, "status": e.status_code,
                "code": e.error.code if e.error else None,
                "message": str(e.message).splitlines()[0]}
    finally:
        client.close()
        credential.close()


def main():
    spec = json.load(sys.stdin)
    credential, client = connect(spec, spec["client_id"], spec["client_secret"])
    for step in spec.get("steps", []):
        if step["op"] == "set":
            client.set_secret(step["name"], step["value"], enabled=step.get("enabled", True))
        elif step["op"] == "disable":
            client.update_secret_properties(step["name"], enabled=False)
        elif step["op"] == "delete":
            client.begin_delete_secret(step["name"]).wait()
        else:
            raise ValueError(f"unknown step {step['op']!r}")
    read, pages = [], 0
    for page in client.list_properties_of_secrets(max_page_size=spec.get("page_size", 25)).by_page():
        pages += 1
        for props in page:
            value = client.get_secret(props.name).value if props.enabled else None
            read.append([props.name, props.enabled, value])
    probes = [probe(spec, p) for p in spec.get("probes", [])]
    json.dump({"read": read, "pages": pages, "probes": probes}, sys.stdout)
    client.close()
    credential.close()


if __name__ == "__main__":
    main()
