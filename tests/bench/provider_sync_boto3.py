"""The anchor of the aws-secrets-manager sync benchmark (control-plane/benches/provider_sync.rs):
AWS's own client, boto3, reading the same secrets with the same calls berth makes.

    provider_sync_boto3.py ENDPOINT REGION PREFIX KEY_ID SECRET_KEY

ListSecrets pages of 100 with the name filter PREFIX, then BatchGetSecretValue 20 ARNs at a
time (both AWS's largest), one after the other, as berth does. Prints
{"secrets": N, "client_ms": ..., "calls_ms": ...}: the time to build the client (botocore
loads the service model) and the time of the calls alone. Values are counted, never printed.
"""

import json
import sys
import time

import boto3


def main():
    endpoint, region, prefix, key_id, secret = sys.argv[1:6]
    started = time.perf_counter()
    sm = boto3.client(
        "secretsmanager",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    ready = time.perf_counter()
    arns = []
    pages = sm.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "name", "Values": [prefix]}],
        PaginationConfig={"PageSize": 100},
    )
    for page in pages:
        arns.extend(s["ARN"] for s in page["SecretList"])
    values = 0
    for i in range(0, len(arns), 20):
        answer = sm.batch_get_secret_value(SecretIdList=arns[i : i + 20])
        if answer.get("Errors"):
            raise SystemExit(f"batch errors: {answer['Errors']}")
        values += sum(1 for v in answer["SecretValues"] if "SecretString" in v)
    done = time.perf_counter()
    json.dump(
        {
            "secrets": values,
            "client_ms": (ready - started) * 1000,
            "calls_ms": (done - ready) * 1000,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
