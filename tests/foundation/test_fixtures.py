import json

from tokenizers import Tokenizer

from koserve.fixtures import tiny_model_dir, tokenizer_dir


def _tok(family):
    return Tokenizer.from_file(str(tokenizer_dir(family) / "tokenizer.json"))


def test_llama3_fixture_is_the_real_instruct_vocabulary():
    tok = _tok("llama3")
    assert tok.get_vocab_size() == 128256
    assert tok.encode("Hello world", add_special_tokens=False).ids == [9906, 1917]
    assert tok.encode("안녕하세요, 반갑습니다", add_special_tokens=False).ids == [101193, 124409, 11, 64857, 115072, 39331]
    ids = {t: tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
    assert ids == {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
                   "<|end_header_id|>": 128007, "<|eot_id|>": 128009}
    config = json.loads((tokenizer_dir("llama3") / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|eot_id|>"


def test_llama2_fixture_reproduces_llama2_ids():
    tok = _tok("llama2")
    assert tok.get_vocab_size() == 32000
    assert tok.encode("Hello world").ids == [1, 15043, 3186]
    assert tok.encode("[INST]", add_special_tokens=False).ids == [518, 25580, 29962]
    enc = tok.encode("안녕하세요, 반갑습니다", add_special_tokens=False)
    assert len(enc.ids) == 21
    assert sum(t.startswith("<0x") for t in enc.tokens) == 12
    assert enc.tokens[2:5] == ["<0xEB>", "<0x85>", "<0x95>"]  # 녕 as three byte-fallback tokens
    assert tok.decode(tok.encode(" 두 칸  공백 ").ids) == " 두 칸  공백 "


def test_tiny_models_are_complete_checkpoint_folders():
    for family, vocab in (("llama3", 128256), ("llama2", 32000)):
        folder = tiny_model_dir(family)
        config = json.loads((folder / "config.json").read_text())
        assert config["vocab_size"] == vocab and config["num_hidden_layers"] == 2
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_tiny_models_sample_hangul_tokens():
    import torch
    from transformers import AutoModelForCausalLM

    from koserve.fixtures import hangul_token_ids

    for family in ("llama3", "llama2"):
        folder = tiny_model_dir(family)
        hangul = set(hangul_token_ids(folder / "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(folder)
        prompt = torch.tensor([Tokenizer.from_file(str(folder / "tokenizer.json")).encode("안녕").ids])
        torch.manual_seed(0)
        out = model.generate(prompt, do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=40)
        new = out[0, prompt.shape[1]:].tolist()
        assert len(new) == 40
        assert sum(t in hangul for t in new) >= 36, new
