"""Our GGUF conversion (radixfair_model_format.gguf_conversion, reading through gguf_file) against the
gguf package's own reading, the reference implementation llama.cpp ships and transformers reads through.

The packaged SmolLM2 is converted once per module into a scratch directory; its tensors are
checked against gguf's reader and dequantizer (with llama.cpp's own q/k row order put back), its
config against the GGUF's metadata, and its tokenizer by behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize as reference_dequantize
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from radixfair.tokenization import ChatTurn, PromptEncoder
from radixfair_model_format.gguf_conversion import hf_name, write_llama_model_dir
from radixfair_model_format.gguf_file import GGUFFile, UnsupportedGGUFError
from radixfair_model_format.model_config import ModelConfig
from radixfair_model_format.model_store import is_complete, packaged_gguf_path


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGML" + bytes(60))

    with pytest.raises(UnsupportedGGUFError):
        GGUFFile(path)


def test_a_gguf_cut_short_in_its_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    with packaged_gguf_path().open("rb") as packaged:
        path.write_bytes(packaged.read(1000))  # magic and version, then the metadata stops

    with pytest.raises(UnsupportedGGUFError, match="not a readable GGUF file"):
        GGUFFile(path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("converted")
    write_llama_model_dir(packaged_gguf_path(), target)
    return target


@pytest.fixture(scope="module")
def reference() -> GGUFReader:
    return GGUFReader(packaged_gguf_path())


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter's reordering of a q or k projection's rows (halves -> pairs)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def test_every_tensor_is_the_gguf_packages_dequantized_tensor(converted: Path, reference: GGUFReader) -> None:
    ours = load_file(converted / "model.safetensors")
    config = json.loads((converted / "config.json").read_text())

    assert set(ours) == {hf_name(t.name) for t in reference.tensors}
    for tensor in reference.tensors:
        expected = reference_dequantize(tensor.data, tensor.tensor_type).reshape(
            ours[hf_name(tensor.name)].shape
        )
        got = ours[hf_name(tensor.name)]
        if tensor.name.endswith("attn_q.weight"):
            got = llama_cpp_permute(got, config["num_attention_heads"])
        elif tensor.name.endswith("attn_k.weight"):
            got = llama_cpp_permute(got, config["num_key_value_heads"])
        assert got.dtype == torch.float32, tensor.name
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(expected, dtype=np.float32))), (
            tensor.name
        )


def test_the_config_is_the_gguf_metadata(converted: Path, reference: GGUFReader) -> None:
    def meta(key: str) -> object:
        return reference.get_field(key).contents()

    config = ModelConfig.from_hf_config(converted / "config.json")

    assert config.vocab_size == len(meta("tokenizer.ggml.tokens"))
    assert config.hidden_size == meta("llama.embedding_length")
    assert config.intermediate_size == meta("llama.feed_forward_length")
    assert config.num_hidden_layers == meta("llama.block_count")
    assert config.num_attention_heads == meta("llama.attention.head_count")
    assert config.num_key_value_heads == meta("llama.attention.head_count_kv")
    assert config.max_position_embeddings == meta("llama.context_length")
    assert config.rope_theta == meta("llama.rope.freq_base")
    assert config.rms_norm_eps == pytest.approx(meta("llama.attention.layer_norm_rms_epsilon"), rel=1e-7)
    # No output.weight in the file: the head shares the embedding.
    assert config.tie_word_embeddings
    assert is_complete(converted)


def test_the_tokenizer_keeps_the_gguf_vocabulary_and_chat_template(
    encoder: PromptEncoder, reference: GGUFReader
) -> None:
    tokens = reference.get_field("tokenizer.ggml.tokens").contents()

    ids = encoder.encode_chat([ChatTurn("user", "Hello there, SmolLM!")])

    # The control tokens are single ids, the template is the GGUF's own.
    assert ids[0] == tokens.index("<|im_start|>")
    assert ids.count(tokens.index("<|im_end|>")) == 2
    assert encoder.render_chat([ChatTurn("user", "hi")]).startswith("<|im_start|>system\n")
    assert encoder.vocab_size == len(tokens)


@pytest.fixture(scope="module")
def encoder(converted: Path) -> PromptEncoder:
    return PromptEncoder(converted)


# SmolLM2's byte-level vocabulary has no token for the bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d or
# UTF-8 lead bytes 0xf1-0xf4 (code points from U+40000): its original tokenizer drops them too.
VOCABULARY_TEXT = st.text(
    alphabet=st.characters(
        max_codepoint=0x3FFFF, exclude_categories=("Cs",), exclude_characters="\x04\x06\x13\x14\x16\x1d"
    ),
    max_size=80,
)


@given(text=VOCABULARY_TEXT)
def test_the_tokenizer_round_trips_any_text(encoder: PromptEncoder, text: str) -> None:
    assert encoder.decode(encoder.encode_text(text)) == text


def test_without_the_gguf_package_the_conversion_is_one_clear_error(tmp_path: Path) -> None:
    # A worker installed without its `convert` extra: gguf cannot be imported (None in sys.modules is
    # how Python marks a module as unimportable). The error is a ModelNotFoundError (an OSError: the
    # services print it as one start-up line) naming the package and the extra, and nothing is written.
    script = (
        "import sys; sys.modules['gguf'] = None\n"
        "from pathlib import Path\n"
        "from radixfair_model_format.model_store import ModelNotFoundError, convert_packaged_gguf\n"
        "try:\n"
        f"    convert_packaged_gguf(Path({str(tmp_path / 'model')!r}))\n"
        "except ModelNotFoundError as error:\n"
        "    print('refused:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "'gguf'" in result.stdout and "convert" in result.stdout
    assert not (tmp_path / "model").exists()
