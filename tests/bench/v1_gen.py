#!/usr/bin/env python3
"""Generates a V1 database for the import benchmark (tests/bench/v1_import.sh).

    python3 tests/bench/v1_gen.py OUT.db [SECRETS] [APPS] [VARIABLES]

Defaults: 10,000 secrets, 500 applications, 20,000 variables: half of them
`environment_variables` rows (project scope), half entries of the applications' `env_vars`
JSON; every other one is a `@secret:<id>` reference. Also 5 registries, one domain per
application, 3 allowlist patterns and one provider. Deterministic (seeded).
"""
import json
import random
import sqlite3
import sys
from pathlib import Path

out = Path(sys.argv[1])
secrets = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
apps = int(sys.argv[3]) if len(sys.argv) > 3 else 500
variables = int(sys.argv[4]) if len(sys.argv) > 4 else 20_000
per_app = variables // apps // 2  # table rows per app, and as many JSON entries

rng = random.Random(42)
alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def value(n=40):
    return "".join(rng.choice(alphabet) for _ in range(n))


schema = (Path(__file__).resolve().parents[1] / "fixtures/v1/schema.sql").read_text()
out.unlink(missing_ok=True)
db = sqlite3.connect(out)
db.executescript(schema)
with db:
    db.execute(
        "INSERT INTO secret_providers (name, type, config) VALUES (?, ?, ?)",
        (
            "infisical-prod",
            "infisical",
            json.dumps({"clientId": "m-1", "clientSecret": value(), "projectId": "p-1",
                        "environment": "prod", "secretPath": "/"}),
        ),
    )
    db.executemany(
        "INSERT INTO secrets (id, name, reference, metadata) VALUES (?, ?, ?, ?)",
        [(i, f"SECRET_{i:05d}", f"postgres://app:{value()}@db-{i}/app", f"secret {i}")
         for i in range(1, secrets + 1)],
    )
    db.executemany(
        "INSERT INTO repositories (id, name, url, username, password) VALUES (?, ?, ?, ?, ?)",
        [(i, f"registry-{i}", f"registry-{i}.local:5000", "ci", value(24)) for i in range(1, 6)],
    )
    rows = []
    for a in range(1, apps + 1):
        env = {}
        for j in range(per_app):
            env[f"JSON_{j:02d}"] = (
                f"@secret:{rng.randint(1, secrets)}" if j % 2 == 0 else value(20)
            )
        rows.append((
            a,
            f"app-{a:04d}",
            f"registry-{a % 5 + 1}.local:5000/team/app-{a:04d}",
            f"v1.0.{a}",
            a % 5 + 1,
            json.dumps([{"host": 20000 + a, "container": 8080}]),
            json.dumps(env),
            "running" if a % 3 else "stopped",
        ))
    db.executemany(
        "INSERT INTO applications (id, name, image, version, repository_id, ports, env_vars, status) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.executemany(
        "INSERT INTO environment_variables (scope, project_id, key, value) VALUES ('project', ?, ?, ?)",
        [
            (a, f"TABLE_{j:02d}",
             f"@secret:{rng.randint(1, secrets)}" if j % 2 == 0 else value(20))
            for a in range(1, apps + 1)
            for j in range(per_app)
        ],
    )
    db.executemany(
        "INSERT INTO image_whitelists (pattern) VALUES (?)",
        [(f"registry-{i}.local:5000/*",) for i in range(1, 4)],
    )
    db.executemany(
        "INSERT INTO domains (application_id, domain) VALUES (?, ?)",
        [(a, f"app-{a:04d}.example.com") for a in range(1, apps + 1)],
    )
db.close()
print(f"{out}: {secrets} secrets, {apps} applications, {apps * per_app * 2} variables")
