"""nginx with proxy_cache in front of the sandbox's public passport route, the way an
operator would put a caching proxy there: one worker process, 127.0.0.1 only, config,
cache and temp files in a throw-away directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench._support import Child, spawn, wait_http, which

_CONF = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
{user}
events {{ worker_connections 4096; }}

http {{
    {access_log}
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    keepalive_requests 1000000;

    proxy_cache_path {root}/cache levels=1:2 keys_zone=passports:10m max_size=256m
                     inactive=1h use_temp_path=off;

    upstream sandbox {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};

        location = /healthz {{ return 200 "ok"; }}

        # Same URL shape as the gateway: /v1/passports/{{id}} -> public passport upstream.
        location /v1/passports/ {{
            proxy_pass http://sandbox/passport/v1/passports/public/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache passports;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(port: int, upstream_port: int, *, access_log: bool = False) -> Child:
    root = Path(tempfile.mkdtemp(prefix="ampgate-bench-nginx-"))
    for sub in ("cache", "tmp"):
        (root / sub).mkdir()
    # The worker drops to 'nobody' when the master runs as root: it must write the cache.
    os.chmod(root, 0o755)
    for sub in ("cache", "tmp"):
        os.chmod(root / sub, 0o777)
    conf = root / "nginx.conf"
    conf.write_text(_CONF.format(
        root=root, port=port, upstream_port=upstream_port,
        user="user nobody nogroup;" if os.geteuid() == 0 else "",
        access_log=f"access_log {root}/access.log;" if access_log else "access_log off;",
    ))
    # -e: the error log before the config is read (else nginx opens /var/log/nginx).
    child = spawn("nginx", [which("nginx"), "-p", str(root), "-c", str(conf),
                            "-e", str(root / "error.log")])
    child.url = f"http://127.0.0.1:{port}"
    wait_http(child, child.url + "/healthz", timeout_s=15)
    return child


def worker_pids(master_pid: int) -> list[int]:
    """nginx's worker(s): children of the master."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in children]
