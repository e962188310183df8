from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_backbone_loads_tied_and_tokenizes(tiny_backbone):
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    ids = tok("drill bit steel saw").input_ids
    assert tok.decode(ids) == "drill bit steel saw"
    assert tok.pad_token_id == tok.eos_token_id
