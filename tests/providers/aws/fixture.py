"""Fixture secrets for the aws-secrets-manager tests, written into a moto server by boto3.

The Rust tests (control-plane/src/provider/aws/tests.rs) run this with BERTH_PROVIDER_PYTHON,
so what berth reads is what AWS's own client wrote (boto3 base64-encodes SecretBinary on the
wire itself) and what boto3 reads back is what berth must read.

    AWS_CA_BUNDLE names the CA file of a moto started with TLS.

    fixture.py ENDPOINT REGION setup
        IAM users with access keys, then turns moto's request authentication on (every later
        request must carry a valid SigV4 signature of a known key and be allowed by the user's
        policy). Prints {"reader": [id, secret], "classic": [...], "writer": [...]}:
        reader  may ListSecrets, BatchGetSecretValue and GetSecretValue;
        classic may ListSecrets and GetSecretValue only (no batch call: berth falls back);
        writer  may do anything (this script's own key after setup).

    fixture.py ENDPOINT REGION apply KEY_ID SECRET_KEY < ops.json
        Runs a JSON list of operations and prints {"arns": {name: arn}, "read": {name: value}}:
        {"put": NAME, "string": TEXT}        create, or a new current version if it exists
        {"put": NAME, "binary_b64": B64}     the same with SecretBinary (raw bytes to boto3)
        {"put": NAME}                        a secret with no value at all
        {"delete": NAME}                     deleted at once, without a recovery window
        {"schedule_delete": NAME}            scheduled for deletion (7-day recovery window)
        {"read": NAME}                       boto3's get_secret_value: the string, or
                                             "base64:" + the binary base64-encoded
"""

import base64
import json
import os
import ssl
import sys
import urllib.request

import boto3


def client(service, endpoint, region, key_id, secret):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def setup(endpoint, region):
    # Before authentication is on, moto accepts any key.
    iam = client("iam", endpoint, region, "AKIDSETUP", "setup")
    policies = {
        "reader": [
            "secretsmanager:ListSecrets",
            "secretsmanager:BatchGetSecretValue",
            "secretsmanager:GetSecretValue",
        ],
        "classic": ["secretsmanager:ListSecrets", "secretsmanager:GetSecretValue"],
        "writer": ["secretsmanager:*"],
    }
    keys = {}
    for user, actions in policies.items():
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName=f"{user}-policy",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        # Not a form: moto reads the raw body as the count of unauthenticated requests left.
        headers={"Content-Type": "text/plain"},
    )
    # A TLS moto's CA: boto3 reads the same variable itself.
    context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
    with urllib.request.urlopen(request, context=context) as answer:
        answer.read()
    return keys


def apply(endpoint, region, key_id, secret, ops):
    sm = client("secretsmanager", endpoint, region, key_id, secret)
    arns, read = {}, {}
    for op in ops:
        if "put" in op:
            name = op["put"]
            value = {}
            if "string" in op:
                value["SecretString"] = op["string"]
            if "binary_b64" in op:
                value["SecretBinary"] = base64.b64decode(op["binary_b64"])
            try:
                arns[name] = sm.create_secret(Name=name, **value)["ARN"]
            except sm.exceptions.ResourceExistsException:
                arns[name] = sm.put_secret_value(SecretId=name, **value)["ARN"]
        elif "delete" in op:
            sm.delete_secret(SecretId=op["delete"], ForceDeleteWithoutRecovery=True)
        elif "schedule_delete" in op:
            sm.delete_secret(SecretId=op["schedule_delete"], RecoveryWindowInDays=7)
        elif "read" in op:
            got = sm.get_secret_value(SecretId=op["read"])
            if "SecretString" in got:
                read[op["read"]] = got["SecretString"]
            else:
                read[op["read"]] = "base64:" + base64.b64encode(got["SecretBinary"]).decode()
        else:
            raise SystemExit(f"unknown operation {op!r}")
    return {"arns": arns, "read": read}


def main():
    endpoint, region, command = sys.argv[1:4]
    if command == "setup":
        out = setup(endpoint, region)
    elif command == "apply":
        key_id, secret = sys.argv[4:6]
        out = apply(endpoint, region, key_id, secret, json.load(sys.stdin))
    else:
        raise SystemExit(f"unknown command {command!r}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
