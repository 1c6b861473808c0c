"""What detokenizing one streamed token costs the worker's front, per token, on the packaged tokenizer.

The front makes the text of every request without stop strings (request_stream.RequestStream), one
``IncrementalDetokenizer.push`` per token: two ``Tokenizer.decode`` calls over a window of recent ids.
At 256 streams that is 256 pushes per engine step in one Python process. Measured against the
tokenizers library's own incremental decoder (``tokenizers.decoders.DecodeStream``, one Rust call per
token) on the same ids, with the texts compared.

    .venv/bin/python bench/engine/detokenize_cost.py            # a few seconds

Writes ``bench/results/detokenize_cost_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tokenizers.decoders import DecodeStream

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import RESULTS_DIR, write_results  # noqa: E402
from radixfair.tokenization import PromptEncoder  # noqa: E402
from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir  # noqa: E402


def per_token_us(ids: list[int], encoder: PromptEncoder) -> tuple[dict[str, float], bool]:
    """Mean microseconds per token of each decoder over ``ids`` (median of 5 rounds); same text?"""
    ours, theirs, texts = [], [], set()
    for _ in range(5):
        detokenizer = encoder.new_detokenizer()
        started = time.perf_counter()
        for token in ids:
            detokenizer.push([token])
        ours.append((time.perf_counter() - started) / len(ids) * 1e6)
        stream, pieces = DecodeStream(skip_special_tokens=False), []
        started = time.perf_counter()
        for token in ids:
            piece = stream.step(encoder._tokenizer, token)
            if piece:
                pieces.append(piece)
        theirs.append((time.perf_counter() - started) / len(ids) * 1e6)
        texts |= {detokenizer.text, "".join(pieces)}
    return {
        "IncrementalDetokenizer.push": float(np.median(ours)),
        "DecodeStream.step": float(np.median(theirs)),
    }, (len(texts) == 1)


def main() -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    encoder = PromptEncoder(resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser()))
    rng = np.random.default_rng(0)
    cases = {
        "random ids": rng.integers(1000, 40000, args.tokens).tolist(),
        "English text": encoder.encode_text(Path(__file__).read_text() * 4)[: args.tokens],
    }
    rows = []
    for name, ids in cases.items():
        costs, same = per_token_us(ids, encoder)
        rows += [{"ids": name, "decoder": k, "us_per_token": v, "same_text": same} for k, v in costs.items()]
    md = write_results(
        f"detokenize_cost_{args.tag}",
        rows,
        ["ids", "decoder", "us_per_token", "same_text"],
        {},
        (
            f"{args.tokens} ids pushed one at a time, as the front pushes a stream's tokens; median of 5 "
            "rounds; same_text: both decoders' whole texts were equal in every round. On a shared "
            "machine the absolute figures move with its load; the rows of a case run back to back."
        ),
        results_dir=Path(args.out_dir),
    )
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
