"""Decision receipts of the real binary, checked by the published verifier `aragora-verify`
(PyPI), which knows nothing of this server. Run by .ci/run:

    odr_check.py issue URL DIR VERIFIER   # run a debate, export its receipt (ODR 0.1 and 0.2)
                                          # and the key, verify, and check that edits and a
                                          # wrong key fail
    odr_check.py again URL DIR VERIFIER   # after a restart: the same bytes, still verified
"""

import json
import pathlib
import subprocess
import sys
import time
import urllib.request

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def verify(verifier, doc_path, key_path):
    run = subprocess.run([verifier, str(doc_path), "--pubkey", str(key_path)], capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


def expect(verifier, doc_path, key_path, code, what):
    got, out = verify(verifier, doc_path, key_path)
    if got != code:
        sys.exit(f"FAIL: {what}: aragora-verify exited {got}, expected {code}\n{out}")
    print(f"ok: {what} (exit {got})")


def issue(base, out, verifier):
    debate = json.loads(call(base, "POST", "/api/debates", {
        "task": "Should the billing service move to event sourcing?",
        "agents": ["demo", "demo", "demo"], "rounds": 2}))["debate_id"]
    receipt_id = None
    for _ in range(600):
        record = json.loads(call(base, "GET", f"/api/debates/{debate}"))
        if record.get("receipt_id"):
            receipt_id = record["receipt_id"]
            break
        if record["status"] not in ("queued", "running", "completed", "no_consensus"):
            sys.exit(f"FAIL: the debate ended {record['status']}")
        time.sleep(0.1)
    if not receipt_id:
        sys.exit("FAIL: no receipt was issued")
    (out / "receipt_id").write_text(receipt_id)
    key = call(base, "GET", "/.well-known/aragora-odr-signing-key")
    (out / "key.pem").write_bytes(key)
    for version in ("0.1", "0.2"):
        body = call(base, "GET", f"/api/v2/receipts/{receipt_id}/export?format=odr&odr_version={version}")
        (out / f"receipt-{version}.odr.json").write_bytes(body)
        expect(verifier, out / f"receipt-{version}.odr.json", out / "key.pem", 0, f"ODR {version} receipt verifies")

    doc = json.loads((out / "receipt-0.2.odr.json").read_text())
    edits = {
        "claim": lambda d: d["claim"].__setitem__("verdict", "no_consensus" if d["claim"]["verdict"] == "consensus" else "consensus"),
        "participants": lambda d: d["quorum"]["participants"][0].__setitem__("agent", "mallory"),
        "issuer": lambda d: d["signatures"][0].__setitem__("issuer", "someone-else"),
    }
    for name, edit in edits.items():
        tampered = json.loads(json.dumps(doc))
        edit(tampered)
        path = out / f"tampered-{name}.json"
        path.write_text(json.dumps(tampered))
        expect(verifier, path, out / "key.pem", 1, f"a receipt with an edited {name} fails")
    other = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (out / "other.pem").write_bytes(other)
    expect(verifier, out / "receipt-0.2.odr.json", out / "other.pem", 1, "another key fails")


def again(base, out, verifier):
    receipt_id = (out / "receipt_id").read_text()
    for version in ("0.1", "0.2"):
        body = call(base, "GET", f"/api/v2/receipts/{receipt_id}/export?format=odr&odr_version={version}")
        if body != (out / f"receipt-{version}.odr.json").read_bytes():
            sys.exit(f"FAIL: the ODR {version} export changed across the restart")
        print(f"ok: ODR {version} export is byte-identical after the restart")
        expect(verifier, out / f"receipt-{version}.odr.json", out / "key.pem", 0, f"ODR {version} still verifies")
    if call(base, "GET", "/.well-known/aragora-odr-signing-key") != (out / "key.pem").read_bytes():
        sys.exit("FAIL: the signing key changed across the restart")


if __name__ == "__main__":
    mode, base, out, verifier = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
    {"issue": issue, "again": again}[mode](base, out, verifier)
