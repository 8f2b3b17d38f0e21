"""The published Python SDK (aragora-sdk, from PyPI) against a running server: every call a
user of the original server reaches for first, through the SDK itself.

Usage: python sdk_check.py BASE_URL EMAIL PASSWORD   (exit 0: all calls behaved)
"""

import sys
import time

import httpx
from aragora_sdk import AragoraClient

base, email, password = sys.argv[1], sys.argv[2], sys.argv[3]
token = httpx.post(f"{base}/api/auth/login", json={"email": email, "password": password}).json()[
    "access_token"
]
client = AragoraClient(base_url=base, api_key=token, max_retries=1)
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(name)


# create(protocol=...): rounds and consensus mapped from the protocol.
created = client.debates.create(
    "Should we adopt a monorepo?",
    agents=["demo:300", "demo:300", "demo:300"],
    protocol={"rounds": 2, "consensus": "majority"},
)
debate_id = created["debate_id"]
check("debates.create(protocol=...)", created["status"] == "queued", created)
record = client.debates.get(debate_id)
check("protocol mapped", record["rounds"] == 2 and record["consensus"] == "majority", record)

# list_active: the running debate is listed (not taken for a debate id).
for _ in range(100):
    active = client.debates.list_active()
    if any(d["debate_id"] == debate_id for d in active["debates"]):
        break
    time.sleep(0.05)
check("debates.list_active", any(d["debate_id"] == debate_id for d in active["debates"]), active)

# pause / resume, then the debate completes.
client.debates.pause(debate_id)
for _ in range(200):
    if client.debates.get(debate_id)["status"] == "paused":
        break
    time.sleep(0.05)
check("debates.pause", client.debates.get(debate_id)["status"] == "paused")
client.debates.resume(debate_id)
for _ in range(400):
    record = client.debates.get(debate_id)
    if record["status"] not in ("queued", "running", "paused"):
        break
    time.sleep(0.05)
check("debates.resume → finished", record["status"] in ("completed", "no_consensus"), record)

export = client.debates.get_export(debate_id, "json")
check(
    "debates.get_export",
    export["debate"]["id"] == debate_id and export["events"][-1]["type"] == "debate_end",
    str(export)[:200],
)

key = client.auth.create_api_key("ci")
check("auth.create_api_key", key.get("api_key", "").startswith("ara_"), key)
with_key = AragoraClient(base_url=base, api_key=key["api_key"], max_retries=1)
check("the new key works", with_key.debates.get(debate_id)["id"] == debate_id)

detailed = client.health.detailed()
check("health.detailed", detailed["status"] in ("healthy", "degraded"), detailed)

breakers = client.system.get_circuit_breakers()
check("system.get_circuit_breakers", "circuit_breakers" in breakers, breakers)

metrics = client.system.get_prometheus_metrics()
check(
    "system.get_prometheus_metrics",
    "aragora_debates_total" in metrics.get("metrics", ""),
    str(metrics)[:200],
)

elo = client.agents.get_elo("demo")
check("agents.get_elo", isinstance(elo.get("elo"), (int, float)) and elo["agent"] == "demo", elo)

summary = client.usage.get_summary()
check(
    "usage.get_summary",
    summary.get("period_name") == "month" and summary.get("calls", 0) >= 1,
    summary,
)

if failures:
    print(f"{len(failures)} SDK call(s) failed: {', '.join(failures)}")
    sys.exit(1)
print("every SDK call behaved")
