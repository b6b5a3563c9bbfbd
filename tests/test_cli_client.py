"""`videogpt-serve generate` says in one line what failed and what to check (exit code 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from service_stack import REPO, free_port


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "generate", *args, "-o", "/dev/null"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_an_unreachable_gateway_is_one_line_with_what_to_check():
    line = one_error_line(generate("--url", f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach the gateway" in line and "is it running" in line and "--url" in line


def test_a_url_without_a_scheme_is_one_line():
    line = one_error_line(generate("--url", "localhost:8000"))
    assert "localhost:8000" in line


class NotAGateway(BaseHTTPRequestHandler):
    """A web server that is not videogpt-serve: HTML to everything."""

    def do_POST(self):
        body = b"<html>hello</html>"
        self.send_response(202)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_another_server_at_the_url_is_one_line(other_server):
    line = one_error_line(generate("--url", other_server))
    assert "is --url a videogpt-serve gateway" in line
