"""task=judge: a larger model scores each response from 0 to 100 (chapter 7's evaluation).

The judge is any server that speaks Ollama's ``/api/chat`` (Ollama itself, or a proxy): one
request per entry with the book's prompt and options (``seed`` 123, ``temperature`` 0,
``num_ctx`` 2048), the reply read whether it streams (one JSON object per line) or not. Scores are
written to ``judge-scores.json`` in the run directory after every entry, so the entries scored
before a server dies are kept; an unreachable server is one paragraph, not a traceback. A reply
that is not an integer from 0 to 100 leaves that entry unscored (``score`` null, the reply kept),
as the book skips it, and the run goes on; the average is over the scored entries.

``ckpt_path=last`` with the run's ``hydra.run.dir`` resumes a judge run in place: the entries of
its ``judge-scores.json`` are kept (checked against the responses file, entry by entry) and
scoring goes on from the first entry that has no record there.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.generation.prompt_styles import format_prompt, get_prompt_style
from gpt_lab.generation.responses import RESPONSES_FILE  # what a chapter-7 training run writes
from gpt_lab.run.previous import begin_changes
from gpt_lab.storage import write_text_atomic

log = logging.getLogger(__name__)

SCORES_FILE = "judge-scores.json"
CHAT_PATH = "/api/chat"
JUDGE_FIELDS = ("score", "judge_reply")  # what scoring adds to an entry of the responses file


class JudgeError(UserError):
    """The responses file is unusable, or the judging server cannot be reached or answers nonsense."""


def judge_prompt(entry: Mapping[str, Any], response: str, style: str = "alpaca") -> str:
    """The book's scoring prompt for one entry (its input shown in ``style``, the book's Alpaca by default)."""
    return (
        f"Given the input `{format_prompt(entry, style)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{response}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def query_model(
    prompt: str,
    model: str = "llama3",
    url: str = "http://localhost:11434",
    seed: int = 123,
    temperature: float = 0.0,
    num_ctx: int = 2048,
    timeout: float = 300.0,
) -> str:
    """The judging model's reply to ``prompt`` through ``url``'s ``/api/chat`` (streamed or not)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": seed, "temperature": temperature, "num_ctx": num_ctx},
    }
    endpoint = url.rstrip("/") + CHAT_PATH
    request = urllib.request.Request(
        endpoint, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            raw = _read_within(reply, timeout, url)
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace").strip()[:300]
        raise JudgeError(
            f"judge.url={url}: {endpoint} answered HTTP {err.code} ({detail or err.reason}); check judge.model={model} "
            f"is available there (ollama pull {model})"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise JudgeError(
            f"judge.url={url}: cannot reach the judging server ({reason}); start it (ollama serve, then "
            f"ollama pull {model}) or point judge.url at one"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JudgeError(
            f"judge.url={url}: {endpoint} answered bytes that are not UTF-8 text ({err.reason} at byte {err.start}); "
            "Ollama's chat format is UTF-8 JSON: point judge.url at an Ollama-compatible server"
        ) from None
    content = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            raise JudgeError(
                f"judge.url={url}: {endpoint} did not answer in Ollama's chat format (not JSON: {line[:200]!r})"
            ) from None
        if isinstance(message, dict) and message.get("error"):
            raise JudgeError(f"judge.url={url}: the server reports an error: {message['error']}")
        inner = message.get("message") if isinstance(message, dict) else None
        part = inner.get("content") if isinstance(inner, dict) else None
        if not isinstance(part, str):
            raise JudgeError(
                f"judge.url={url}: {endpoint} did not answer in Ollama's chat format (no message.content string "
                f"in {line[:200]!r})"
            )
        content.append(part)
    return "".join(content)


def _read_within(reply: Any, timeout: float, url: str) -> bytes:
    """The whole body of ``reply``, or a ``JudgeError`` once ``timeout`` seconds have passed in all.

    The socket's own timeout bounds each read only: a server that sends a byte now and then would
    otherwise hold the run for as long as it likes.
    """
    deadline = time.monotonic() + timeout
    chunks = []
    while chunk := reply.read1(65536):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise JudgeError(
                f"judge.url={url}: the reply took longer than judge.timeout={timeout:g} seconds to arrive; raise "
                "judge.timeout, or check the server"
            )
    return b"".join(chunks)


def parse_score(reply: str) -> int | None:
    """The integer score of a reply ("85", " 85\\n"), or None when it is not an integer from 0 to 100."""
    try:
        score = int(reply.strip())
    except ValueError:
        return None
    return score if 0 <= score <= 100 else None


def read_responses(path: Path, response_key: str) -> list[dict[str, Any]]:
    """The entries of a responses file (a JSON list), each with instruction, output and ``response_key``."""
    if path.is_dir():
        path = path / RESPONSES_FILE
    if not path.is_file():
        raise JudgeError(
            f"judge.responses={path} does not exist; give a responses file (the {RESPONSES_FILE} of an "
            "experiment=ch07 run) or the run directory holding one"
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise JudgeError(f"judge.responses={path} is not a readable JSON file ({err})") from None
    if not isinstance(entries, list) or not entries:
        raise JudgeError(f"judge.responses={path} must hold a non-empty JSON list of entries")
    for index, entry in enumerate(entries):
        missing = [k for k in ("instruction", "output", response_key) if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise JudgeError(
                f"judge.responses={path}: entry {index} (counting from 0) has no {', '.join(missing)}; each entry "
                f"needs instruction, output and the response under judge.response_key={response_key}"
            )
    return entries


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score every entry of ``judge.responses``; write judge-scores.json; return the average and counts."""
    from tqdm.auto import tqdm

    j = cfg.judge
    if not j.responses:
        raise JudgeError(
            "task=judge needs responses to score: judge.responses=outputs/<run>/test-responses.json (or the run "
            "directory)"
        )
    style = get_prompt_style(j.prompt_style, key="judge.prompt_style").name
    source = input_path(cfg, j.responses)
    entries = read_responses(source, j.response_key)
    out_path = Path(cfg.paths.output_dir) / SCORES_FILE
    scored: list[dict[str, Any]] = kept_scores(out_path, entries, source) if cfg.get("ckpt_path") == "last" else []
    begin_changes(cfg.paths.output_dir)  # every check passed: from here on this run may change its directory

    def write() -> None:
        write_text_atomic(out_path, json.dumps(scored, indent=4, ensure_ascii=False) + "\n")

    progress = tqdm(
        entries[len(scored) :], desc="Scoring entries", unit="entry", initial=len(scored), total=len(entries)
    )
    for index, entry in enumerate(progress, start=len(scored)):
        response = entry[j.response_key]
        if not isinstance(response, str):  # null: no response to score (never sent as the text "None")
            log.warning("Entry %d: %s is %r, not a text: left unscored", index, j.response_key, response)
            scored.append({**entry, "score": None, "judge_reply": None})
            write()
            continue
        prompt = judge_prompt(entry, response, style)
        try:
            reply = query_model(prompt, j.model, j.url, j.seed, j.temperature, j.num_ctx, j.timeout)
        except JudgeError as err:
            kept = f"; the {len(scored)} entries scored before it are in {out_path}" if scored else ""
            again = (
                f"; the same command with hydra.run.dir={out_path.parent} ckpt_path=last continues from entry {index}"
            )
            raise JudgeError(f"{err} (at entry {index} of {len(entries)}{kept}{again})") from None
        score = parse_score(reply)
        if score is None:
            log.warning("Entry %d: the judge's reply is not an integer from 0 to 100: %r (left unscored)", index, reply)
        scored.append({**entry, "score": score, "judge_reply": reply})
        write()
    scores = [e["score"] for e in scored if e["score"] is not None]
    average = sum(scores) / len(scores) if scores else None
    if average is not None:
        log.info("Number of scores: %d of %d; average score: %.2f", len(scores), len(entries), average)
    else:
        log.warning("No reply was an integer score: no average")
    return {
        "responses": str(source),
        "model": j.model,  # the run's model is the judging one (results.json, the run directory's name)
        "judge_model": j.model,
        "judge_url": j.url,
        "scores_file": str(out_path),
        "scores": [e["score"] for e in scored],
        "scored": len(scores),
        "unscored": len(entries) - len(scores),
        "average_score": average,
    }


def kept_scores(path: Path, entries: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """The records of a judge run resumed in place (``ckpt_path=last``): its ``judge-scores.json``, each
    record the responses file's entry at the same place plus its score. None yet: start at entry 0."""
    if not path.is_file():
        log.info("ckpt_path=last: %s holds no %s yet; scoring from entry 0", path.parent, SCORES_FILE)
        return []
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise JudgeError(f"ckpt_path=last: {path} is not a readable JSON file ({err}); start a new run") from None
    if not isinstance(kept, list) or len(kept) > len(entries):
        raise JudgeError(
            f"ckpt_path=last: {path} is not the scores of judge.responses={source} (a list of at most "
            f"{len(entries)} entries); resume with the responses it scored, or start a new run"
        )
    for index, (record, entry) in enumerate(zip(kept, entries, strict=False)):
        if not isinstance(record, dict) or {k: v for k, v in record.items() if k not in JUDGE_FIELDS} != entry:
            raise JudgeError(
                f"ckpt_path=last: entry {index} of {path} is not entry {index} of judge.responses={source} (the "
                "responses changed since it was scored); resume with the responses it scored, or start a new run"
            )
    log.info("ckpt_path=last: keeping the %d entries of %s; scoring from entry %d", len(kept), path, len(kept))
    return kept
