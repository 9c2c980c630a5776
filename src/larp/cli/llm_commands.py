"""``larp llm-data``: interleaved caption + video training data for a Hugging Face language model (larp.llm)."""

from __future__ import annotations

import argparse

from larp.cli.arguments import positive_int


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "llm-data",
        help="write text+video LM training data (Parquet input_ids/labels) from a token dataset and captions",
        description="Extends a Hugging Face tokenizer with the video tokens (<|video_start|>, <|video_end|>, "
        "<|window|>, <|v0|> ... in one contiguous block after its vocabulary), then writes one sequence per video "
        "of the token dataset: caption then video (--order text-video, loss on the video) or video then caption "
        "(--order video-text, loss on the caption). OUT gets shard-*.parquet (input_ids, attention_mask, labels; "
        "readable by datasets and transformers.Trainer), _llm_data.json (with the vocabulary) and the extended "
        "tokenizer and its larp_vocabulary.json in OUT/_tokenizer (skipped by Parquet readers of OUT). "
        "Needs the llm extra: pip install \"larp[llm]\".",
    )
    parser.add_argument("dataset", metavar="DATASET", help="a token dataset folder (larp tokenize ... -o DATASET)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="the output folder")
    parser.add_argument("--tokenizer", required=True, metavar="NAME_OR_DIR",
                        help="the text tokenizer: a local folder or a Hugging Face model id (AutoTokenizer)")
    parser.add_argument("--captions", metavar="CSV",
                        help="a CSV with the columns video,caption (default: the dataset's caption column)")
    parser.add_argument("--order", choices=("text-video", "video-text"), default="text-video",
                        help="text-video: caption then video, for text-to-video (default); video-text: captioning")
    parser.add_argument("--loss", choices=("video", "text", "all"), default=None,
                        help="the part the labels cover (default: the second part of --order)")
    parser.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                        help="the most ids per sequence; longer videos lose their last windows (whole windows)")
    parser.add_argument("--fixed-length", action="store_true",
                        help="windows always hold the tokenizer's full N ids (decoding refuses shorter ones)")
    parser.set_defaults(run=run_llm_data)


def run_llm_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from larp.data.token_dataset import read_dataset_info
    from larp.llm import VideoVocabulary, write_interleaved

    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SystemExit("larp llm-data needs transformers: pip install \"larp[llm]\"") from None
    info = read_dataset_info(args.dataset)  # before loading anything: is it a token dataset?
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = VideoVocabulary.extend(tokenizer, info, fixed_length=args.fixed_length)
    out = Path(args.out)
    result = write_interleaved(args.dataset, out, tokenizer, vocab, captions=args.captions, order=args.order,
                               loss=args.loss, max_length=args.max_length)
    tokenizer.save_pretrained(out / "_tokenizer")  # "_": Parquet readers of OUT skip it
    vocab.save(out / "_tokenizer")
    print(f"{result['rows']} sequences ({args.order}, {result['shards']} shards, "
          f"{result['sequence_length']['min']}-{result['sequence_length']['max']} ids) in {out}; "
          f"video ids {vocab.base}..{vocab.end - 1}; left out: {result['no_caption']} without a caption, "
          f"{result['too_long']} too long; {result['cut']} cut at a window boundary")
    return 0
