"""Debian's nginx as the industry-floor reverse proxy: one worker (it gets the same
single core as the other proxies), keep-alive upstream connections, streaming both ways
(no buffering, as the Python proxies stream), no access log."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# nginx -p PREFIX -c nginx.conf; paths below are relative to PREFIX.
_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    client_max_body_size 0;
    upstream api {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """The nginx executable (PATH, then /usr/sbin), or None when it is not installed."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_version(binary: str) -> str:
    """E.g. "nginx/1.22.1" (nginx prints its version on stderr)."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def render_conf(port: int, upstream_port: int) -> str:
    return _CONF.format(port=port, upstream_port=upstream_port)


def prepare_prefix(prefix: Path, port: int, upstream_port: int) -> list[str]:
    """Write the config under `prefix` and return the arguments after the binary."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    # Workers drop to an unprivileged user when started as root: let them use the tree.
    for path in (prefix, prefix / "tmp"):
        path.chmod(0o777)
    (prefix / "nginx.conf").write_text(render_conf(port, upstream_port))
    return ["-p", str(prefix), "-c", "nginx.conf"]
