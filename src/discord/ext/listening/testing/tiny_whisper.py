"""A tiny, randomly initialised Whisper model that faster-whisper loads offline: for tests of
:class:`~discord.ext.listening.WhisperRecognizer` (its loading and calling code), never for text.

Writes a CTranslate2 model (model.bin, config.json, vocabulary.json) plus tokenizer.json
(without it faster-whisper downloads openai/whisper-tiny's) and preprocessor_config.json.
Weights are random except for a planted bigram table, so every 30 s window decodes to
"<|0.00|> hello world <|1.00|>" with near-certainty: transcribe() is fast (no temperature
fallback) and its text predictable.  No torch or transformers needed.
"""

from __future__ import annotations

__all__ = ("EXPECTED_TEXT", "make_tiny_whisper")

import itertools
import json
import pathlib

import numpy as np
from ctranslate2.converters import Converter
from ctranslate2.specs import common_spec, transformer_spec, whisper_spec

# faster-whisper validates `language` against this list, so a multilingual model needs
# a token for each code (language detection also scores them all).
from faster_whisper.tokenizer import _LANGUAGE_CODES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

N_AUDIO_CTX = 1500  # 3000 mel frames (30 s) after the stride-2 conv; fixed by faster-whisper
N_TEXT_CTX = 448  # faster-whisper hard-codes max_length = 448
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps, as in real Whisper vocabularies
SCRIPT_WORDS = ("hello", "world")  # each word must be unique: the bigram table has no memory
SCRIPT_END = "<|1.00|>"
EXPECTED_TEXT = "".join(f" {word}" for word in SCRIPT_WORDS)  # Segment.text of every window


def build_vocabulary(multilingual: bool) -> list[str]:
    """Token strings in id order.  The order is real Whisper's and matters: ids below
    <|endoftext|> are text, ids after <|notimestamps|> are timestamps, and CTranslate2
    counts the languages between <|startoftranscript|> and <|nospeech|>."""
    # Byte-level alphabet with no merges: any string encodes (one token per byte), which
    # faster-whisper relies on when it builds its non-speech suppression list.
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Whole-word tokens for the planted script ("Ġ" is the byte-level space).  encode()
    # never produces them without merges, but decode() renders them as " hello" etc.
    tokens += [f"Ġ{word}" for word in SCRIPT_WORDS]
    if multilingual:
        # CTranslate2 >= 4.7 flags a model as multilingual iff "" is in the vocabulary
        # (real multilingual vocabularies have an empty token right before <|endoftext|>).
        tokens.append("")
    tokens += ["<|endoftext|>", "<|startoftranscript|>"]
    tokens += [f"<|{code}|>" for code in (_LANGUAGE_CODES if multilingual else ("en",))]
    tokens += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>"]
    tokens += ["<|nospeech|>", "<|notimestamps|>"]
    tokens += [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]
    return tokens


def build_tokenizer(tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # As special tokens, <|...|> are atomic when encoding and dropped from decoded text;
    # they keep the ids they already have in the BPE vocabulary.
    tokenizer.add_special_tokens([t for t in tokens if t.startswith("<|")])
    return tokenizer


class _SpecConverter(Converter):  # type: ignore[misc]
    """Sends a ready-made spec through convert() (validate, optimize, save), so the
    files are exactly what this CTranslate2 version writes for a real conversion."""

    def __init__(self, spec: whisper_spec.WhisperSpec) -> None:
        self._spec = spec

    def _load(self) -> whisper_spec.WhisperSpec:
        return self._spec


def language_ids(ids: dict[str, int]) -> list[int]:
    return [ids[f"<|{code}|>"] for code in _LANGUAGE_CODES if f"<|{code}|>" in ids]


def plant_script(ids: dict[str, int], embeddings: np.ndarray, projection: np.ndarray) -> None:
    """Overwrite part of the random decoder with a bigram table that spells the script.

    Each input token is assigned a "state"; its embedding gets a large component on
    dimension `state`, which survives the final LayerNorm and hits the projection row of
    that state's next token.  So embeddings and projection are NOT tied (Whisper ties them).
    """
    eot, start_ts, end_ts = ids["<|endoftext|>"], ids["<|0.00|>"], ids[SCRIPT_END]
    words = [ids[f"Ġ{w}"] for w in SCRIPT_WORDS]
    prompt_ends = [ids[t] for t in ("<|startoftranscript|>", "<|transcribe|>", "<|translate|>")]
    # (input tokens, next token) pairs.  State 0 (every token not listed, incl. <|0.00|>
    # and <|notimestamps|>) restarts the script, and <|endoftext|> is made very unlikely
    # except after SCRIPT_END, so off-script beams never finish early: CTranslate2's beam
    # search (length_penalty=1) stops once beam_size hypotheses have finished, and cheap
    # early endings would crowd out the real one.  The cost: the 4 losing beams run to
    # max_length (224 tokens, ~0.1 s); greedy decoding (beam_size=1) avoids it.
    chain = [(prompt_ends + language_ids(ids), start_ts)]
    chain += [([a], b) for a, b in itertools.pairwise(words)]
    chain += [([words[-1]], end_ts), ([end_ts], eot)]
    if len(chain) >= embeddings.shape[1]:
        raise ValueError("d_model too small for the planted script")
    state = np.zeros(len(embeddings), dtype=np.int64)
    targets = [words[0]]
    for inputs, target in chain:
        state[inputs] = len(targets)
        targets.append(target)
    embeddings[np.arange(len(embeddings)), state] += 1.0
    for s, target in enumerate(targets):
        projection[target, s] += 3.0  # ~+24 logit after LayerNorm: probability ~1 - 1e-7
        if target != eot:
            projection[eot, s] -= 3.0
    # Language detection compares only language logits at <|startoftranscript|>; a milder
    # boost makes it answer "en" without competing with <|0.00|>.
    projection[ids["<|en|>"], state[ids["<|startoftranscript|>"]]] += 1.5


def build_spec(
    tokens: list[str], d_model: int, num_layers: int, num_heads: int, n_mels: int, seed: int
) -> whisper_spec.WhisperSpec:
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        # Small weights keep the random parts of the network from drowning the planted table.
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def norm(spec: common_spec.LayerNormSpec) -> None:
        spec.gamma, spec.beta = np.ones(d_model, np.float32), zeros(d_model)

    def linear(spec: common_spec.LinearSpec, out_dim: int, in_dim: int) -> None:
        spec.weight, spec.bias = rand(out_dim, in_dim), zeros(out_dim)

    def block(
        layer: transformer_spec.TransformerEncoderLayerSpec | transformer_spec.TransformerDecoderLayerSpec,
    ) -> None:  # pre-norm self-attention + feed-forward, shared by both stacks
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * d_model, d_model)  # fused q, k, v
        linear(layer.self_attention.linear[1], d_model, d_model)
        norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, 4 * d_model, d_model)
        linear(layer.ffn.linear_1, d_model, 4 * d_model)

    spec = whisper_spec.WhisperSpec(num_layers, num_heads, num_layers, num_heads)
    enc = spec.encoder
    # CTranslate2 takes n_mels from conv1's input channels.
    enc.conv1.weight, enc.conv1.bias = rand(d_model, n_mels, 3), zeros(d_model)
    enc.conv2.weight, enc.conv2.bias = rand(d_model, d_model, 3), zeros(d_model)
    enc.position_encodings.encodings = rand(N_AUDIO_CTX, d_model)
    norm(enc.layer_norm)
    for layer in enc.layer:
        block(layer)

    dec = spec.decoder
    dec.position_encodings.encodings = rand(N_TEXT_CTX, d_model)
    norm(dec.layer_norm)
    for layer in dec.layer:
        block(layer)
        norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], d_model, d_model)  # query, from the decoder
        linear(layer.attention.linear[1], 2 * d_model, d_model)  # fused k, v, from the audio
        linear(layer.attention.linear[2], d_model, d_model)

    ids = {t: i for i, t in enumerate(tokens)}
    embeddings, projection = rand(len(tokens), d_model), rand(len(tokens), d_model)
    plant_script(ids, embeddings, projection)
    dec.embeddings.weight, dec.projection.weight = embeddings, projection

    spec.register_vocabulary(tokens)
    config = spec.config
    # Missing keys are not clean errors in CTranslate2: suppress_ids_begin is read when
    # suppress_blank=True (the default), alignment_heads for word_timestamps=True,
    # lang_ids for language detection, suppress_ids for suppress_tokens=[-1] (which
    # faster-whisper expands itself, so it may stay empty).
    config.suppress_ids = []
    config.suppress_ids_begin = [ids["Ġ"], ids["<|endoftext|>"]]  # " " and <|endoftext|>
    config.lang_ids = language_ids(ids)
    # Any heads do for random weights (real conversions list hand-picked or last-half heads).
    config.alignment_heads = [[i, h] for i in range(num_layers) for h in range(num_heads)]
    return spec


def make_tiny_whisper(
    directory: pathlib.Path,
    *,
    d_model: int = 64,
    num_layers: int = 1,
    num_heads: int = 2,
    n_mels: int = 80,
    multilingual: bool = False,
    seed: int = 0,
) -> pathlib.Path:
    """Write the model to ``directory / "tiny-whisper"`` (replacing it) and return that path.

    Every 30 s window of audio then transcribes to EXPECTED_TEXT.  A subdirectory is
    used because Converter.convert(force=True) deletes its target first.
    multilingual=False behaves like ``tiny.en`` (faster-whisper forces language "en" and
    prompts with <|startoftranscript|> only); multilingual=True enables language
    detection and every faster-whisper language code (needs CTranslate2 >= 4.7).
    """
    output = pathlib.Path(directory) / "tiny-whisper"
    tokens = build_vocabulary(multilingual)
    spec = build_spec(tokens, d_model, num_layers, num_heads, n_mels, seed)
    _SpecConverter(spec).convert(str(output), force=True)

    build_tokenizer(tokens).save(str(output / "tokenizer.json"))
    # Optional for faster-whisper (it defaults to 80 mels) but must agree with conv1.
    preprocessor = {"feature_size": n_mels, "sampling_rate": 16000, "hop_length": 160}
    (output / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return output
