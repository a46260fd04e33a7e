import json
import os

import pytest
from helpers import FIXTURE

from phi3space.config import DataConfig
from phi3space.engine import data, tokens
from phi3space.errors import DataError

GOLDEN_IDS = [32006, 2184, 2643, 32007, 32010, 15043, 29892, 508, 366, 1246, 777, 8492, 363, 592, 29973, 32007, 32001,
              18585, 29892, 306, 508, 8147, 278, 2533, 363, 366, 29991, 32007, 32001]


def write_jsonl(path, rows, extra_lines=()):
    with path.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


def norm(tmp_path, rows, **columns):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    raw, broken = data.load_rows(DataConfig(dataset=str(path)), "train")
    return data.normalise(raw, DataConfig(dataset=str(path), columns=columns), str(path), broken)


def test_golden_token_ids_of_the_real_phi3_template(tokenizer):
    msgs = [{"role": "system", "content": "System message"},
            {"role": "user", "content": "Hello, can you call some tools for me?"},
            {"role": "assistant", "content": "Sure, I can calculate the sum for you!"}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert list(ids) == GOLDEN_IDS
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_openai_messages_multi_turn(tmp_path):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}, {"role": "user", "content": "dangling"}]
    rows, report = norm(tmp_path, [{"messages": conv}])
    assert report.format == "messages"
    assert rows == [{"messages": conv[:5]}]  # the trailing user turn has nothing to learn from


def test_sharegpt_conversations(tmp_path):
    rows, report = norm(tmp_path, [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "user", "value": "Q2"}, {"from": "assistant", "value": "A2"}]},
    ])
    assert report.format == "sharegpt"
    assert rows[0]["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                   {"role": "assistant", "content": "A"}]
    assert rows[1]["messages"][1] == {"role": "assistant", "content": "A2"}


def test_alpaca_with_and_without_input(tmp_path):
    rows, report = norm(tmp_path, [{"instruction": "Add", "input": "1 and 2", "output": "3"},
                                   {"instruction": "Say hi", "input": "", "output": "hi"}])
    assert report.format == "alpaca"
    assert rows[0]["messages"] == [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    assert rows[1]["messages"][0] == {"role": "user", "content": "Say hi"}


@pytest.mark.parametrize("p,c", [("prompt", "completion"), ("question", "answer"), ("prompt", "response")])
def test_prompt_completion_pairs(tmp_path, p, c):
    rows, report = norm(tmp_path, [{p: "Q", c: "A"}])
    assert report.format == "prompt_completion"
    assert rows == [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]


def test_plain_text_and_column_mapping(tmp_path):
    rows, report = norm(tmp_path, [{"text": "hello world"}])
    assert (report.format, rows) == ("text", [{"text": "hello world"}])
    rows, report = norm(tmp_path, [{"ask": "Q", "reply": "A"}], prompt="ask", completion="reply")
    assert report.format == "prompt_completion" and rows[0]["messages"][1]["content"] == "A"


def test_unusable_rows_are_dropped_and_counted_per_reason(tmp_path):
    good = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [
        good,
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ["not", "text"]}]},
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "A"}]},
    ], extra_lines=['{"messages": [broken'])
    raw, broken = data.load_rows(DataConfig(dataset=str(path)), "train")
    rows, report = data.normalise(raw, DataConfig(dataset=str(path)), str(path), broken)
    assert rows == [good]
    assert report.total == 6 and report.kept == 1
    assert report.dropped == {"no assistant turn": 1, "empty content": 1, "non-text content": 1,
                              "unknown role 'tool'": 1, "broken JSON line": 1}


def test_nothing_usable_says_what_was_found_and_how_to_map(tmp_path):
    with pytest.raises(DataError) as info:
        norm(tmp_path, [{"q": "a", "a": "b"}])
    assert "columns: a, q" in info.value.message and "data.columns" in info.value.hint
    with pytest.raises(DataError) as info:
        norm(tmp_path, [{"prompt": "", "completion": "x"}])
    assert "no usable rows" in info.value.message and "1 empty content" in info.value.message


def test_preference_data_is_refused(tmp_path):
    with pytest.raises(DataError, match="preference data"):
        norm(tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": "B"}])


def test_csv_parquet_json_array_and_folder_splits(tmp_path):
    import pandas as pd

    pd.DataFrame({"question": ["Q1", "Q2"], "answer": ["A1", "A2"]}).to_csv(tmp_path / "d.csv", index=False)
    raw, _ = data.load_rows(DataConfig(dataset=str(tmp_path / "d.csv")), "train")
    assert [r["answer"] for r in raw] == ["A1", "A2"]
    pd.DataFrame({"prompt": ["P"], "completion": ["C"]}).to_parquet(tmp_path / "d.parquet")
    assert data.load_rows(DataConfig(dataset=str(tmp_path / "d.parquet")), "train")[0] == [{"prompt": "P", "completion": "C"}]
    (tmp_path / "arr.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert len(data.load_rows(DataConfig(dataset=str(tmp_path / "arr.json")), "train")[0]) == 2
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": "t"}] * 3)
    write_jsonl(folder / "test.jsonl", [{"text": "e"}])
    cfg = DataConfig(dataset=str(folder), eval_split="test")
    train, evals, report = data.prepare(cfg)
    assert (len(train), len(evals), report.train_rows, report.eval_rows) == (3, 1, 3, 1)


def test_missing_file_and_eval_fraction(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.prepare(DataConfig(dataset=str(tmp_path / "missing.jsonl")))
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "completion": "A"} for i in range(20)])
    train, evals, report = data.prepare(DataConfig(dataset=str(path), eval_fraction=0.2, max_samples=15))
    assert (len(train), len(evals)) == (12, 3)


def test_assistant_mask_covers_exactly_the_assistant_spans(tokenizer):
    """The trained span of each assistant turn is its content and the closing <|end|> (and EOS at the end)."""
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]
    ids, mask = tokens.tokenize_example({"messages": msgs}, tokenizer)
    assert ids == list(tokenizer.apply_chat_template(msgs, tokenize=True)["input_ids"])  # same ids as inference
    trained = [tokenizer.decode([i for i, m in zip(ids, mask) if m][k:k + 1]) for k in range(sum(mask))]
    spans, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == ["Hello there.<|end|>", "Goodbye.<|end|><|endoftext|>"]
    assert trained and ids[mask.index(1) - 1] == 32001  # training starts right after <|assistant|>


def test_inspect_renders_the_trained_span_and_token_stats(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Question " * n, "completion": "Answer"} for n in (1, 5, 50)])
    train, _, report = data.prepare(DataConfig(dataset=str(path), eval_fraction=0))
    tokens.add_token_stats(report, train, tokenizer, max_length=32)
    assert report.token_percentiles["min"] < 32 < report.token_percentiles["max"]
    assert report.over_max_length == pytest.approx(1 / 3)
    assert "[[Answer<|end|><|endoftext|>]]" in tokens.render_marked(train[0], tokenizer)


def test_column_mapping_must_name_real_columns(tmp_path):
    with pytest.raises(DataError) as info:
        norm(tmp_path, [{"ask": "Q", "reply": "A"}], prompt="ask", completion="answer")
    assert "(completion: answer); its columns are: ask, reply" in info.value.message


def test_non_objects_in_a_json_array_are_counted(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, 3, "x"]))
    raw, broken = data.load_rows(DataConfig(dataset=str(tmp_path / "d.json")), "train")
    assert raw == [{"text": "a"}] and broken == {"not a JSON object": 2}


def test_a_large_split_is_inspected_from_a_sample_that_says_so(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "completion": "A"} for i in range(30)],
                       extra_lines=["{broken"])
    train, evals, report = data.prepare(DataConfig(dataset=str(path), eval_fraction=0.2), sample=10)
    assert (report.total, report.kept, len(train), len(evals)) == (10, 10, 8, 2)
    assert (report.rows_in_split, report.rows_in_split_exact) == (31, False)  # counted by lines: the broken one too
    assert report.estimated_train_rows() == 25
    assert "a sample: the first 10 rows of about 31 (training reads them all)" in report.lines()
    _, _, whole = data.prepare(DataConfig(dataset=str(path), eval_fraction=0.2), sample=100)
    assert whole.rows_in_split is None and (whole.total, whole.kept, whole.train_rows) == (31, 30, 24)
    assert not any("sample" in line for line in whole.lines())


def test_rows_are_normalised_into_arrow_not_held_as_python_objects(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "completion": "A"} for i in range(2500)]
                       + [{"prompt": "", "completion": "A"}])
    train, evals, report = data.prepare(DataConfig(dataset=str(path), eval_fraction=0, max_samples=2100))
    assert train.cache_files and not evals  # a memory-mapped Arrow file
    assert (report.total, report.kept, report.dropped, len(train)) == (2501, 2500, {"empty content": 1}, 2100)
    assert train[2099]["messages"] == [{"role": "user", "content": "Q2099"}, {"role": "assistant", "content": "A"}]


def test_token_ids_for_training_match_the_rendering(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Question " * n, "completion": "Answer"} for n in (1, 5, 50)]
)
    found = data.prepare_for_training(DataConfig(dataset=str(path), eval_fraction=0), str(FIXTURE), max_length=32)
    assert len(found.train) == 2  # the 50-word question leaves no room for the answer within 32 tokens
    assert found.report.dropped == {"no trained tokens within max_length 32": 1} and found.report.train_rows == 2
    assert found.report.over_max_length == pytest.approx(1 / 3)  # measured on all rows, before the cut
    first = found.train[0]
    ids, mask = tokens.tokenize_example({"messages": [{"role": "user", "content": "Question "},
                                                    {"role": "assistant", "content": "Answer"}]}, tokenizer)
    assert first["input_ids"] == ids and first["labels"] == [i if m else -100 for i, m in zip(ids, mask)]


def test_a_large_split_is_tokenised_by_several_processes_to_the_same_ids(tmp_path, tokenizer, monkeypatch):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}" + " more" * (i % 7)},
                          {"role": "assistant", "content": f"Answer {i}"}]} for i in range(40)]
    cfg = DataConfig(dataset=str(write_jsonl(tmp_path / "d.jsonl", rows)), eval_fraction=0)
    alone = data.prepare_for_training(cfg, str(FIXTURE), max_length=64)
    monkeypatch.setattr(tokens, "TOKENIZE_PARALLEL_ROWS", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert tokens._tokenize_procs(40) == 3 and tokens._tokenize_procs(9) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # three ranks on this machine share its cores
    assert tokens._tokenize_procs(40) is None
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    together = data.prepare_for_training(cfg, str(FIXTURE), max_length=64)
    assert together.train.to_dict() == alone.train.to_dict() and len(together.train) == 40
