"""A real S3-compatible server on 127.0.0.1 for tests: moto's server mode (`moto_server`), in its
own process, stopped by its pid.

pyarrow's S3 filesystem (the AWS SDK under it) reads the endpoint from `AWS_ENDPOINT_URL`, like
every AWS client: ftray has no endpoint setting of its own, and needs none. A process started with
`S3Server.env()` (an `ftray run`, and so the embedded Ray it starts and every Ray worker, which
inherit the environment) talks to this server for every `s3://` URI.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.ray_head import free_port

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str

    @classmethod
    def start(cls, log: Path) -> "S3Server":
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                                       stdout=out, stderr=subprocess.STDOUT)
        server = cls(process, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120  # a hang guard: it answers in about a second
        while True:
            try:
                urllib.request.urlopen(server.endpoint, timeout=5).close()
                return server
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"moto_server did not start:\n{log.read_text()}") from None
                time.sleep(0.3)

    def env(self) -> dict[str, str]:
        """The variables that point AWS clients (pyarrow's S3 filesystem) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self):
        """A pyarrow S3 filesystem on this server, set up explicitly (not through the environment)."""
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(endpoint_override=self.endpoint, access_key="testing", secret_key="testing",
                                 region="us-east-1", scheme="http", allow_bucket_creation=True)

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def process_env(server: S3Server, **extra: str) -> dict[str, str]:
    """Environment for an `ftray` subprocess: no inherited Ray address or AWS settings (a profile or
    endpoint of the machine's own), then this server's."""
    from tests.ray_head import client_env
    env = {k: v for k, v in client_env(**extra).items() if not k.startswith("AWS_")}
    return {**env, **server.env()}
