import pytest
import yaml

from koserve.errors import ConfigError
from koserve.profiles import builtin_profile_names, load_profile


def test_builtin_profiles_ship():
    assert builtin_profile_names() == ["akallama-70b", "komt-13b"]


def test_akallama_profile_matches_llama3_70b_and_card():
    p = load_profile("akallama-70b")
    a = p.architecture
    assert (a.num_layers, a.hidden_size, a.num_attention_heads, a.num_kv_heads) == (80, 8192, 64, 8)
    assert (a.vocab_size, a.max_position_embeddings, a.head_dim) == (128256, 8192, 128)
    assert 70.0e9 < a.num_parameters < 71.0e9  # Llama-3-70B has 70.6 B parameters
    assert p.generation.end_ids == [128009, 128001]  # <|eot_id|> and <|end_of_text|>
    assert p.end_id == 128009
    assert (p.generation.temperature, p.generation.top_p, p.generation.max_new_tokens) == (0.6, 0.9, 256)
    system = p.chat.default_system_prompt
    assert "AkaLlama (아카라마)" in system and all(f"{n}. " in system for n in range(1, 5))


def test_komt_profile_matches_llama2_13b_and_card():
    p = load_profile("komt-13b")
    a = p.architecture
    assert (a.num_layers, a.hidden_size, a.num_attention_heads, a.num_kv_heads) == (40, 5120, 40, 40)
    assert (a.vocab_size, a.max_position_embeddings) == (32000, 4096)
    assert 12.9e9 < a.num_parameters < 13.1e9
    g = p.generation
    assert g.stop_words == ["<|end|>", "<s>", "###"] and g.end_ids == [2]
    assert (g.temperature, g.top_p, g.top_k, g.max_new_tokens) == (0.9, 0.7, 100, 2048)


def _write(tmp_path, data):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _base():
    return load_profile("komt-13b").model_dump()


def test_user_profile_file_loads(tmp_path):
    data = _base()
    data["name"] = "my-komt"
    assert load_profile(str(_write(tmp_path, data))).name == "my-komt"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["generation"].update(top_p=1.5), "generation.top_p"),
        (lambda d: d["generation"].update(temperature=-1), "generation.temperature"),
        (lambda d: d["generation"].update(end_ids=[]), "generation.end_ids"),
        (lambda d: d["generation"].update(end_ids=[40000]), "outside the vocabulary (vocab_size 32000)"),
        (lambda d: d["architecture"].update(num_kv_heads=3), "not a multiple of num_kv_heads 3"),
        (lambda d: d["chat"].update(format="chatml"), "chat.format"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["generation"].update(stop_words=["###", ""]), "empty string"),
    ],
)
def test_bad_profile_fields_name_the_field(tmp_path, mutate, message):
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        load_profile(str(_write(tmp_path, data)))
    assert message in str(err.value)


def test_unknown_profile_lists_builtins():
    with pytest.raises(ConfigError, match="akallama-70b, komt-13b"):
        load_profile("gpt-5")


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(str(path))
