"""What every benchmark script shares: child processes stopped by PID, free ports,
readiness polling, system tools from Debian packages, wrk runs, RSS, statistics.

Nothing here imports pytest or the tests package: the benchmarks run from a plain
bootstrap (`bench/run.sh`) without the test fixtures.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
# Where the JSON results go: bench/results/, or BENCH_RESULTS_DIR (the smoke run
# writes elsewhere, so it never overwrites the figures of a real run).
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or REPO / "bench" / "results")
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable

# Every child we start, so an exception or Ctrl-C still stops them (by PID, never by name).
_CHILDREN: list[Child] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self in _CHILDREN:
            _CHILDREN.remove(self)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self in _CHILDREN:
            _CHILDREN.remove(self)


def _stop_all() -> None:
    for child in reversed(list(_CHILDREN)):
        try:
            child.stop(5)
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            log(f"stopping {child.name}: {exc!r}")


atexit.register(_stop_all)


def _on_signal(signum: int, frame: Any) -> None:
    _stop_all()
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def spawn(name: str, argv: list[str], *, env: dict[str, str] | None = None,
          cwd: Path = REPO) -> Child:
    """Start a child with its output in a temp log file (a pipe nobody reads would block it)."""
    fd, log_name = tempfile.mkstemp(prefix=f"ampgate-bench-{name}-", suffix=".log")
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=fd, stderr=fd,
                            stdin=subprocess.DEVNULL)
    os.close(fd)
    child = Child(name, proc, Path(log_name), env=full_env)
    _CHILDREN.append(child)
    return child


def wait_http(child: Child, url: str, *, timeout_s: float = 30.0,
              ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status in ok:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
            last = exc.code
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    child.kill()
    raise RuntimeError(f"{child.name} did not answer {url} within {timeout_s} s "
                       f"(last: {last}):\n{child.tail()}")


def start_service(command: str, env: dict[str, str], *, port: int | None = None,
                  ready_path: str = "/healthz", timeout_s: float = 30.0,
                  gc_freeze: bool = False) -> Child:
    """`python -m services <command>` on 127.0.0.1:<port>, returned once ready_path answers.
    gc_freeze: through bench/_gc_frozen.py (an experiment, see there)."""
    port = port or free_port()
    full_env = {"AMPGATE_LOG__FORMAT": "json", **env,
                "AMPGATE_HTTP__HOST": "127.0.0.1", "AMPGATE_HTTP__PORT": str(port)}
    module = "bench._gc_frozen" if gc_freeze else "services"
    child = spawn(command, [PYTHON, "-m", module, command], env=full_env)
    child.url = f"http://127.0.0.1:{port}"
    wait_http(child, child.url + ready_path, timeout_s=timeout_s)
    return child


def http_json(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
              timeout_s: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**({"Content-Type": "application/json"} if data else {}),
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw
    return status, parsed, hdrs


# ---------------------------------------------------------------- system tools


def ensure_debian_tools(binaries: dict[str, list[str]]) -> None:
    """binary -> Debian package alternatives; apt-get installs the missing ones (root only)."""
    missing = {b: pkgs for b, pkgs in binaries.items() if _which(b) is None}
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}; install as root: apt-get install -y "
                         + " ".join(p[0] for p in missing.values()))
    log(f"installing {', '.join(missing)} from Debian packages (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    for binary, packages in missing.items():
        for package in packages:
            done = subprocess.run(["apt-get", "install", "-y", "-qq", package],
                                  env=env, stdout=subprocess.DEVNULL, check=False)
            if done.returncode == 0 and _which(binary):
                break
        else:
            raise SystemExit(f"could not install {binary} (tried {', '.join(packages)})")


def _which(binary: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")


def which(binary: str) -> str:
    path = _which(binary)
    if path is None:
        raise SystemExit(f"{binary} not found")
    return path


# ---------------------------------------------------------------- wrk

# wrk's Lua done() hook hands us exact percentiles in microseconds; parsing its
# human-readable summary would round them ("1.23ms").
_WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + non-2xx/3xx

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_wrk(url: str, *, threads: int, connections: int, duration_s: float,
            headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA)
        script = f.name
    argv = [which("wrk"), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s", "--latency", "-s", script]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=duration_s + timeout_s + 30)
    finally:
        os.unlink(script)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    d = json.loads(line.removeprefix("WRKJSON "))
    duration = d["duration_us"] / 1e6
    return WrkResult(
        requests=d["requests"], duration_s=round(duration, 3),
        rps=round(d["requests"] / duration, 1),
        p50_ms=d["p50_us"] / 1000, p90_ms=d["p90_us"] / 1000, p99_ms=d["p99_us"] / 1000,
        max_ms=d["max_us"] / 1000,
        errors=d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"],
    )


# ---------------------------------------------------------------- process memory


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Peak VmRSS of a PID, sampled every interval on a thread while active."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak: float = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mib(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
            self._stop.wait(self.interval_s)


# ---------------------------------------------------------------- statistics


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def check(value: float, target: float, *, higher_is_better: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_1m": load_average()}


def load_average() -> float:
    """Other work on the machine skews every figure: recorded with the results."""
    return os.getloadavg()[0]


def warn_if_busy(threshold: float = 0.7) -> float:
    load = load_average()
    if load > threshold:
        log(f"warning: load average {load:.2f} before the benchmark: other processes compete "
            "for the CPUs; expect noisy absolute figures (ratios of interleaved runs hold better)")
    return load


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}")
    print(line)
    for i, row in enumerate(cells):
        print(" " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print(line)
    print(line)


# ---------------------------------------------------------------- Kafka


def start_broker(*, required: bool = False) -> tuple[str, Any]:
    """(bootstrap, broker handle or None): AMPGATE_TEST_KAFKA_BOOTSTRAP, a container or the
    tansu broker (services.devtools.local_kafka, DESIGN.md §10). Not required: a closed
    port, and the gateway serves with Kafka down (events wait in its outbox)."""
    try:
        from services.devtools.local_kafka import LocalKafka

        broker = LocalKafka.discover().start()
        return broker.bootstrap, broker
    except Exception as exc:
        if required:
            raise SystemExit(f"no Kafka broker: {exc}") from exc
        log(f"no Kafka broker ({exc!r}); the gateway runs with Kafka down")
        return f"127.0.0.1:{free_port()}", None


def stop_broker(broker: Any) -> None:
    if broker is not None and broker.owned:
        broker.stop()


# ---------------------------------------------------------------- smoke mode


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def have_tools(*binaries: str) -> bool:
    return all(_which(b) is not None for b in binaries)


def python_load(url: str, *, connections: int, duration_s: float,
                headers: dict[str, str] | None = None, max_requests: int = 20_000) -> WrkResult:
    """A tiny keep-alive load loop for `--smoke` when wrk is missing: `connections`
    aiohttp clients for at most duration_s and max_requests. Exercises the code path;
    its figures are not comparable to wrk's."""
    import asyncio

    import aiohttp

    async def run() -> WrkResult:
        latencies: list[float] = []
        errors = 0
        t0 = time.perf_counter()
        deadline = t0 + duration_s

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                s = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
                        if resp.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - s)

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session) for _ in range(connections)))
        elapsed = time.perf_counter() - t0
        ms = [v * 1000 for v in latencies]
        return WrkResult(requests=len(ms), duration_s=round(elapsed, 3),
                         rps=round(len(ms) / elapsed, 1), p50_ms=percentile(ms, 50),
                         p90_ms=percentile(ms, 90), p99_ms=percentile(ms, 99),
                         max_ms=max(ms) if ms else float("nan"), errors=errors)

    return asyncio.run(run())


def load(url: str, *, threads: int, connections: int, duration_s: float,
         headers: dict[str, str] | None = None) -> WrkResult:
    """wrk when installed, else (smoke only: callers decide) the Python loop."""
    if have_tools("wrk"):
        return run_wrk(url, threads=threads, connections=connections, duration_s=duration_s,
                       headers=headers)
    return python_load(url, connections=min(connections, 8), duration_s=duration_s,
                       headers=headers)


def run_module(module: str, args: list[str], *, timeout_s: float) -> int:
    """One benchmark script as a child (python -m bench.<module>), output passed through."""
    log(f"running bench.{module} {' '.join(args)}")
    proc = subprocess.Popen([PYTHON, "-m", f"bench.{module}", *args], cwd=REPO)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log(f"bench.{module} over {timeout_s:.0f} s: stopped")
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return -1
    except BaseException:
        proc.terminate()
        proc.wait(15)
        raise


def read_results(name: str, where: Path = RESULTS) -> dict[str, Any] | None:
    path = where / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
