"""task=judge (issue 19) against a small Ollama-style server on the loopback address, started by the tests."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from gpt_lab.errors import UserError
from gpt_lab.run.job import run_task

ENTRIES = [
    {"instruction": "Name the plural of cat.", "input": "", "output": "Cats.", "model_response": "Cats."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "model_response": "6"},
    {"instruction": "Say hi.", "input": "", "output": "Hi.", "model_response": "Hello."},
]


class FakeOllama:
    """Answers POST /api/chat with the next scripted reply, streamed as Ollama does (one JSON object per line).

    A reply of None closes the connection without an answer (a server that died).
    """

    def __init__(self, replies: list[str | None], stream: bool = True) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, **body})
                reply = fake.replies.pop(0)
                if reply is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                half = len(reply) // 2 if stream else len(reply)  # not streamed: one object holds it all
                lines = [
                    {"model": body["model"], "message": {"role": "assistant", "content": reply[:half]}, "done": False},
                    {"model": body["model"], "message": {"role": "assistant", "content": reply[half:]}, "done": True},
                ][: 2 if stream else 1]
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ollama() -> Iterator[Callable[[list[str | None]], FakeOllama]]:
    started: list[FakeOllama] = []

    def start(replies: list[str | None], stream: bool = True) -> FakeOllama:
        started.append(FakeOllama(replies, stream))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def responses(tmp_path: Path) -> Path:
    path = tmp_path / "test-responses.json"
    path.write_text(json.dumps(ENTRIES), encoding="utf-8")
    return path


def _judge(compose_config: Callable[..., DictConfig], out: Path, *overrides: str) -> dict[str, Any]:
    return run_task(compose_config("task=judge", *overrides, run_dir=out))


def test_judge_asks_the_books_prompt_and_writes_scores_and_average(
    compose_config: Callable[..., DictConfig], ollama: Callable[..., FakeOllama], responses: Path, tmp_path: Path
) -> None:
    server = ollama(["85", " 40\n", "60"])
    out = tmp_path / "judge"
    results = _judge(compose_config, out, f"judge.url={server.url}", f"judge.responses={responses.parent}")
    assert results["scores"] == [85, 40, 60]
    assert results["average_score"] == pytest.approx((85 + 40 + 60) / 3)
    assert (results["scored"], results["unscored"]) == (3, 0)
    written = json.loads((out / "judge-scores.json").read_text())
    assert [e["score"] for e in written] == [85, 40, 60] and written[1]["model_response"] == "6"
    first = server.requests[1]
    assert first["path"] == "/api/chat" and first["model"] == "llama3"
    assert first["options"] == {"seed": 123, "temperature": 0.0, "num_ctx": 2048}
    # The book's prompt, written out, with the Alpaca input.
    expected = (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3` "
        "and correct output `5`, score the model response `6` on a scale from 0 to 100, where 100 is the best "
        "score. Respond with the integer number only."
    )
    assert first["messages"] == [{"role": "user", "content": expected}]


def test_a_non_integer_reply_leaves_that_entry_unscored(
    compose_config: Callable[..., DictConfig], ollama: Callable[..., FakeOllama], responses: Path, tmp_path: Path
) -> None:
    server = ollama(["90", "I would say about 70 out of 100.", "50"])
    results = _judge(compose_config, tmp_path / "judge", f"judge.url={server.url}", f"judge.responses={responses}")
    assert results["scores"] == [90, None, 50]
    assert results["average_score"] == pytest.approx(70.0)
    assert (results["scored"], results["unscored"]) == (2, 1)
    written = json.loads((tmp_path / "judge" / "judge-scores.json").read_text())
    assert written[1]["judge_reply"] == "I would say about 70 out of 100."


def test_a_server_that_dies_midway_keeps_the_scored_entries(
    compose_config: Callable[..., DictConfig], ollama: Callable[..., FakeOllama], responses: Path, tmp_path: Path
) -> None:
    server = ollama(["75", "20", None])
    out = tmp_path / "judge"
    with pytest.raises(UserError, match=r"cannot reach the judging server.*at entry 2 of 3; the 2 entries scored"):
        _judge(compose_config, out, f"judge.url={server.url}", f"judge.responses={responses}")
    assert [e["score"] for e in json.loads((out / "judge-scores.json").read_text())] == [75, 20]
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


def test_an_unreachable_server_is_one_paragraph_and_exit_2(
    run_cli: Callable[..., Any], responses: Path, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_cli("task=judge", f"judge.url=http://127.0.0.1:{port}", f"judge.responses={responses}")
    assert done.returncode == 2
    assert "cannot reach the judging server" in done.stderr and "ollama serve" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_responses_file_without_responses_names_the_entry(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps([ENTRIES[0], {"instruction": "x", "output": "y"}]), encoding="utf-8")
    with pytest.raises(UserError, match=r"entry 1 \(counting from 0\) has no model_response"):
        _judge(compose_config, tmp_path / "judge", f"judge.responses={path}")


def test_a_reply_that_is_not_streamed_is_read_too(
    compose_config: Callable[..., DictConfig], ollama: Callable[..., FakeOllama], responses: Path, tmp_path: Path
) -> None:
    server = ollama(["100", "0", "55"], stream=False)
    results = _judge(compose_config, tmp_path / "judge", f"judge.url={server.url}", f"judge.responses={responses}")
    assert results["scores"] == [100, 0, 55]


def test_a_judge_run_resumes_in_place_keeping_its_scores(
    compose_config: Callable[..., DictConfig], ollama: Callable[..., FakeOllama], responses: Path, tmp_path: Path
) -> None:
    """Issue 30 case 12: the re-run once scored from entry 0 in a new directory. ckpt_path=last with the run's
    directory keeps entries 0 and 1 as they were and asks the judge about entry 2 only."""
    out = tmp_path / "judge"
    dying = ollama(["75", "20", None])
    with pytest.raises(UserError, match=rf"hydra.run.dir={out} ckpt_path=last continues from entry 2"):
        _judge(compose_config, out, f"judge.url={dying.url}", f"judge.responses={responses}")
    server = ollama(["55"])
    results = _judge(compose_config, out, f"judge.url={server.url}", f"judge.responses={responses}", "ckpt_path=last")
    assert results["scores"] == [75, 20, 55]
    assert results["average_score"] == pytest.approx((75 + 20 + 55) / 3)
    assert (
        len(server.requests) == 1
        and "score the model response `Hello.`" in server.requests[0]["messages"][0]["content"]
    )
    written = json.loads((out / "judge-scores.json").read_text())
    assert [{k: v for k, v in e.items() if k not in ("score", "judge_reply")} for e in written] == ENTRIES
    # Done: a resume asks nothing more; another responses file is refused, the scores left as they are.
    assert _judge(compose_config, out, f"judge.url={server.url}", f"judge.responses={responses}", "ckpt_path=last")[
        "scores"
    ] == [75, 20, 55]
    other = tmp_path / "other.json"
    other.write_text(json.dumps([ENTRIES[1], ENTRIES[0], ENTRIES[2]]), encoding="utf-8")
    with pytest.raises(UserError, match=r"entry 0 of .*judge-scores.json is not entry 0 of judge.responses="):
        _judge(compose_config, out, f"judge.url={server.url}", f"judge.responses={other}", "ckpt_path=last")
    assert json.loads((out / "judge-scores.json").read_text()) == written
    assert len(server.requests) == 1


def test_judge_takes_ckpt_path_last_only(compose_config: Callable[..., DictConfig], responses: Path) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ckpt_path=a.ckpt: task=judge resumes with ckpt_path=last only"):
        validate_config(compose_config("task=judge", f"judge.responses={responses}", "ckpt_path=a.ckpt"))
