"""Model kind transformer on decoders (GPT-2, Llama): causal attention kept, the last real token pooled, no token
type ids, a tokenizer without a padding token. The models are tiny, randomly initialized and saved to a temporary
folder with a byte-level BPE tokenizer trained on the built-in sentences (nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from affinity.cli import app
from affinity.kinds import load_data, make_model
from affinity.manifest import parse_manifest
from affinity.torchvision_compat import import_torchvision
from test_text import TINY as ENCODER_TINY
from test_text import assert_per_sample_gradients_equal_autograd, lora_off_zero

import_torchvision()  # before transformers' model modules are imported

TINY = {**ENCODER_TINY, "model": {**ENCODER_TINY["model"], "max_length": 24}}  # byte-level BPE: more tokens per text


def _tokenizer(padding_side: str):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from affinity.data.sentences import make_sentences

    texts = [t[0] for t in make_sentences({"rows_per_task": 12}).texts]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    # a decoder's tokenizer: an end-of-text token, no padding token, no token type ids
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", padding_side=padding_side,
                                   model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    root = tmp_path_factory.mktemp("decoders")
    torch.manual_seed(0)
    made = {}
    for name, side in (("gpt2", "right"), ("llama", "left")):  # Llama's tokenizers pad on the left
        tok = _tokenizer(side)
        vocab = len(tok)
        model = (GPT2Model(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0))
                 if name == "gpt2" else
                 LlamaModel(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=None)))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        made[name] = root / name
    return made


def _job(folder, **model):
    raw = json.loads(json.dumps(TINY))
    raw["model"].update(pretrained=str(folder), **model)
    m = parse_manifest(raw)
    data = load_data(m)
    return m, data, make_model(m.model, data, 0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_decoder_keeps_causal_attention_and_pools_the_last_real_token(folders, name):
    from transformers import AutoModel

    m, data, model = _job(folders[name])
    assert model.causal and model.pooling == "last" and not model.token_types
    reference = AutoModel.from_pretrained(folders[name], local_files_only=True).eval()  # as saved: no LoRA, no mask
    X = torch.as_tensor(data.X[:6])
    lengths = (X[:, 0] != model.pad_id).sum(1)
    assert lengths.min() < lengths.max()  # the batch pads its shorter texts (on the right)
    with torch.no_grad():
        got = model.pooled(X)
        for row, n in enumerate(lengths.tolist()):
            ids = X[row, 0, :n][None]
            assert int(ids[0, -1]) != model.pad_id and (X[row, 0, n:] == model.pad_id).all()
            want = reference(input_ids=ids).last_hidden_state[0, -1]  # LoRA's B starts at zero: the same network
            assert torch.allclose(got[row], want, atol=1e-5)


def test_an_encoder_is_not_taken_for_a_decoder():
    m = parse_manifest(TINY)
    model = make_model(m.model, load_data(m), 0)
    assert not model.causal and model.pooling == "mean" and model.token_types


def test_decoder_per_sample_lora_gradients_equal_autograd(folders):
    _, data, model = _job(folders["llama"])
    assert_per_sample_gradients_equal_autograd(lora_off_zero(model), data)


def test_a_job_runs_on_a_decoder(folders, tmp_path):
    raw = json.loads(json.dumps(TINY))
    raw["model"]["pretrained"] = str(folders["gpt2"])
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    groups = json.loads((tmp_path / "run" / "groups.json").read_text())
    assert sorted(t for g in groups["groups"] for t in g) == [f"task_{t:02d}" for t in range(5)]


def test_a_tokenizer_without_padding_or_end_of_text_is_a_one_line_error(folders, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "nopad"
    shutil.copytree(folders["gpt2"], folder)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tok.eos_token = tok.bos_token = None
    tok.save_pretrained(folder)
    raw = json.loads(json.dumps(TINY))
    raw["model"]["pretrained"] = str(folder)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.pretrained 'nopad'" in errors[0] and "pad_token" in errors[0], result.output
