"""bench/nginx.py: the baseline's configuration."""

from __future__ import annotations

from pathlib import Path

from bench.nginx import prepare_prefix, render_conf


def test_config_streams_through_a_keepalive_upstream() -> None:
    conf = render_conf(18081, 18000)
    for line in (
        "listen 127.0.0.1:18081;",
        "server 127.0.0.1:18000;",
        "keepalive 512;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "worker_processes 1;",
        "access_log off;",
    ):
        assert line in conf


def test_prefix_holds_the_config_and_its_temp_dirs(tmp_path: Path) -> None:
    args = prepare_prefix(tmp_path / "nginx", 18081, 18000)
    assert args == ["-p", str(tmp_path / "nginx"), "-c", "nginx.conf"]
    assert (tmp_path / "nginx" / "nginx.conf").read_text() == render_conf(18081, 18000)
    assert (tmp_path / "nginx" / "tmp").is_dir()
