"""Fixtures shared by several test files."""

import functools
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N runs N worker processes: one torch thread each (and in the processes they start), so that N workers
    # on N cores do not oversubscribe them; every test that depends on a thread count sets its own
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def unused_port() -> int:
    """A localhost TCP port that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StaticServer:
    """A static file server for `root` on 127.0.0.1, recording the paths asked for: downloads without a network."""

    def __init__(self, root: Path, prefix: str = ""):
        self.root, self.requests = root, []
        root.mkdir(parents=True, exist_ok=True)
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve():
    """serve(root, prefix="") -> a StaticServer of `root` whose .url ends with `prefix`; stopped after the test."""
    servers = []

    def start(root: Path, prefix: str = "") -> StaticServer:
        servers.append(StaticServer(root, prefix))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# ----------------------------------------------------------------------------------------------------------------------
# the tiny training every test of fit uses


class TinyRun:
    """`tiny(folder, **overrides)` -> the TrainConfig of a tiny run in folder/run (or folder/NAME): resnet20 at widths
    8/16/32 on 8x8 synthetic images (`tiny.data`, 512 training images: 16 steps per epoch), one thread. A step takes
    milliseconds, yet it learns the synthetic classes. `tiny.settings` are its flags, for a run in a subprocess."""

    settings = dict(
        model="resnet20",
        model_kwargs={"widths": [8, 16, 32]},
        batch_size=32,
        lr=0.2,
        val_size=128,
        threads=1,
        progress=False,
    )

    @functools.cached_property
    def data(self):
        from reslab.data import synthetic_dataset

        return synthetic_dataset(num_train=640, num_test=200, image_size=8)

    def __call__(self, folder, **overrides):
        from reslab.config import TrainConfig

        # TrainConfig, not make_config: the default recipe's Fashion-MNIST size (24) is not these 8x8 images'
        return TrainConfig(**{**self.settings, "output": str(folder), "name": "run", **overrides})


@pytest.fixture(scope="session")
def tiny() -> TinyRun:
    return TinyRun()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models on a
    shared CPU gain nothing from more threads, only contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
