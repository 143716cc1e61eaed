"""A Prometheus process for a test: its own data folder and a free port on 127.0.0.1, a 1 s
scrape and rule-evaluation interval, and a small client for the HTTP API."""
from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, binary: Path, folder: Path, targets: dict[str, str],
                 rule_files: list[Path]):
        """targets: job name -> host:port to scrape."""
        self.folder = folder
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(path.resolve()) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        config_path = folder / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(binary), f"--config.file={config_path}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        self._wait_ready(timeout=30)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self.process.returncode}):\n"
                                      f"{self.log_tail()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {timeout}s:\n"
                                      f"{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params) -> dict:
        """The `data` of a successful API answer; PrometheusError with the error otherwise."""
        reply = self.client.get(f"/api/v1/{path}", params=params)
        body = reply.json()
        if reply.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {reply.status_code} "
                                  f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query at the current time: the result vector (or scalar as one item)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: expected an instant vector, got {data['resultType']}")
        return data["result"]

    def wait_for(self, what: str, condition, timeout: float = 30, interval: float = 0.2):
        """Polls condition() until it returns something truthy, and returns that."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"timed out after {timeout}s waiting for {what}; "
                                      f"prometheus log:\n{self.log_tail()}")
            time.sleep(interval)

    def rules_evaluated_since(self, since: float) -> bool:
        """Every rule of every group was evaluated after `since` (a time.time() value)."""
        groups = self.api("rules")["groups"]
        return bool(groups) and all(
            rule["health"] != "unknown" and _unix(rule["lastEvaluation"]) > since
            for group in groups for rule in group["rules"])

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


def values(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def finite(result: list[dict]) -> list[float]:
    return [v for v in values(result) if math.isfinite(v)]


def _unix(rfc3339: str) -> float:
    """Prometheus writes nanoseconds ("...T10:04:10.375123456Z"); datetime takes micro."""
    stamp, _, fraction = rfc3339.removesuffix("Z").partition(".")
    seconds = datetime.fromisoformat(stamp + "+00:00").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)
