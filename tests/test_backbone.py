import json

import pytest
import torch

from tsrec.core.config import section
from tsrec.core.errors import ParamError, TsrecError
from tsrec.lm.llm import (
    BackboneConfig,
    LoraParams,
    add_sid_tokens,
    clear_quantization,
    default_name,
    is_tied,
    load_backbone,
    prepare_for_finetune,
    resolve_source,
    truncate_layers,
)
from tsrec.data.sids import index_tokens


def test_load_backbone_fp32_tied(tiny_backbone):
    model, tok = load_backbone(tiny_backbone)
    assert is_tied(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.pad_token_id == tok.pad_token_id


def test_keep_layers(tiny_backbone, tmp_path):
    full, tok = load_backbone(tiny_backbone)
    model, _ = load_backbone(tiny_backbone, keep_layers=1)
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    assert is_tied(model)
    # the kept layer and the embedding table are the pretrained ones
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, full.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(model.get_input_embeddings().weight, full.get_input_embeddings().weight)
    ids = torch.tensor([tok("drill bit").input_ids])
    assert model(input_ids=ids).logits.shape[-1] == full.config.vocab_size
    model.save_pretrained(tmp_path / "cut")
    tok.save_pretrained(tmp_path / "cut")
    again, _ = load_backbone(tmp_path / "cut")
    assert len(again.model.layers) == 1
    with pytest.raises(ParamError, match="keep_layers"):
        truncate_layers(full, 3)
    with pytest.raises(ParamError, match="keep_layers"):
        section({"backbone": {"keep_layers": 0}}, "backbone", BackboneConfig)


def test_add_sid_tokens_single_ids_roundtrip_and_order(tiny_backbone):
    model, tok = load_backbone(tiny_backbone)
    n_old = len(tok)
    old = model.get_input_embeddings().weight.detach().clone()
    tokens = ["<b_3>", "<a_12>", "<c_0>", "<a_2>", "<b_3>"]
    ids = add_sid_tokens(model, tok, tokens)
    # ids aligned with the input; assigned in (level, code) order: a_2, a_12, b_3, c_0
    assert ids == [n_old + 2, n_old + 1, n_old + 3, n_old, n_old + 2]
    assert len(tok) == n_old + 4 == model.get_input_embeddings().weight.shape[0]
    assert model.config.vocab_size == n_old + 4
    assert is_tied(model)
    assert torch.equal(model.get_input_embeddings().weight[:n_old], old)
    enc = tok("<a_12><b_3><c_0>", add_special_tokens=False).input_ids
    assert enc == [n_old + 1, n_old + 2, n_old + 3]
    assert tok.decode(enc, skip_special_tokens=True) == "<a_12><b_3><c_0>"
    assert tok("Next: <a_2>", add_special_tokens=False).input_ids[-1] == n_old
    # idempotent: the same tokens again reuse the ids and do not grow the table
    assert add_sid_tokens(model, tok, ["<a_2>", "<c_0>"]) == [n_old, n_old + 3]
    assert len(tok) == n_old + 4
    with pytest.raises(TsrecError, match="not SID tokens"):
        add_sid_tokens(model, tok, ["drill"])


def test_index_tokens_sorted():
    index = {"1": ["<a_10>", "<b_2>", "<c_1>"], "2": ["<a_9>", "<b_2>", "<c_0>"]}
    assert index_tokens(index) == ["<a_9>", "<a_10>", "<b_2>", "<c_0>", "<c_1>"]


def test_clear_quantization_flags(tiny_backbone, tmp_path):
    model, _ = load_backbone(tiny_backbone)
    model.hf_quantizer = object()
    model.is_quantized = True
    model.quantization_method = "gguf"
    model.config.quantization_config = {"quant_method": "gguf"}
    model.config._is_quantized = True
    clear_quantization(model)
    assert model.hf_quantizer is None
    assert not getattr(model, "is_quantized", False)
    assert not hasattr(model, "quantization_method")
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model.config, "_is_quantized", False)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def _eff_rows(model, ids):
    """Effective input-embedding rows and output-head rows for ``ids`` (through any peft wrappers)."""
    inp = model.get_input_embeddings()(torch.tensor(ids))
    d = inp.shape[-1]
    out = model.get_output_embeddings()(torch.eye(d)).T[ids]  # row k of the head weight = head(e_k) columns
    return inp, out


def test_lora_new_rows_trainable_and_tied(tiny_backbone):
    model, tok = load_backbone(tiny_backbone)
    new = add_sid_tokens(model, tok, ["<a_0>", "<a_1>", "<b_0>"])
    old_row = model.get_input_embeddings().weight[5].detach().clone()
    peft_model = prepare_for_finetune(model, "lora", LoraParams(r=4, alpha=8, dropout=0.0), new)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert any("token_adapter" in n for n in trainable)
    assert not any(n.endswith("embed_tokens.weight") or "base_layer.weight" in n for n in trainable)
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[new[0], new[1], new[2], tok.eos_token_id]])
    before, _ = _eff_rows(peft_model, new)
    before = before.detach().clone()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    inp, out = _eff_rows(peft_model, new)
    assert not torch.allclose(inp, before)  # the new rows did train
    torch.testing.assert_close(inp, out)    # and the output head follows (tied)
    o_inp, o_out = _eff_rows(peft_model, [5])
    torch.testing.assert_close(o_inp[0], old_row)  # old vocabulary frozen
    torch.testing.assert_close(o_out[0], old_row)
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(merged.get_input_embeddings().weight[new], inp.detach())
    torch.testing.assert_close(merged.get_output_embeddings().weight[new], inp.detach())


def test_full_finetune_and_bad_mode(tiny_backbone):
    model, _ = load_backbone(tiny_backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    assert prepare_for_finetune(model, "full") is model
    assert all(p.requires_grad for p in model.parameters())
    assert is_tied(model)
    with pytest.raises(ParamError, match="finetune"):
        prepare_for_finetune(model, "qlora")
    with pytest.raises(ParamError, match="lora"):
        section({"backbone": {"lora": {"r": 0}}}, "backbone", BackboneConfig)
    with pytest.raises(ParamError, match="finetune"):
        section({"backbone": {"finetune": "half"}}, "backbone", BackboneConfig)


def test_resolve_source_and_names(tmp_path):
    assert default_name("Qwen/Qwen2.5-1.5B") == "qwen2.5-1.5b"
    assert default_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m-instruct.q4_1"
    assert resolve_source("Qwen/Qwen2.5-1.5B") == ("Qwen/Qwen2.5-1.5B", None)
    with pytest.raises(TsrecError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    assert resolve_source(str(tmp_path)) == (str(tmp_path), "m.gguf")


def test_hub_name_offline_fails_clearly(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(TsrecError, match="cannot load backbone"):
        load_backbone("no-such-org/no-such-model-tsrec")


def test_stage_converts_local_folder(tiny_backbone, tmp_path, capsys):
    from tsrec.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(f"backbone:\n  model: {tiny_backbone}\n  name: tiny\n  out: {tmp_path / 'bb'}\n")
    assert main(["--params", str(params), "backbone"]) == 0
    out = tmp_path / "bb" / "tiny"
    meta = json.loads((out / "tsrec_backbone.json").read_text())
    assert meta["architecture"] == "LlamaForCausalLM" and meta["tie_word_embeddings"] is True
    # no machine path in the output (another checkout must get the same DVC hash); the spec itself is a param
    assert str(tiny_backbone) not in json.dumps({k: v for k, v in meta.items() if k != "model"})
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model, _ = load_backbone(out)
    ref, _ = load_backbone(tiny_backbone)
    assert torch.equal(model.get_input_embeddings().weight, ref.get_input_embeddings().weight)
    capsys.readouterr()
    assert main(["--params", str(params), "backbone"]) == 0
    assert "up to date" in capsys.readouterr().out
    # --model overrides the spec; the folder name is then derived from it
    assert main(["--params", str(params), "backbone", "--model", str(tiny_backbone), "--out", str(tmp_path / "b2")]) == 0
    assert (tmp_path / "b2" / default_name(str(tiny_backbone)) / "model.safetensors").is_file()
    params.write_text("backbone:\n  keep_layers: -1\n")
    assert main(["--params", str(params), "backbone"]) == 2


def test_stage_builds_the_tiny_random_backbone_identically(tmp_path):
    from tsrec.cli import main

    params = tmp_path / "params.yaml"
    for out in ("a", "b"):
        params.write_text(f"backbone:\n  model: tiny\n  name: tiny\n  out: {tmp_path / out}\n")
        assert main(["--params", str(params), "backbone"]) == 0
    a, b = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():  # same bytes wherever it is built: the DVC output hash does not depend on the folder
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    assert json.loads((a / "tsrec_backbone.json").read_text())["source"].startswith("tsrec.lm.tiny")
