"""The Spark consumer as a subprocess (`python -m streaming`) on a test's topics, with its own checkpoint and UI
port, so it can be started, SIGKILLed (driver and JVM: its whole process group) and restarted like in production."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.kafka_support import LOG_DIR, ROOT, Topics, free_port


class SparkProcess:
    def __init__(self, topics: Topics, bootstrap: str, inference_url: str, checkpoint: Path, mode: str,
                 **env: str) -> None:
        self.log_path = LOG_DIR / f"test-spark-{topics.group}.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        scratch = checkpoint.parent / f"{checkpoint.name}-tmp"  # a SIGKILLed driver leaves its scratch: not in /tmp
        scratch.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **topics.env(),
            "INFERENCE_URL": inference_url,
            "STREAMING_INFERENCE": mode,
            "STREAMING_CHECKPOINT_DIR": str(checkpoint),
            "STREAMING_UI_PORT": str(free_port()),
            "STREAMING_DRIVER_MEMORY": "1g",
            "LOG_LEVEL": "INFO",
            "SPARK_LOCAL_DIRS": str(scratch),
            "TMPDIR": str(scratch),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, timeout_s: float = 180) -> SparkProcess:
        """Start and wait until the query runs (its `query_started` log line of this run)."""
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streaming"], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if '"event": "query_started"' in self.log():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"streaming exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.25)
        raise AssertionError(f"streaming query not started in {timeout_s}s:\n{self.tail()}")

    def log(self) -> str:
        """This run's log."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def progress_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if '"event": "progress"' in line]

    def kill(self) -> None:
        """SIGKILL of the driver and everything it started (the JVM, its Python workers)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout_s: float = 90) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # the JVM and Python workers of a stopped driver
                os.killpg(self.proc.pid, signal.SIGKILL)
