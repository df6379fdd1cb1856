"""Issue 30's judge cases: replies in another format, a reply that drips, a null response.

Independent expectations: a server written here that answers raw bytes (not UTF-8, JSON that is not
Ollama's chat format, one byte at a time), and the requests it receives counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from gpt_lab.run.job import run_task


def _raw_server(body: bytes, drip: float = 0.0, asked: list[bytes] | None = None):  # type: ignore[no-untyped-def]
    """A server answering every POST with ``body`` as it is (``drip``: one byte per that many seconds);
    the requests' bodies go to ``asked``."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = self.rfile.read(int(self.headers["Content-Length"]))
            if asked is not None:
                asked.append(request)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)) if drip else [None]:
                self.wfile.write(body if i is None else body[i : i + 1])
                self.wfile.flush()
                time.sleep(drip)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe85", r"not UTF-8 text"),
        (b'{"message": "85"}\n', r"no message.content string"),
        (b'{"message": {"role": "assistant", "content": 85}}\n', r"no message.content string"),
    ],
)
def test_case_10_judge_replies_in_another_format_are_one_paragraph(body: bytes, message: str) -> None:
    from gpt_lab.tasks.judge import JudgeError, query_model

    server, url = _raw_server(body)
    try:
        with pytest.raises(JudgeError, match=message):
            query_model("score this", url=url, timeout=10)
    finally:
        server.shutdown()


def test_case_11_judge_timeout_bounds_a_dripping_reply() -> None:
    import time

    from gpt_lab.tasks.judge import JudgeError, query_model

    reply = b'{"message": {"role": "assistant", "content": "85"}, "done": true}\n'
    server, url = _raw_server(reply, drip=0.1)  # about 6.5 s for the whole reply
    started = time.monotonic()
    try:
        with pytest.raises(JudgeError, match=r"longer than judge.timeout=1 seconds"):
            query_model("score this", url=url, timeout=1)
    finally:
        server.shutdown()
    assert time.monotonic() - started < 3


def test_case_11_a_null_response_is_left_unscored_not_sent_as_none(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    entries = [
        {"instruction": "Say 1", "input": "", "output": "1", "model_response": None},
        {"instruction": "Say 2", "input": "", "output": "2", "model_response": "2"},
    ]
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(entries), encoding="utf-8")
    asked: list[bytes] = []
    server, url = _raw_server(b'{"message": {"role": "assistant", "content": "85"}, "done": true}\n', asked=asked)
    try:
        got = run_task(
            compose_config("task=judge", f"judge.responses={responses}", f"judge.url={url}", run_dir=tmp_path / "j")
        )
    finally:
        server.shutdown()
    assert got["scores"] == [None, 85] and got["average_score"] == 85
    assert len(asked) == 1 and b"None" not in asked[0]  # only the entry with a response was sent
