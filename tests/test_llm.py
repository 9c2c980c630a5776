"""larp.llm: the vocabulary bridge, the interleaved data, ``larp llm-data`` and the README's LM example."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="larp.llm's model tests need the llm extra: pip install 'larp[llm]'")
pytest.importorskip("tokenizers", reason="larp.llm's model tests need the llm extra: pip install 'larp[llm]'")

from larp.data.token_dataset import SPECIAL_TOKENS, shard_name, write_dataset_info, write_shard  # noqa: E402
from larp.llm import VideoVocabulary, read_captions, resize_embeddings, write_interleaved  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The README whose "Using LARP tokens in a language model" example is run (LARP_README overrides, for a
#: draft of the section).
README = Path(os.environ.get("LARP_README", ROOT / "README.md"))
WORDS = ["a", "red", "blue", "green", "square", "circle", "moving", "left", "right", "up", "down", "the", "is"]


def text_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_llama(vocab_size: int, *, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=256, tie_word_embeddings=tie))


# ------------------------------------------------------------------------------------------ vocabulary
def test_the_video_tokens_are_one_contiguous_block_after_the_text_vocabulary():
    tok = text_tokenizer()
    before = len(tok)
    vocab = VideoVocabulary.extend(tok, 256, tokens_per_window=32)
    assert (vocab.base, vocab.code_offset, vocab.end) == (before, before + 3, before + 3 + 256)
    assert len(tok) == vocab.end
    names = tok.convert_ids_to_tokens(list(range(before, vocab.end)))
    assert names[:3] == [SPECIAL_TOKENS["video_start"], SPECIAL_TOKENS["video_end"], SPECIAL_TOKENS["window_sep"]]
    assert names[3:] == [f"<|v{i}|>" for i in range(256)]
    # text is untouched, and a tokenizer extended before is accepted as is
    assert tok("a red square", add_special_tokens=False)["input_ids"] == [4, 5, 8]
    assert VideoVocabulary.extend(tok, 256, tokens_per_window=32) == vocab
    assert len(tok) == vocab.end


def test_extend_refuses_names_already_at_other_ids():
    tok = text_tokenizer()
    tok.add_tokens(["<|v5|>"], special_tokens=True)
    with pytest.raises(ValueError, match=r"not contiguous.*<\|v5\|>"):
        VideoVocabulary.extend(tok, 16)


@pytest.mark.parametrize("lengths", [[32, 32, 32], [32, 7, 1, 19]], ids=["fixed", "variable"])
def test_windows_round_trip_exactly(lengths):
    vocab = VideoVocabulary.extend(text_tokenizer(), 256, tokens_per_window=32)
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 256, n).tolist() for n in lengths]
    ids = vocab.encode(windows)
    assert len(ids) == 2 + len(lengths) + sum(lengths)
    assert ids[0] == vocab.video_start and ids[-1] == vocab.video_end
    assert [i for i, t in enumerate(ids) if t == vocab.window] == list(np.cumsum([1] + [n + 1 for n in lengths[:-1]]))
    assert vocab.decode(ids) == windows
    # the same windows as a (windows, N) array padded with -1 (the .npy convention), and as tensors
    padded = vocab.to_array(windows)
    assert padded.shape == (len(lengths), 32) and (padded[1, lengths[1]:] == -1).all()
    assert vocab.encode(padded) == ids
    assert vocab.encode([torch.tensor(w) for w in windows]) == ids
    # text around the video is skipped
    assert vocab.decode([4, 5] + ids + [3]) == windows


def test_malformed_sequences_are_refused_with_the_position():
    vocab = VideoVocabulary.extend(text_tokenizer(), 16, tokens_per_window=4, fixed_length=True)
    s, e, w, c = vocab.video_start, vocab.video_end, vocab.window, vocab.code_offset
    good = [s, w, c, c + 1, c + 2, c + 3, e]
    assert vocab.decode(good) == [[0, 1, 2, 3]]
    cases = {
        "code 1 outside a video": [4, c + 1] + good,
        "no <|video_end|>": good[:-1],
        "truncated window": [s, w, c, c + 1, e],
        "text id 5 inside a video": [s, w, c, 5, e],
        "empty window": [s, w, w, c, c, c, c, e],
        "more than tokens_per_window": [s, w] + [c] * 5 + [e],
        "<|video_end|> outside a video": [4, e],
        "found 2": good + good,
        "found 0": [4, 5],
    }
    for message, ids in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            vocab.decode(ids)
    # a generation cut off by a length limit: the finished windows are kept, the unfinished one dropped
    cut = [s, w, c, c + 1, c + 2, c + 3, w, c]
    assert vocab.decode(cut, complete=False) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="outside the codebook"):
        vocab.encode([[16]])
    with pytest.raises(ValueError, match="padding"):
        vocab.encode([[1, -1, 2, 3]])
    with pytest.raises(ValueError, match="truncated"):
        vocab.encode([[1, 2]])


def test_allowed_next_follows_the_grammar():
    vocab = VideoVocabulary.extend(text_tokenizer(), 8, tokens_per_window=2)
    s, e, w, c = vocab.video_start, vocab.video_end, vocab.window, vocab.code_offset
    assert vocab.allowed_next([2, 4]) == list(range(vocab.base)) + [s]
    assert vocab.allowed_next([2, s]) == [w]
    assert vocab.allowed_next([2, s, w]) == list(vocab.code_ids)
    assert vocab.allowed_next([2, s, w, c]) == list(vocab.code_ids) + [w, e]  # adaptive: 1 or 2 codes
    assert vocab.allowed_next([2, s, w, c, c]) == [w, e]
    assert vocab.allowed_next([2, s, w, c, e], text_ids=[4, 5], eos_id=3) == [4, 5, s, 3]


def test_save_load_and_check(tmp_path):
    tok = text_tokenizer()
    vocab = VideoVocabulary.extend(tok, 64, tokens_per_window=8)
    path = vocab.save(tmp_path)
    assert path.name == "larp_vocabulary.json"
    assert VideoVocabulary.load(tmp_path, tok) == vocab
    other = text_tokenizer()
    other.add_tokens(["extra"])
    VideoVocabulary.extend(other, 64)
    with pytest.raises(ValueError, match="does not match"):
        VideoVocabulary.load(path, other)
    (tmp_path / "x.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a larp-llm-vocabulary"):
        VideoVocabulary.load(tmp_path / "x.json")


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_resized_rows_are_the_mean_of_the_old_ones(tie):
    tok = text_tokenizer()
    model = tiny_llama(len(tok), tie=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    vocab = VideoVocabulary.extend(tok, 32)
    resize_embeddings(model, vocab)
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == new_out.shape[0] == vocab.end
    assert torch.equal(new_in[: vocab.base], old_in)
    torch.testing.assert_close(new_in[vocab.base:], old_in.mean(0).expand(vocab.end - vocab.base, -1))
    torch.testing.assert_close(new_out[vocab.base:], old_out.mean(0).expand(vocab.end - vocab.base, -1))
    logits = model(torch.tensor([[2, 4, vocab.video_start, vocab.window]])).logits
    assert logits.shape[-1] == vocab.end


# -------------------------------------------------------------------------------------- interleaved data
def token_dataset(folder: Path, lengths_per_video: list[list[int]], codebook: int = 64) -> list[list[list[int]]]:
    rng = np.random.default_rng(1)
    rows, videos = [], []
    for i, lengths in enumerate(lengths_per_video):
        windows = [rng.integers(0, codebook, n).tolist() for n in lengths]
        videos.append(windows)
        rows.append({"video": f"v{i}.mp4", "label": i % 2, "tokens": sum(windows, []), "window_lengths": lengths})
    folder.mkdir(parents=True)
    write_shard(folder / shard_name(0), rows, codebook)
    write_dataset_info(folder, {"codebook_size": codebook, "tokens_per_window": 8, "num_videos": len(rows),
                                "shards": [shard_name(0)], "complete": True})
    return videos


def test_interleaved_rows_order_mask_and_cut(tmp_path):
    videos = token_dataset(tmp_path / "tokens", [[8], [8, 3, 5], [8]])
    (tmp_path / "captions.csv").write_text("video,caption\nv0.mp4,a red square\nv1.mp4,the blue circle is up\n")
    captions = read_captions(tmp_path / "captions.csv")
    tok = text_tokenizer()
    vocab = VideoVocabulary.extend(tok, tmp_path / "tokens")
    assert (vocab.codebook_size, vocab.tokens_per_window) == (64, 8)
    info = write_interleaved(tmp_path / "tokens", tmp_path / "t2v", tok, vocab, captions=captions)
    from datasets import load_dataset

    assert (info["rows"], info["no_caption"], info["cut"]) == (2, 1, 0)
    assert VideoVocabulary.load(tmp_path / "t2v", tok) == vocab
    assert load_dataset(str(tmp_path / "t2v"), split="train").num_rows == 2  # the folder: the side file skipped

    rows = load_dataset("parquet", data_files=str(tmp_path / "t2v" / "shard-*.parquet"), split="train")
    text = tok("a red square", add_special_tokens=False)["input_ids"]
    first = rows[0]
    assert first["input_ids"] == [tok.bos_token_id] + text + vocab.encode(videos[0]) + [tok.eos_token_id]
    video_part = len(text) + 1
    assert first["labels"] == [-100] * video_part + first["input_ids"][video_part:]
    assert first["attention_mask"] == [1] * len(first["input_ids"])
    assert vocab.decode(rows[1]["input_ids"]) == videos[1]
    # captioning: video first, the loss on the caption and the end of sequence
    write_interleaved(tmp_path / "tokens", tmp_path / "v2t", tok, vocab, captions=captions, order="video-text")
    row = load_dataset("parquet", data_files=str(tmp_path / "v2t" / "shard-*.parquet"), split="train")[0]
    video = vocab.encode(videos[0])
    assert row["input_ids"] == [tok.bos_token_id] + video + text + [tok.eos_token_id]
    assert row["labels"] == [-100] * (1 + len(video)) + text + [tok.eos_token_id]
    # a maximum length cuts whole windows: video 1 keeps its first two windows (8 + 3 codes)
    text1 = tok("the blue circle is up", add_special_tokens=False)["input_ids"]
    limit = 2 + len(text1) + 2 + (1 + 8) + (1 + 3)
    info = write_interleaved(tmp_path / "tokens", tmp_path / "cut", tok, vocab, captions=captions, max_length=limit)
    rows = load_dataset("parquet", data_files=str(tmp_path / "cut" / "shard-*.parquet"), split="train")
    assert info["cut"] == 1 and len(rows[1]["input_ids"]) == limit
    assert vocab.decode(rows[1]["input_ids"]) == videos[1][:2]
    assert vocab.decode(rows[0]["input_ids"]) == videos[0]


def test_llm_data_command_writes_data_and_the_extended_tokenizer(tmp_path, capsys):
    from larp.cli.main import main

    videos = token_dataset(tmp_path / "tokens", [[8], [4, 8]])
    (tmp_path / "captions.csv").write_text("video,caption\nv0.mp4,a red square\nv1.mp4,a green circle\n")
    text_tokenizer().save_pretrained(tmp_path / "text-tokenizer")
    command = ["llm-data", str(tmp_path / "tokens"), "-o", str(tmp_path / "out"), "--tokenizer",
               str(tmp_path / "text-tokenizer"), "--captions", str(tmp_path / "captions.csv"), "--order", "video-text"]
    assert main(command) == 0
    assert "2 sequences (video-text" in capsys.readouterr().out
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "_tokenizer")
    vocab = VideoVocabulary.load(tmp_path / "out" / "_tokenizer", tok)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out")  # the folder is a Parquet dataset: the side file is skipped
    assert vocab.decode(table.column("input_ids")[1].as_py()) == videos[1]
    with pytest.raises(SystemExit):
        main(command + ["--max-length", "0"])
    assert "--max-length" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- README
def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using LARP tokens in a language model", 1)
    assert len(section) == 2, f"{README} has no section 'Using LARP tokens in a language model'"
    blocks = re.findall(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], flags=re.S)
    assert blocks, "the section has no ```python block"
    return blocks[0]


def test_the_readme_language_model_example_runs(tmp_path, monkeypatch):
    """The README's code, as written, with the pretrained model replaced by a tiny local one."""
    from larp.models.tokenizer import LARPTokenizer

    code = readme_example()
    for name in ("MODEL", "LARP_TOKENIZER", "DATASET", "CAPTIONS", "OUT"):
        assert re.search(rf"^{name} = ", code, flags=re.M), f"the README example sets no {name} = ..."
    # what the example would download or read, made here
    text_tokenizer().save_pretrained(tmp_path / "lm")
    tiny_llama(len(WORDS) + 4).save_pretrained(tmp_path / "lm")
    preset = LARPTokenizer.from_preset("larp-tiny").config
    larp = LARPTokenizer(dataclasses.replace(preset, nested_dropout=True))  # decodes windows of any length
    larp.save_pretrained(tmp_path / "larp-tokenizer")
    videos = token_dataset(tmp_path / "tokens", [[32], [32], [16, 32]], codebook=larp.config.quantizer.codebook_size)
    write_dataset_info(tmp_path / "tokens", {"codebook_size": larp.config.quantizer.codebook_size,
                                             "tokens_per_window": 32, "num_videos": 3, "complete": True})
    (tmp_path / "captions.csv").write_text("video,caption\nv0.mp4,a red square\nv1.mp4,a blue circle\n"
                                           "v2.mp4,a green square moving left\n")
    settings = {"MODEL": tmp_path / "lm", "LARP_TOKENIZER": tmp_path / "larp-tokenizer", "DATASET": tmp_path / "tokens",
                "CAPTIONS": tmp_path / "captions.csv", "OUT": tmp_path / "out"}
    for name, value in settings.items():
        code = re.sub(rf"^{name} = .*$", f"{name} = {str(value)!r}", code, count=1, flags=re.M)
    code = re.sub(r"^STEPS = .*$", "STEPS = 3", code, count=1, flags=re.M)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    # it generated a video, decoded to pixels of the LARP tokenizer's clip size
    video = namespace["video"]
    assert video.shape == (1, 3, larp.config.frame_num, larp.config.input_size, larp.config.input_size)
    assert (tmp_path / "out" / "model" / "larp_vocabulary.json").is_file()
    assert len(videos) == 3
