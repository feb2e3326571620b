from vllm_fleet.engine_config import instance_config, normalise_key, path_ancestors


def test_keys_are_normalised_to_long_option_names():
    assert normalise_key("max_model_len") == "max-model-len"
    assert normalise_key("--max-model-len") == "max-model-len"


def test_unset_engine_args_are_left_to_vllm():
    cfg = instance_config({"name": "a", "port": 8000}, {"max-model-len": None, "dtype": "bfloat16"})
    assert cfg == {"dtype": "bfloat16"}


def test_instance_args_override_role_wide_args_whatever_the_spelling():
    cfg = instance_config(
        {"name": "a", "port": 8000, "args": {"max_model_len": 4096}},
        {"max-model-len": 8192, "dtype": "bfloat16"},
    )
    assert cfg == {"max-model-len": 4096, "dtype": "bfloat16"}


def test_unknown_extra_args_pass_through_untouched():
    extra = {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}, "enable-lora": True}
    cfg = instance_config({"name": "a", "port": 1}, {}, extra)
    assert cfg == {"speculative-config": {"method": "ngram", "num_speculative_tokens": 3}, "enable-lora": True}


def test_extra_args_override_named_args_and_instance_overrides_both():
    cfg = instance_config({"name": "a", "port": 1, "args": {"block-size": 32}},
                          {"block-size": 8}, {"block_size": 16})
    assert cfg["block-size"] == 32
    assert instance_config({"name": "a", "port": 1}, {"block-size": 8}, {"block_size": 16})["block-size"] == 16


def test_path_ancestors():
    assert path_ancestors("/srv/vllm/models") == ["/", "/srv", "/srv/vllm", "/srv/vllm/models"]
    assert path_ancestors("/") == ["/"]
