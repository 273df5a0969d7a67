"""Google's own client library against the Secret Manager double (berth's gcp-secret-manager tests).

Subcommands, each printing one JSON object on stdout:

  keygen --dir D --token-uri URL [--tls]
      A throwaway service account: D/key.json (the key file Google issues: type,
      project_id, private_key_id, private_key as PKCS#8 PEM, client_email, token_uri) and
      D/public.pem for the double. With --tls also a throwaway CA (D/ca.pem) and a
      certificate for 127.0.0.1 signed by it (D/server.pem, D/server-key.pem).

  write --endpoint URL --key key.json --project P --spec JSON
      With `SecretManagerServiceClient(transport="rest")`: creates the secrets of
      spec["create"] ({id: {"value": text or null, "labels": {...}}}; null: no version),
      adds spec["add"] ({id: text}) as new versions, disables the latest version of each id
      in spec["disable"], deletes each id in spec["delete"]; then reads everything back:
      lists with the library's pager (page after page) and accesses each secret's latest
      version, checking the library's own CRC32C of the payload. A mismatch exits non-zero.
      The library signs its own JWT for the API (Google's "self-signed JWT"); one more list
      and access run with a client whose credentials take the OAuth token endpoint instead
      (google-auth's JWT bearer grant at the key's token_uri), so both logins are proven.

  refused --endpoint URL --key key.json --project P
      With a key the double does not know: the library's list must be refused on both
      login paths (exit 0 when it is).

For https, point REQUESTS_CA_BUNDLE at the CA (the library's transport is `requests`).
"""

import argparse
import datetime
import ipaddress
import json
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.cloud import secretmanager
from google.cloud.secretmanager_v1.services.secret_manager_service.transports.rest import (
    SecretManagerServiceRestTransport,
)
from google.oauth2 import service_account

CLIENT_EMAIL = "berth-sync@berth-test.iam.gserviceaccount.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def pem_private(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def keygen(args):
    os.makedirs(args.dir, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = {
        "type": "service_account",
        "project_id": "berth-test",
        "private_key_id": os.urandom(20).hex(),
        "private_key": pem_private(key),
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": args.token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    with open(os.path.join(args.dir, "key.json"), "w") as f:
        json.dump(key_file, f, indent=2)
    with open(os.path.join(args.dir, "public.pem"), "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    out = {"key": os.path.join(args.dir, "key.json"), "client_email": CLIENT_EMAIL}
    if args.tls:
        out.update(throwaway_ca(args.dir))
    print(json.dumps(out))


def throwaway_ca(directory):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "berth test CA (throwaway)")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": os.path.join(directory, "ca.pem"),
        "cert": os.path.join(directory, "server.pem"),
        "cert_key": os.path.join(directory, "server-key.pem"),
    }
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(server.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert_key"], "w") as f:
        f.write(pem_private(server_key))
    return paths


def clients(args):
    """(client with the library's defaults, client logging in at the token endpoint)."""
    credentials = service_account.Credentials.from_service_account_file(args.key, scopes=SCOPES)
    options = ClientOptions(api_endpoint=args.endpoint)
    default = secretmanager.SecretManagerServiceClient(
        transport="rest", client_options=options, credentials=credentials
    )
    # The client turns on self-signed JWTs for service accounts; a transport built by hand
    # with always_use_jwt_access=False makes google-auth use the token endpoint instead.
    granted = secretmanager.SecretManagerServiceClient(
        transport=SecretManagerServiceRestTransport(
            host=args.endpoint,
            credentials=service_account.Credentials.from_service_account_file(
                args.key, scopes=SCOPES
            ),
            always_use_jwt_access=False,
        )
    )
    return default, granted


def read_all(client, parent):
    pager = client.list_secrets(request={"parent": parent, "page_size": 100})
    pages = 0
    names = []
    for page in pager.pages:
        pages += 1
        names.extend(s.name for s in page.secrets)
    values = {}
    for name in names:
        secret_id = name.rsplit("/", 1)[1]
        try:
            answer = client.access_secret_version(request={"name": f"{name}/versions/latest"})
        except (exceptions.NotFound, exceptions.BadRequest) as e:
            # Google's status (NOT_FOUND, FAILED_PRECONDITION) from the error body.
            values[secret_id] = {"unreadable": e.response.json()["error"]["status"]}
            continue
        data = answer.payload.data
        if answer.payload.data_crc32c != crc32c(data):
            sys.exit(f"{secret_id}: the payload does not match its data_crc32c")
        values[secret_id] = data.decode()
    return pages, values


def write(args):
    spec = json.loads(args.spec)
    default, granted = clients(args)
    parent = f"projects/{args.project}"
    for secret_id, s in spec.get("create", {}).items():
        default.create_secret(
            request={
                "parent": parent,
                "secret_id": secret_id,
                "secret": {"replication": {"automatic": {}}, "labels": s.get("labels", {})},
            }
        )
        if s.get("value") is not None:
            add(default, parent, secret_id, s["value"])
    for secret_id, value in spec.get("add", {}).items():
        add(default, parent, secret_id, value)
    for secret_id in spec.get("disable", []):
        latest = default.get_secret_version(name=f"{parent}/secrets/{secret_id}/versions/latest")
        disabled = default.disable_secret_version(request={"name": latest.name})
        if disabled.state != secretmanager.SecretVersion.State.DISABLED:
            sys.exit(f"{secret_id}: not disabled")
    for secret_id in spec.get("delete", []):
        default.delete_secret(name=f"{parent}/secrets/{secret_id}")

    pages, values = read_all(default, parent)
    expected = spec.get("expect")
    if expected is not None and values != expected:
        sys.exit(f"read back {values}, expected {expected}")
    granted_pages, granted_values = read_all(granted, parent)
    if granted_values != values:
        sys.exit("the token-endpoint client read other values than the self-signed one")
    print(json.dumps({"pages": pages, "granted_pages": granted_pages, "values": values}))


def add(client, parent, secret_id, value):
    data = value.encode()
    version = client.add_secret_version(
        request={
            "parent": f"{parent}/secrets/{secret_id}",
            "payload": {"data": data, "data_crc32c": crc32c(data)},
        }
    )
    if version.state != secretmanager.SecretVersion.State.ENABLED:
        sys.exit(f"{secret_id}: new version not enabled")


def refused(args):
    default, granted = clients(args)
    outcomes = {}
    for label, client in (("self_signed_jwt", default), ("token_endpoint", granted)):
        try:
            list(client.list_secrets(request={"parent": f"projects/{args.project}"}))
            outcomes[label] = "accepted"
        except (exceptions.Unauthorized, exceptions.Forbidden) as e:
            outcomes[label] = type(e).__name__
        except auth_exceptions.RefreshError as e:
            outcomes[label] = "RefreshError: " + str(e.args[0] if e.args else e)
    print(json.dumps(outcomes))
    if "accepted" in outcomes.values():
        sys.exit("a key the double does not know was accepted")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("--dir", required=True)
    k.add_argument("--token-uri", required=True)
    k.add_argument("--tls", action="store_true")
    for name in ("write", "refused"):
        p = sub.add_parser(name)
        p.add_argument("--endpoint", required=True)
        p.add_argument("--key", required=True)
        p.add_argument("--project", required=True)
        if name == "write":
            p.add_argument("--spec", required=True)
    args = parser.parse_args()
    {"keygen": keygen, "write": write, "refused": refused}[args.command](args)


if __name__ == "__main__":
    main()
