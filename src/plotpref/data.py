"""Preference data: files and datasets -> :class:`PreferenceExample` -> tokenised rows -> batches.

Three steps, each usable on its own:

1. :func:`load_preference_data` reads a file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, each
   optionally ``.gz``), a built-in name (:data:`BUILTIN_DATASETS`) or a ``datasets`` hub name, and
   returns a list of :class:`PreferenceExample` (responses best-first). Layouts, detected from the
   first record's fields:

   ``pairwise``
       ``prompt`` (or ``instruction``) + ``chosen`` + ``rejected``. Strings are TRL's *standard*
       format; lists of ``{"role", "content"}`` messages are its *conversational* format (prompt as
       messages, chosen/rejected as assistant message lists). A string prompt and message responses
       may be mixed.
   ``implicit``
       ``chosen`` + ``rejected`` only. Either full conversations (message lists) sharing the prompt,
       which is their longest common message prefix, or HH-RLHF transcripts
       (``"\\n\\nHuman: … \\n\\nAssistant: …"``), split at the **last** ``"\\n\\nAssistant:"`` (the
       separator stays in the prompt). A transcript prompt is converted into user/assistant chat
       messages so that the model's chat template applies; whitespace around each turn, including
       the response's leading space, is stripped.
   ``ranked``
       ``prompt`` (or ``instruction``) + ``responses`` (strings or message lists) and optionally
       rewards: a ``rewards`` or ``scores`` field, or one field named ``rewards_*``/``scores_*``
       (e.g. Magpie's ``rewards_armorm``, whose entries may be ``{"score": x}``). With rewards the
       responses are sorted by reward, best first; without, the file's order is taken as best-first.
       Duplicate responses are dropped, keeping the best-ranked copy. Used by PRO.

   Documented skips, counted and logged (never errors): a response that is empty or only whitespace,
   chosen identical to rejected (ranked: fewer than two distinct responses), and an implicit pair
   whose two sides do not share a prompt (5 of the 2,312 pairs of HH-RLHF harmless-base test:
   lines 1255, 1689, 1951, 1953, 2037; the transcripts diverge before the last Assistant turn, so
   there is no common prompt to condition on). Anything else that is wrong with the input (a
   malformed line, a missing or mistyped field, a non-UTF-8 file, an empty file, a file where no
   row survives, an unknown format) raises :class:`~plotpref.errors.PlotprefError` naming the file
   and line.

2. :func:`tokenize_example` renders the prompt and each response with the tokenizer's chat template
   (see its docstring for the boundary and truncation policies) and labels the response tokens.

3. :class:`PreferenceCollator` pads tokenised rows into one response-major batch.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plotpref.errors import PlotprefError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

Messages = list[dict[str, str]]

#: Built-in data sets: name -> (bundled file, (first line, last line)), lines 1-based inclusive.
#: HH-RLHF's harmless-base *train* split is not available offline; its *test* file is split
#: deterministically instead (lines 1-500 evaluation, 501-2312 training). Results trained on
#: "hh-harmless-train" therefore deviate from the paper's data, which must be said where reported.
BUILTIN_DATASETS: dict[str, tuple[str, tuple[int, int]]] = {
    "hh-harmless-train": ("hh_rlhf/harmless-base_test.jsonl.gz", (501, 2312)),
    "hh-harmless-eval": ("hh_rlhf/harmless-base_test.jsonl.gz", (1, 500)),
    "hh-helpful-eval": ("hh_rlhf/helpful-base_test.jsonl.gz", (1, 500)),
}

#: File formats accepted by ``format=``; "auto" picks one from the file name's extension.
FILE_FORMATS = ("auto", "jsonl", "json", "csv", "parquet")

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_PROMPT_FIELDS = ("prompt", "instruction")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")

SKIP_REASONS = {
    "empty_response": "a response is empty or only whitespace",
    "identical": "chosen identical to rejected (ranked: fewer than two distinct responses)",
    "prompt_not_shared": "chosen and rejected do not share a prompt",
}


@dataclass
class PreferenceExample:
    """One prompt with two or more responses, best first.

    ``prompt`` is a plain string or a list of ``{"role", "content"}`` messages; each response is a
    string (the assistant's reply) or a list of messages that continue the prompt. For a pair,
    ``responses[0]`` is chosen and ``responses[1]`` rejected. ``rewards`` (same length as
    ``responses``, non-increasing) is given for ranked data with scores. ``source`` is
    ``"file:line"``, used in messages.
    """

    prompt: str | Messages
    responses: list[str | Messages]
    rewards: list[float] | None = None
    source: str = ""

    @property
    def chosen(self) -> str | Messages:
        return self.responses[0]

    @property
    def rejected(self) -> str | Messages:
        return self.responses[1]


class PreferenceData(list):
    """The list of examples returned by :func:`load_preference_data`, with where it came from.

    Attributes: ``source`` (as given), ``layout`` (pairwise/implicit/ranked), ``fingerprint``
    (sha256 of the file's bytes, the line range and the format; see :func:`dataset_fingerprint`),
    ``skipped`` (a Counter of skip reasons, keys of :data:`SKIP_REASONS`).
    """

    def __init__(self, examples: Iterable[PreferenceExample] = (), *, source: str = "", layout: str = "",
                 fingerprint: str = "", skipped: Counter | None = None):
        super().__init__(examples)
        self.source = source
        self.layout = layout
        self.fingerprint = fingerprint
        self.skipped = Counter() if skipped is None else skipped


# --------------------------------------------------------------------------------------------
# Reading records with their line numbers
# --------------------------------------------------------------------------------------------


def _resolve_source(source: str | os.PathLike, lines: tuple[int, int] | None) -> tuple[str, Path | None, str, tuple[int, int] | None]:
    """(display name, path or None for a hub name, hub name, lines) for a source argument."""
    text = str(source)
    if text in BUILTIN_DATASETS:
        from plotpref.assets import asset_path

        relative, (first, last) = BUILTIN_DATASETS[text]
        if lines is not None:
            if not (first <= lines[0] <= lines[1] <= last):
                raise PlotprefError(
                    f"lines {lines[0]}-{lines[1]} are outside {text!r}, which is lines {first}-{last} of {relative}: "
                    f"pass lines within that range, or the file itself ({asset_path(relative)}) to choose any lines"
                )
            first, last = lines
        return relative, asset_path(relative), "", (first, last)
    path = Path(os.path.expanduser(text))
    if path.exists():
        if path.is_dir():
            raise PlotprefError(f"{text} is a folder: pass a .jsonl/.json/.csv/.parquet file (optionally .gz)")
        return text, path, "", lines
    suffixes = [s.lower() for s in path.suffixes]
    looks_like_file = any(s in _EXTENSIONS or s == ".gz" for s in suffixes[-2:]) or text.startswith((".", "/", "~"))
    if looks_like_file or not _HUB_NAME.match(text):
        raise PlotprefError(
            f"data file {text} does not exist: pass an existing .jsonl/.json/.csv/.parquet file, a built-in name "
            f"({', '.join(BUILTIN_DATASETS)}) or a datasets hub name (NAME or NAME:SPLIT)"
        )
    return text, None, text, lines


def _file_format(path: Path, format: str) -> tuple[str, bool]:
    """(format, gzipped) for a path and a ``format`` argument."""
    if format not in FILE_FORMATS:
        raise PlotprefError(f"unknown data format {format!r}: use one of {', '.join(FILE_FORMATS)}")
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if format != "auto":
        return format, gzipped
    ext = suffixes[-2] if gzipped and len(suffixes) > 1 else (suffixes[-1] if suffixes and not gzipped else "")
    if ext not in _EXTENSIONS:
        raise PlotprefError(
            f"cannot tell the format of {path} from its extension {ext or '(none)'!r}: name it .jsonl, .json, .csv or "
            f".parquet (optionally .gz), or pass format= one of {', '.join(FILE_FORMATS[1:])}"
        )
    return _EXTENSIONS[ext], gzipped


def _uncompressed(raw: bytes, gzipped: bool, name: str) -> bytes:
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise PlotprefError(f"{name}: not a valid gzip file ({exc}); remove the .gz suffix if it is not compressed") from exc
    return raw


def _decode(raw: bytes, name: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PlotprefError(
            f"{name}:{line}: the file is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}): re-encode it as UTF-8"
        ) from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise PlotprefError(f"{name}: the file is empty")
    return text


def _in_range(line: int, lines: tuple[int, int] | None) -> bool:
    return lines is None or lines[0] <= line <= lines[1]


def _jsonl_records(text: str, name: str, lines: tuple[int, int] | None) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if lines is not None and number > lines[1]:
            break
        if not _in_range(number, lines) or not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlotprefError(
                f"{name}:{number}: malformed JSON ({exc.msg} at column {exc.colno}): each line of a .jsonl file must be one JSON object"
            ) from exc


def _json_records(text: str, name: str, lines: tuple[int, int] | None) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    if text[pos] != "[":
        raise PlotprefError(
            f"{name}:{text.count(chr(10), 0, pos) + 1}: a .json data file must hold a list of objects "
            "([{...}, {...}]); for one object per line name the file .jsonl"
        )
    line, counted_to = 1, 0
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise PlotprefError(f"{name}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
        if _in_range(line, lines):
            yield line, value
        pos = ws.match(text, pos).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return
        else:
            bad = text.count("\n", 0, pos) + 1
            raise PlotprefError(f"{name}:{bad}: malformed JSON (expected ',' or ']' after a list element)")


def _csv_cell(value: str | None) -> Any:
    """CSV cells are strings; a cell holding a JSON list (messages, responses, rewards) is decoded."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _csv_records(text: str, name: str, lines: tuple[int, int] | None) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2  # line 1 is the header
    try:
        for row in reader:
            if _in_range(start, lines):
                if None in row:
                    raise PlotprefError(f"{name}:{start}: the row has more cells than the header has columns")
                yield start, {key: _csv_cell(value) for key, value in row.items()}
            start = reader.line_num + 1
    except csv.Error as exc:
        raise PlotprefError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from exc


def _parquet_records(raw: bytes, name: str, lines: tuple[int, int] | None) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq  # a dependency of `datasets`

    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise PlotprefError(f"{name}: not a readable Parquet file ({exc})") from exc
    if table.num_rows == 0:
        raise PlotprefError(f"{name}: the file is empty (0 rows)")
    for number, row in enumerate(table.to_pylist(), start=1):
        if _in_range(number, lines):
            yield number, row


def _hub_records(name: str, lines: tuple[int, int] | None) -> tuple[Iterator[tuple[int, Any]], str]:
    import datasets

    repo, _, split = name.partition(":")
    try:
        dataset = datasets.load_dataset(repo, split=split or "train")
    except Exception as exc:  # offline, unknown name, unknown split: datasets raises many types
        raise PlotprefError(f"could not load the datasets hub name {name!r} ({type(exc).__name__}: {exc})") from exc
    fingerprint = getattr(dataset, "_fingerprint", "") or ""
    records = ((i, row) for i, row in enumerate(dataset, start=1) if _in_range(i, lines))
    return records, fingerprint


def dataset_fingerprint(source: str | os.PathLike, *, lines: tuple[int, int] | None = None, format: str = "auto") -> str:
    """sha256 identifying a data source: the file's bytes, the line range and the format.

    For a hub name, the name, the range and ``datasets``' own fingerprint (this loads the data set).
    """
    name, path, hub, lines = _resolve_source(source, _check_lines(lines))
    digest = hashlib.sha256()
    if path is not None:
        digest.update(path.read_bytes())
    else:
        digest.update(_hub_records(hub, lines)[1].encode())
        digest.update(hub.encode())
    digest.update(json.dumps({"lines": list(lines) if lines else None, "format": format}).encode())
    return digest.hexdigest()


def _check_lines(lines: tuple[int, int] | None) -> tuple[int, int] | None:
    if lines is None:
        return None
    if len(lines) != 2 or not all(isinstance(x, int) for x in lines) or not 1 <= lines[0] <= lines[1]:
        raise PlotprefError(f"lines must be (first, last), 1-based and inclusive with first <= last; got {lines!r}")
    return (lines[0], lines[1])


# --------------------------------------------------------------------------------------------
# Records -> PreferenceExample
# --------------------------------------------------------------------------------------------


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


_LAYOUT_FIELDS = {
    "pairwise": "prompt (or instruction), chosen, rejected",
    "implicit": "chosen, rejected (HH-RLHF transcripts or full conversations)",
    "ranked": "prompt (or instruction), responses, and optionally rewards/scores",
}


def _detect_layout(record: dict, where: str) -> str:
    keys = set(record)
    if "responses" in keys:
        return "ranked"
    if {"chosen", "rejected"} <= keys:
        return "pairwise" if keys & set(_PROMPT_FIELDS) else "implicit"
    raise PlotprefError(
        f"{where}: cannot tell the data layout from the fields {sorted(keys)}: expected one of "
        + "; ".join(f"{layout}: {fields}" for layout, fields in _LAYOUT_FIELDS.items())
    )


def _field(record: dict, names: Sequence[str], where: str, layout: str) -> Any:
    for name in names:
        if name in record and record[name] is not None:
            return record[name]
    raise PlotprefError(
        f"{where}: missing field {' or '.join(repr(n) for n in names)} (detected layout {layout!r} from the first "
        f"record, which expects {_LAYOUT_FIELDS[layout]}; this record has {sorted(record)})"
    )


def _messages(value: Any, where: str, field: str) -> Messages:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise PlotprefError(
            f"{where}: field {field!r} must be a string or a list of {{'role': str, 'content': str}} messages; got {_preview(value)}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text_or_messages(value: Any, where: str, field: str) -> str | Messages:
    return value if isinstance(value, str) else _messages(value, where, field)


def _is_empty(response: str | Messages) -> bool:
    if isinstance(response, str):
        return not response.strip()
    return not any(m["content"].strip() for m in response)


def _response(value: Any, where: str, field: str) -> str | Messages:
    response = _text_or_messages(value, where, field)
    if _is_empty(response):
        raise _Skip("empty_response")
    if isinstance(response, list) and response[0]["role"] != "assistant":
        raise PlotprefError(f"{where}: field {field!r} must start with an assistant message; it starts with role {response[0]['role']!r}")
    return response


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hh_transcript_to_messages(transcript: str) -> Messages:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> ``[{"role": "user", ...}, {"role": "assistant", ...}]``.

    Turn text is stripped; text before the first turn marker, if any, becomes a system message. A
    trailing empty Assistant turn (the generation prompt left by the split) is dropped.
    """
    parts = _HH_TURN.split(transcript)
    messages: Messages = []
    if parts[0].strip():
        messages.append({"role": "system", "content": parts[0].strip()})
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """Split an HH-RLHF transcript at its last ``"\\n\\nAssistant:"``: (prompt with the separator, response)."""
    cut = transcript.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    cut += len(_HH_ASSISTANT)
    return transcript[:cut], transcript[cut:]


def _implicit_pair(chosen: Any, rejected: Any, where: str) -> tuple[str | Messages, list[str | Messages]]:
    if isinstance(chosen, str) and isinstance(rejected, str):
        try:
            (prompt_c, response_c), (prompt_r, response_r) = split_hh_transcript(chosen), split_hh_transcript(rejected)
        except ValueError:
            raise PlotprefError(
                f"{where}: chosen/rejected strings without a prompt field must be HH-RLHF transcripts "
                "('\\n\\nHuman: ...\\n\\nAssistant: ...'); this pair has no '\\n\\nAssistant:' turn. "
                "Add a 'prompt' field (TRL's standard format) instead"
            ) from None
        if prompt_c != prompt_r:
            raise _Skip("prompt_not_shared")
        responses = [_response(response_c.strip(), where, "chosen"), _response(response_r.strip(), where, "rejected")]
        return hh_transcript_to_messages(prompt_c), responses
    chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise _Skip("prompt_not_shared")
    responses = [_response(chosen[shared:], where, "chosen"), _response(rejected[shared:], where, "rejected")]
    return chosen[:shared], responses


def _reward_field(record: dict, where: str) -> str | None:
    for name in ("rewards", "scores"):
        if name in record:
            return name
    prefixed = sorted(k for k in record if k.startswith(("rewards_", "scores_")))
    if len(prefixed) > 1:
        raise PlotprefError(f"{where}: several reward fields {prefixed}: keep one of them (or rename it to 'rewards')")
    return prefixed[0] if prefixed else None


def _reward_value(value: Any, where: str, field: str) -> float:
    if isinstance(value, dict) and len(value) == 1:  # e.g. Magpie's {"score": 0.11}
        value = next(iter(value.values()))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PlotprefError(f"{where}: field {field!r} must hold numbers (or {{'score': number}}); got {_preview(value)}") from None


def _ranked(record: dict, where: str, layout: str) -> tuple[str | Messages, list[str | Messages], list[float] | None]:
    prompt = _text_or_messages(_field(record, _PROMPT_FIELDS, where, layout), where, "prompt")
    raw = _field(record, ("responses",), where, layout)
    if not isinstance(raw, list):
        raise PlotprefError(f"{where}: field 'responses' must be a list of responses, best first; got {_preview(raw)}")
    responses = [_text_or_messages(r, where, "responses") for r in raw]
    if any(_is_empty(r) for r in responses):
        raise _Skip("empty_response")
    rewards = None
    name = _reward_field(record, where)
    if name is not None and record[name] is not None:
        values = record[name]
        if not isinstance(values, list) or len(values) != len(responses):
            raise PlotprefError(f"{where}: field {name!r} must be a list with one reward per response ({len(responses)}); got {_preview(values)}")
        rewards = [_reward_value(v, where, name) for v in values]
        order = sorted(range(len(responses)), key=lambda i: -rewards[i])  # stable: ties keep the file's order
        responses, rewards = [responses[i] for i in order], [rewards[i] for i in order]
    keep = [i for i, r in enumerate(responses) if r not in responses[:i]]
    if len(keep) < 2:
        raise _Skip("identical")
    responses = [responses[i] for i in keep]
    rewards = [rewards[i] for i in keep] if rewards is not None else None
    return prompt, responses, rewards


def _example(record: Any, where: str, layout: str) -> PreferenceExample:
    if not isinstance(record, dict):
        raise PlotprefError(f"{where}: expected a JSON object with the fields {_LAYOUT_FIELDS[layout]}; got {_preview(record)}")
    rewards = None
    if layout == "ranked":
        prompt, responses, rewards = _ranked(record, where, layout)
    elif layout == "implicit":
        prompt, responses = _implicit_pair(_field(record, ("chosen",), where, layout), _field(record, ("rejected",), where, layout), where)
    else:
        prompt = _text_or_messages(_field(record, _PROMPT_FIELDS, where, layout), where, "prompt")
        responses = [
            _response(_field(record, ("chosen",), where, layout), where, "chosen"),
            _response(_field(record, ("rejected",), where, layout), where, "rejected"),
        ]
    if layout != "ranked" and responses[0] == responses[1]:
        raise _Skip("identical")
    return PreferenceExample(prompt=prompt, responses=responses, rewards=rewards, source=where)


def load_preference_data(
    source: str | os.PathLike,
    *,
    lines: tuple[int, int] | None = None,
    format: str = "auto",
) -> PreferenceData:
    """Read preference data into :class:`PreferenceExample` objects (layouts: see the module docstring).

    Args:
        source: a file path (``.jsonl``, ``.json`` (a list of objects), ``.csv`` (a cell holding a
            JSON list is decoded), ``.parquet``; each optionally ``.gz``), a built-in name from
            :data:`BUILTIN_DATASETS`, or a ``datasets`` hub name ``NAME`` or ``NAME:SPLIT`` (split
            ``train`` by default).
        lines: ``(first, last)``, 1-based and inclusive: lines of a JSONL/CSV file, the line on which
            a record starts in a JSON file, row numbers in Parquet and hub data sets. With a built-in
            name the range must lie inside the built-in's own range.
        format: the file format, one of :data:`FILE_FORMATS`; ``"auto"`` uses the extension.

    Returns:
        A :class:`PreferenceData` (a list) of examples, with ``skipped`` counts and a fingerprint.

    Raises:
        PlotprefError: for any bad input, with the file and line.
    """
    lines = _check_lines(lines)
    name, path, hub, lines = _resolve_source(source, lines)
    if path is not None:
        file_format, gzipped = _file_format(path, format)
        file_bytes = path.read_bytes()
        raw = _uncompressed(file_bytes, gzipped, name)
        if file_format == "parquet":
            records = _parquet_records(raw, name, lines)
        else:
            text = _decode(raw, name)
            records = {"jsonl": _jsonl_records, "json": _json_records, "csv": _csv_records}[file_format](text, name, lines)
        fingerprint = hashlib.sha256(file_bytes)
    else:
        if format not in FILE_FORMATS:
            raise PlotprefError(f"unknown data format {format!r}: use one of {', '.join(FILE_FORMATS)}")
        records, hub_fingerprint = _hub_records(hub, lines)
        fingerprint = hashlib.sha256(hub_fingerprint.encode() + hub.encode())
    fingerprint.update(json.dumps({"lines": list(lines) if lines else None, "format": format}).encode())

    examples, skipped, first_skips, layout, n_records = [], Counter(), {}, "", 0
    for number, record in records:
        where = f"{name}:{number}"
        n_records += 1
        if not layout:
            if not isinstance(record, dict):
                raise PlotprefError(f"{where}: expected a JSON object (a record with named fields); got {_preview(record)}")
            layout = _detect_layout(record, where)
        try:
            examples.append(_example(record, where, layout))
        except _Skip as skip:
            skipped[skip.reason] += 1
            first_skips.setdefault(skip.reason, where)
    where = name + (f" lines {lines[0]}-{lines[1]}" if lines else "")
    if n_records == 0:
        raise PlotprefError(f"{where}: no records" + (" in that line range" if lines else " (the file is empty)"))
    for reason, count in skipped.items():
        logger.warning("%s: skipped %d record(s): %s (first at %s)", where, count, SKIP_REASONS[reason], first_skips[reason])
    if not examples:
        raise PlotprefError(f"{where}: no usable record among {n_records}: skipped " + ", ".join(f"{n} ({SKIP_REASONS[r]})" for r, n in skipped.items()))
    logger.info("%s: %d %s examples (%d records, %d skipped)", where, len(examples), layout, n_records, sum(skipped.values()))
    return PreferenceData(examples, source=str(source), layout=layout, fingerprint=fingerprint.hexdigest(), skipped=skipped)


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def special_token_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS/EOS/PAD/…, and added tokens marked special)."""
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, token in decoder.items() if getattr(token, "special", False))
    return ids


def _as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _as_response_messages(response: str | Messages) -> Messages:
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)


def _encode(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _render(tokenizer, messages: Messages, source: str, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja raises TemplateError (e.g. roles must alternate)
        raise PlotprefError(f"{source}: the tokenizer's chat template rejected this conversation ({exc})") from exc


def _trim_after_end_of_turn(ids: list[int], special: set[int], tokenizer) -> list[int]:
    """Drop the template's whitespace after the response's closing special token (e.g. the newline
    after ``<|im_end|>``): generation stops at that token, so the model never produces what follows."""
    last = max((i for i, t in enumerate(ids) if t in special), default=-1)
    if last >= 0 and last < len(ids) - 1 and not tokenizer.decode(ids[last + 1 :]).strip():
        return ids[: last + 1]
    return ids


def _plain_prompt(prompt: str | Messages) -> str:
    """Template-less layout: a string prompt as is; messages in HH-RLHF's transcript layout."""
    if isinstance(prompt, str):
        return prompt
    names = {"user": "Human", "assistant": "Assistant"}
    text = "".join(m["content"] + "\n\n" if m["role"] == "system" else f"\n\n{names.get(m['role'], m['role'].title())}: {m['content']}" for m in prompt)
    return text + _HH_ASSISTANT


def _plain_response(prompt: str | Messages, response: str | Messages) -> str:
    if isinstance(response, str):
        return response if isinstance(prompt, str) else " " + response
    first, *rest = response
    return " " + first["content"] + _plain_prompt(rest)[: -len(_HH_ASSISTANT)]


def encode_example(example: PreferenceExample, tokenizer) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [response ids, ...]) before truncation; the response ids end with the end-of-turn token.

    With a chat template: the prompt is rendered with ``add_generation_prompt=True`` and each full
    conversation (prompt + response) without it; when the prompt's ids are a prefix of the full
    conversation's ids, the response is the rest (the usual case). Otherwise, when the rendered
    prompt is a prefix of the rendered conversation as *text*, the remaining text is tokenised on
    its own and concatenated (one token boundary may then differ from tokenising the whole);
    otherwise the template cannot be split and a PlotprefError is raised. The template's default
    system prompt, if it injects one (SmolLM2's "You are a helpful AI assistant named SmolLM,
    trained by Hugging Face"), is kept, so that training sees the same context as generation with
    the same template; give a system message in the data to replace it. Whitespace the template
    puts after the closing special token is dropped (see :func:`_trim_after_end_of_turn`); a
    template that closes a response with no special token gets the EOS token appended.

    Without a chat template: ``prompt + response + eos`` (a message prompt is written as an
    HH-RLHF transcript ending in ``"\\n\\nAssistant:"``, the response after a space), prompt and
    response tokenised separately; the prompt with the tokenizer's special tokens (e.g. BOS).
    """
    special = special_token_ids(tokenizer)
    eos = tokenizer.eos_token_id
    if not has_chat_template(tokenizer):
        prompt_ids = _encode(tokenizer, _plain_prompt(example.prompt), add_special_tokens=True)
        responses = [_encode(tokenizer, _plain_response(example.prompt, r)) + ([eos] if eos is not None else []) for r in example.responses]
        return prompt_ids, responses
    prompt_messages = _as_messages(example.prompt)
    prompt_text = _render(tokenizer, prompt_messages, example.source, generation_prompt=True)
    prompt_ids = _encode(tokenizer, prompt_text)
    responses = []
    for response in example.responses:
        full_text = _render(tokenizer, prompt_messages + _as_response_messages(response), example.source, generation_prompt=False)
        full_ids = _encode(tokenizer, full_text)
        if full_ids[: len(prompt_ids)] == prompt_ids:
            response_ids = full_ids[len(prompt_ids) :]
        elif full_text.startswith(prompt_text):
            response_ids = _encode(tokenizer, full_text[len(prompt_text) :])
        else:
            raise PlotprefError(
                f"{example.source}: the chat template does not render the prompt (with add_generation_prompt=True) as a "
                "prefix of the full conversation, so the response cannot be located; use a tokenizer whose template does"
            )
        response_ids = _trim_after_end_of_turn(response_ids, special, tokenizer)
        if response_ids and not special.intersection(response_ids) and eos is not None:
            response_ids.append(eos)
        responses.append(response_ids)
    return prompt_ids, responses


def tokenize_example(
    example: PreferenceExample,
    tokenizer,
    *,
    max_length: int = 512,
    max_prompt_length: int | None = 256,
) -> dict | None:
    """Token ids and labels for every response of an example (one full sequence per response).

    Truncation policy: the prompt keeps its **last** ``max_prompt_length`` tokens (None: no limit);
    then each response keeps its first ``max_length - len(prompt)`` tokens. If that leaves no room
    for some response (a prompt of ``max_length`` tokens or more), the whole example is dropped:
    None is returned and the caller counts it (see :func:`tokenize_dataset`). The response
    boundary and the chat-template policy are described in :func:`encode_example`.

    Returns:
        ``{"input_ids": [[int]] , "labels": [[int]]}``, one list per response in the example's
        order (labels equal the ids on response tokens, including the end-of-turn token that
        closes the response, and -100 on prompt tokens; not shifted), plus ``"rewards"`` when the
        example has rewards; or None.
    """
    if max_length < 1 or (max_prompt_length is not None and max_prompt_length < 0):
        raise PlotprefError(f"max_length must be >= 1 and max_prompt_length >= 0; got {max_length} and {max_prompt_length}")
    prompt_ids, responses = encode_example(example, tokenizer)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    room = max_length - len(prompt_ids)
    if room <= 0 or any(not r for r in responses):
        return None
    row = {
        "input_ids": [prompt_ids + r[:room] for r in responses],
        "labels": [[IGNORE_INDEX] * len(prompt_ids) + r[:room] for r in responses],
    }
    if example.rewards is not None:
        row["rewards"] = list(example.rewards)
    return row


def tokenize_dataset(
    examples: Iterable[PreferenceExample],
    tokenizer,
    *,
    max_length: int = 512,
    max_prompt_length: int | None = 256,
    progress: bool = False,
) -> list[dict]:
    """:func:`tokenize_example` over a data set; dropped examples are counted and logged."""
    from tqdm.auto import tqdm

    examples = list(examples)
    rows, dropped = [], []
    for example in tqdm(examples, desc="tokenising", disable=not progress, unit="ex"):
        row = tokenize_example(example, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
        (dropped.append(example.source) if row is None else rows.append(row))
    if dropped:
        logger.warning(
            "dropped %d of %d examples whose response did not fit in max_length=%d after the prompt "
            "(max_prompt_length=%s); first: %s", len(dropped), len(examples), max_length, max_prompt_length, dropped[0],
        )
    if not rows:
        raise PlotprefError(f"no example fits in max_length={max_length} (max_prompt_length={max_prompt_length}): raise max_length")
    return rows


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


@dataclass
class PreferenceCollator:
    """Pads tokenised rows (from :func:`tokenize_example`) into one batch, right padding.

    Rows are response-major: for B examples with n responses each, rows 0..B-1 are every example's
    ``responses[0]`` (chosen), rows B..2B-1 ``responses[1]`` (rejected), and so on.

    Returns ``{"input_ids": LongTensor(B*n, T), "attention_mask": LongTensor(B*n, T), "labels":
    LongTensor(B*n, T)}`` (labels -100 on padding) and ``"rewards": FloatTensor(B, n)`` when every
    row has rewards. ``pad_to_multiple_of`` rounds T up.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise PlotprefError("PreferenceCollator got an empty batch")
        n = len(rows[0]["input_ids"])
        if any(len(row["input_ids"]) != n for row in rows):
            raise PlotprefError(
                f"every example in a batch must have the same number of responses; got {sorted({len(r['input_ids']) for r in rows})}"
            )
        sequences = [(row["input_ids"][k], row["labels"][k]) for k in range(n) for row in rows]
        length = max(len(ids) for ids, _ in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, lab) in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        with_rewards = sum("rewards" in row for row in rows)
        if with_rewards == len(rows):
            batch["rewards"] = torch.tensor([row["rewards"] for row in rows], dtype=torch.float32)
        elif with_rewards:
            raise PlotprefError("some examples in the batch have rewards and some do not: use one data file per batch")
        return batch


def example_to_dict(example: PreferenceExample) -> dict:
    """A JSON-serialisable dict of an example (e.g. to write a cleaned .jsonl)."""
    return dataclasses.asdict(example)
