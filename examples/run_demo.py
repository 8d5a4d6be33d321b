"""`make run`: the demo API on :9000 and meterproxy on :8080 (admin :9090), with curl hints.

Both run as child processes; Ctrl-C stops meterproxy (which flushes its events) and
then the demo API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKEN = os.environ.get("METERPROXY_ADMIN_TOKEN", "dev-admin-token")
ADMIN = "http://127.0.0.1:9090"


def _wait_for(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up in {seconds}s")


def _new_key(customer: str) -> str:
    request = urllib.request.Request(
        f"{ADMIN}/v1/customers/{customer}/keys",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.load(response)["key"])


def _hints(key: str) -> str:
    auth = f"-H 'Authorization: Bearer {TOKEN}'"
    return f"""
meterproxy is running: proxy http://127.0.0.1:8080, admin {ADMIN}. Try:

  curl -s http://127.0.0.1:8080/v1/hello -H 'Authorization: Bearer {key}'
  curl -s http://127.0.0.1:8080/v1/items -H 'X-Customer-Id: globex'
  curl -si http://127.0.0.1:8080/v1/generate -H 'X-Customer-Id: globex' \\
       -d '{{"prompt": "hi there"}}'
  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'X-Customer-Id: acme' \\
       -d '{{"model": "demo-chat", "stream": true,
            "messages": [{{"role": "user", "content": "hello"}}]}}'
  curl -sN http://127.0.0.1:8080/v1/stream?count=5 -H 'X-Customer-Id: acme'
  curl -s http://127.0.0.1:8080/v1/hello            # no customer: 401

Events and metrics:
  curl -s '{ADMIN}/events?customer_id=acme' {auth}
  curl -s {ADMIN}/events/ingest {auth} -H 'Content-Type: application/json' \\
       -d '{{"events": [{{"event_id": "seats-1", "customer_id": "acme",
                         "event_name": "seats.reported", "metadata": {{"seats": 7}}}}]}}'
  curl -s {ADMIN}/v1/customers {auth}
  curl -s {ADMIN}/metrics | grep ^meterproxy_

Ctrl-C stops both (meterproxy flushes every pending event first).
"""


def main() -> int:
    env = dict(os.environ)
    env.setdefault("METERPROXY_DB", str(HERE.parent / "demo.db"))
    upstream = subprocess.Popen([sys.executable, str(HERE / "demo_upstream.py")])
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "run", "-c", str(HERE / "demo.yaml")], env=env
    )
    try:
        _wait_for(f"{ADMIN}/healthz")
        print(_hints(_new_key("acme")), flush=True)
        return proxy.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for child in (proxy, upstream):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.wait(timeout=40)


if __name__ == "__main__":
    sys.exit(main())
