"""plotpref.data: every layout and file format, the HH-RLHF split on the real file, the response
mask with the real SmolLM2 tokenizer, truncation, batching, and every kind of bad input."""

from __future__ import annotations

import copy
import gzip
import json
import logging

import pytest
import torch

from plotpref.data import (
    IGNORE_INDEX,
    PreferenceCollator,
    PreferenceExample,
    encode_example,
    hh_transcript_to_messages,
    load_preference_data,
    tokenize_dataset,
    tokenize_example,
)
from plotpref.errors import PlotprefError

HH_FILE = "hh_rlhf/harmless-base_test.jsonl.gz"
# The pairs of harmless-base test whose two transcripts differ before the last Assistant turn
# (src/plotpref/assets/PROVENANCE.md: "5 of 2,312 pairs do not share the prompt").
HH_NOT_SHARED = [1255, 1689, 1951, 1953, 2037]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from plotpref.models import load_tokenizer

    return load_tokenizer()


# ---- layouts and file formats ------------------------------------------------------------------


def test_standard_format_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "Grass?", "chosen": "Green.", "rejected": "Blue."},
    ])
    data = load_preference_data(path)
    assert data.layout == "pairwise"
    assert [(e.prompt, e.chosen, e.rejected, e.source) for e in data] == [
        ("Sky?", "Blue.", "Green.", f"{path}:1"), ("Grass?", "Green.", "Blue.", f"{path}:2")]
    assert data[0].rewards is None


def test_conversational_format(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }])
    (example,) = load_preference_data(path)
    assert example.prompt == prompt
    assert example.responses == [[{"role": "assistant", "content": "Hello."}], [{"role": "assistant", "content": "Go away."}]]


def test_implicit_full_conversations_share_the_prompt(tmp_path):
    shared = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "Help?"}]
    path = write_jsonl(tmp_path / "i.jsonl", [{
        "chosen": shared + [{"role": "assistant", "content": "Sure."}],
        "rejected": shared + [{"role": "assistant", "content": "No."}],
    }])
    (example,) = load_preference_data(path)
    assert example.prompt == shared
    assert example.responses == [[{"role": "assistant", "content": "Sure."}], [{"role": "assistant", "content": "No."}]]


def test_hh_transcript_split_at_last_assistant_turn(tmp_path):
    history = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": history + " Sure, how?", "rejected": history + " No.\n"}])
    (example,) = load_preference_data(path)
    assert example.prompt == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Help me?"}]
    assert example.responses == ["Sure, how?", "No."]  # leading space (and trailing whitespace) stripped


def test_hh_transcript_to_messages_keeps_text_before_the_first_turn_as_system():
    assert hh_transcript_to_messages("Rules.\n\nHuman: a\n\nAssistant: b\n\nAssistant:") == [
        {"role": "system", "content": "Rules."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_ranked_responses_sorted_by_reward_and_deduplicated(tmp_path):
    path = tmp_path / "r.json"
    first = {"instruction": "Q1", "responses": ["low", "high", "mid"], "rewards_armorm": [{"score": 0.1}, {"score": 0.9}, {"score": 0.5}]}
    second = {"instruction": "Q2", "responses": ["x", "y", "x"], "rewards_armorm": [{"score": 0.7}, {"score": 0.2}, {"score": 0.3}]}
    path.write_text("[\n" + json.dumps(first) + ",\n\n  " + json.dumps(second) + "\n]\n")
    data = load_preference_data(path)
    assert data.layout == "ranked"
    assert data[0].responses == ["high", "mid", "low"] and data[0].rewards == [0.9, 0.5, 0.1]
    assert data[1].responses == ["x", "y"] and data[1].rewards == [0.7, 0.2]  # the worse copy of "x" is dropped
    assert data[0].source == f"{path}:2" and data[1].source == f"{path}:4"  # the line each record starts on


def test_ranked_without_rewards_keeps_file_order(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Q", "responses": ["best", "ok", "worst"]}])
    (example,) = load_preference_data(path)
    assert example.responses == ["best", "ok", "worst"] and example.rewards is None


def test_magpie_shape_from_the_shared_data():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "magpie" / "example_instructions_5res_armorm.json"
    if not path.exists():
        pytest.skip("../shared/data/magpie is not present")
    raw = json.loads(path.read_text())
    data = load_preference_data(path)
    assert len(data) == len(raw) == 5
    for example, record in zip(data, raw):
        scores = [s["score"] for s in record["rewards_armorm"]]
        assert example.rewards == sorted(scores, reverse=True)
        assert example.responses[0] == record["responses"][scores.index(max(scores))]


def test_csv_with_multiline_cells_and_json_list_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected\n"Line one\nline two",yes,no\nP2,"[{""role"": ""assistant"", ""content"": ""A""}]",B\n')
    data = load_preference_data(path)
    assert data[0].prompt == "Line one\nline two" and data[0].source.endswith(":2")
    assert data[1].source.endswith(":4")  # the first record spans lines 2-3
    assert data[1].chosen == [{"role": "assistant", "content": "A"}] and data[1].rejected == "B"


def test_parquet_and_gzip_and_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(1, 6)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    data = load_preference_data(tmp_path / "d.parquet", lines=(2, 4))
    assert [e.prompt for e in data] == ["p2", "p3", "p4"]
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    assert [e.chosen for e in load_preference_data(gz, lines=(5, 5))] == ["c5"]
    assert [e.chosen for e in load_preference_data(tmp_path / "d.parquet", format="parquet")] == [f"c{i}" for i in range(1, 6)]


def test_fingerprint_depends_on_bytes_and_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3)
    fp = load_preference_data(path).fingerprint
    assert fp == load_preference_data(path).fingerprint
    assert fp != load_preference_data(path, lines=(1, 2)).fingerprint
    write_jsonl(path, [{"prompt": "p", "chosen": "a", "rejected": "c"}] * 3)
    assert fp != load_preference_data(path).fingerprint


# ---- the real HH-RLHF file -----------------------------------------------------------------------


def test_hh_real_file_split_and_quirks():
    from plotpref.assets import asset_path

    whole = load_preference_data(asset_path(HH_FILE))
    assert whole.layout == "implicit"
    assert whole.skipped["prompt_not_shared"] == len(HH_NOT_SHARED)
    assert len(whole) + sum(whole.skipped.values()) == 2312
    kept_lines = {int(e.source.rsplit(":", 1)[1]) for e in whole}
    assert kept_lines.isdisjoint(HH_NOT_SHARED)
    for line in HH_NOT_SHARED:  # each of them, alone, is skipped for exactly that reason
        with pytest.raises(PlotprefError, match="do not share a prompt"):
            load_preference_data(asset_path(HH_FILE), lines=(line, line))
    # the split follows the raw transcript: prompt messages + response reproduce the chosen string's turns
    raw = json.loads(gzip.open(asset_path(HH_FILE), "rt").readline())
    first = whole[0]
    assert first.source.endswith(":1")
    assert raw["chosen"].endswith(first.chosen) and raw["rejected"].endswith(first.rejected)
    assert first.prompt[-1]["role"] == "user" and first.prompt[-1]["content"] in raw["chosen"]


def test_builtin_names_select_their_lines():
    train = load_preference_data("hh-harmless-train")
    lines = [int(e.source.rsplit(":", 1)[1]) for e in train]
    assert min(lines) >= 501 and max(lines) <= 2312
    assert len(train) + sum(train.skipped.values()) == 1812
    evaluation = load_preference_data("hh-harmless-eval", lines=(1, 20))
    assert max(int(e.source.rsplit(":", 1)[1]) for e in evaluation) <= 20
    with pytest.raises(PlotprefError, match="outside 'hh-harmless-train'"):
        load_preference_data("hh-harmless-train", lines=(1, 10))


# ---- bad input: PlotprefError with the file and line, or a counted skip -------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    with pytest.raises(PlotprefError, match=rf"{path}:2: malformed JSON"):
        load_preference_data(path)


def test_malformed_json_file_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}\n]')
    with pytest.raises(PlotprefError, match=rf"{path}:3: malformed JSON"):
        load_preference_data(path)


def test_missing_field_says_which_fields_and_layout(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}])
    with pytest.raises(PlotprefError, match=rf"{path}:2: missing field 'rejected' \(detected layout 'pairwise'.*chosen, rejected"):
        load_preference_data(path)


def test_unknown_layout_lists_the_expected_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(PlotprefError, match=rf"{path}:1: cannot tell the data layout.*responses"):
        load_preference_data(path)


def test_wrong_field_type(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": 3, "rejected": "c"}])
    with pytest.raises(PlotprefError, match=rf"{path}:1: field 'chosen' must be a string or a list"):
        load_preference_data(path)


def test_empty_and_identical_responses_are_skipped_and_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "a", "chosen": "  ", "rejected": "c"},
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": "a", "chosen": "good", "rejected": "bad"},
        {"prompt": "a", "chosen": "same", "rejected": "same"},
    ])
    with caplog.at_level(logging.WARNING, logger="plotpref.data"):
        data = load_preference_data(path)
    assert len(data) == 1 and data[0].source == f"{path}:3"
    assert data.skipped == {"empty_response": 1, "identical": 2}
    assert f"skipped 2 record(s): chosen identical to rejected (ranked: fewer than two distinct responses) (first at {path}:2)" in caplog.text


def test_no_surviving_row_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "x"}])
    with pytest.raises(PlotprefError, match=rf"{path}: no usable record among 1: skipped 1 \(chosen identical"):
        load_preference_data(path)


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(PlotprefError, match=rf"{path}:2: the file is not UTF-8"):
        load_preference_data(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(PlotprefError, match=rf"{path}: the file is empty"):
        load_preference_data(path)


def test_lines_past_the_end_of_the_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(PlotprefError, match="no records in that line range"):
        load_preference_data(path, lines=(5, 9))


def test_unknown_format_and_extension_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(PlotprefError, match="unknown data format 'yaml': use one of auto, jsonl, json, csv, parquet"):
        load_preference_data(path, format="yaml")
    odd = tmp_path / "d.txt"
    odd.write_text(path.read_text())
    with pytest.raises(PlotprefError, match="cannot tell the format"):
        load_preference_data(odd)
    assert len(load_preference_data(odd, format="jsonl")) == 1
    with pytest.raises(PlotprefError, match="does not exist"):
        load_preference_data(tmp_path / "nope.jsonl")


def test_implicit_strings_without_hh_markers_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": "good answer", "rejected": "bad answer"}])
    with pytest.raises(PlotprefError, match=rf"{path}:1: chosen/rejected strings without a prompt field must be HH-RLHF"):
        load_preference_data(path)


# ---- tokenisation with the real SmolLM2 tokenizer -----------------------------------------------


def labelled(row, k=0):
    return [t for t in row["labels"][k] if t != IGNORE_INDEX]


def test_response_mask_with_the_chat_template(tokenizer):
    example = PreferenceExample(prompt="What is 2+2?", responses=["4.", "Five."], source="t:1")
    row = tokenize_example(example, tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == im_end  # the case where an `ids != pad` mask would be wrong
    for k, response in enumerate(example.responses):
        ids, labels = row["input_ids"][k], row["labels"][k]
        assert len(ids) == len(labels)
        n_prompt = labels.index(next(t for t in labels if t != IGNORE_INDEX))
        assert all(t == IGNORE_INDEX for t in labels[:n_prompt])  # prompt not labelled
        assert labels[n_prompt:] == ids[n_prompt:]  # every response token labelled with itself
        assert ids[-1] == im_end and labels[-1] == im_end  # the closing <|im_end|> is trained on
        assert tokenizer.decode(labelled(row, k)) == response + "<|im_end|>"  # and nothing else (no trailing newline)
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": response}], tokenize=False)
        assert tokenizer.decode(ids) + "\n" == full  # the template's text, minus the newline after <|im_end|>
    # the template's default system prompt is kept (documented)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(row["input_ids"][0])


def test_labels_match_tokenising_the_whole_conversation(tokenizer):
    # the boundary found from the prompt's ids equals the one in the full conversation's ids
    example = PreferenceExample(prompt=[{"role": "user", "content": "Say hi"}], responses=["Hi there!", "No."])
    prompt_ids, responses = encode_example(example, tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}], tokenize=False)
    assert prompt_ids + responses[0] == tokenizer(text, add_special_tokens=False)["input_ids"][:-1]


def test_truncation_keeps_the_prompt_end_and_drops_rows_without_room(tokenizer, caplog):
    long_prompt = " ".join(f"word{i}" for i in range(200))
    example = PreferenceExample(prompt=long_prompt, responses=["A fine answer with several words.", "No."], source="t:7")
    prompt_ids, responses = encode_example(example, tokenizer)
    row = tokenize_example(example, tokenizer, max_length=40, max_prompt_length=30)
    for k in range(2):
        assert row["input_ids"][k][:30] == prompt_ids[-30:]
        assert row["labels"][k][:30] == [IGNORE_INDEX] * 30
        assert len(row["input_ids"][k]) == min(40, 30 + len(responses[k]))
        assert labelled(row, k) == responses[k][:10]
    assert tokenize_example(example, tokenizer, max_length=40, max_prompt_length=None) is None
    with caplog.at_level(logging.WARNING, logger="plotpref.data"):
        short = PreferenceExample(prompt="Hi", responses=["a", "b"], source="t:8")
        rows = tokenize_dataset([example, short], tokenizer, max_length=40, max_prompt_length=None)
    assert len(rows) == 1 and "dropped 1 of 2 examples" in caplog.text and "t:7" in caplog.text
    with pytest.raises(PlotprefError, match="no example fits"):
        tokenize_dataset([example], tokenizer, max_length=40, max_prompt_length=None)


def test_tokenizer_without_chat_template_uses_prompt_response_eos(tokenizer):
    plain = copy.copy(tokenizer)
    plain.chat_template = None
    example = PreferenceExample(prompt="The sky is", responses=[" blue.", " green."])
    row = tokenize_example(example, plain)
    assert row["input_ids"][0][-1] == plain.eos_token_id and row["labels"][0][-1] == plain.eos_token_id
    assert plain.decode(row["input_ids"][0]) == "The sky is blue." + plain.eos_token
    assert plain.decode(labelled(row)) == " blue." + plain.eos_token
    # messages are written as an HH transcript
    hh = PreferenceExample(prompt=[{"role": "user", "content": "Hi"}], responses=["Hello.", "Bye."])
    assert plain.decode(tokenize_example(hh, plain)["input_ids"][0]) == "\n\nHuman: Hi\n\nAssistant: Hello." + plain.eos_token


def test_hh_rows_tokenise_with_the_boundary_found_by_prefix(tokenizer):
    data = load_preference_data("hh-harmless-eval", lines=(1, 40))
    for example in data:
        row = tokenize_example(example, tokenizer, max_length=4096, max_prompt_length=None)
        for k, response in enumerate(example.responses):
            assert tokenizer.decode(labelled(row, k)) == response + "<|im_end|>"


# ---- batching ----------------------------------------------------------------------------------


def test_collator_is_response_major_right_padded_and_masks_padding():
    rows = [
        {"input_ids": [[5, 6, 7], [5, 6, 8, 9]], "labels": [[-100, 6, 7], [-100, 6, 8, 9]], "rewards": [1.0, 0.5]},
        {"input_ids": [[1, 2], [1, 3, 4]], "labels": [[-100, 2], [-100, 3, 4]], "rewards": [0.25, -0.5]},
    ]
    batch = PreferenceCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [1, 2, 0, 0], [5, 6, 8, 9], [1, 3, 4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100, 2, -100, -100], [-100, 6, 8, 9], [-100, 3, 4, -100]]
    assert batch["rewards"].dtype == torch.float32 and batch["rewards"].tolist() == [[1.0, 0.5], [0.25, -0.5]]
    assert PreferenceCollator(0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (4, 8)
    no_rewards = [{k: v for k, v in r.items() if k != "rewards"} for r in rows]
    assert "rewards" not in PreferenceCollator(0)(no_rewards)
    with pytest.raises(PlotprefError, match="same number of responses"):
        PreferenceCollator(0)([rows[0], {"input_ids": [[1], [2], [3]], "labels": [[1], [2], [3]]}])


def test_collated_real_batch_does_not_label_padding_even_when_pad_is_eos(tokenizer):
    examples = [PreferenceExample(prompt="Hi", responses=["Hello, how can I help you today?", "Go."]),
                PreferenceExample(prompt="Yo", responses=["Hey.", "Hi!"])]
    rows = [tokenize_example(e, tokenizer) for e in examples]
    batch = PreferenceCollator(tokenizer.pad_token_id)(rows)
    order = [rows[0], rows[1]]  # rows 0..1 chosen, 2..3 rejected
    for i, (b, k) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        n = len(order[b]["input_ids"][k])
        assert batch["labels"][i, :n].tolist() == order[b]["labels"][k]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert batch["labels"][i, n - 1] == tokenizer.pad_token_id  # the real <|im_end|> is labelled, the pads are not


@pytest.mark.parametrize("name,layout", [("standard.jsonl", "pairwise"), ("conversational.jsonl", "pairwise"),
                                         ("implicit_conversations.jsonl", "implicit"), ("ranked.jsonl", "ranked")])
def test_example_files_load_and_tokenise(name, layout, tokenizer):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "data" / name
    data = load_preference_data(path)
    assert data.layout == layout and not data.skipped
    for example in data:
        row = tokenize_example(example, tokenizer)
        assert len(row["input_ids"]) == len(example.responses) >= 2
    if layout == "ranked":
        assert data[0].responses[0] == "7 is a prime number." and data[0].rewards == [0.9, 0.4, 0.1]
