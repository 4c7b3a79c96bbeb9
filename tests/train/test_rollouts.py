"""aha.train.rollouts without a model: the vLLM engine's context length."""

from types import SimpleNamespace


def test_engine_context_fits_the_longest_allowed_prompt_not_the_first_batch():
    from aha.train.rollouts import RolloutSource

    def trainer(prompt, completion, engine=None, positions=512):
        args = SimpleNamespace(max_prompt_length=prompt, max_completion_length=completion, vllm_max_model_length=engine)
        source = RolloutSource.__new__(RolloutSource)  # only the method under test, no model
        source.args, source.model = args, SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions))
        return source

    assert trainer(128, 64).max_model_len() == 192
    assert trainer(512, 64).max_model_len() == 512  # capped by the model's positions
    assert trainer(128, 64, engine=300).max_model_len() == 300  # the user's choice wins
    assert trainer(None, 64).max_model_len() is None  # prompts not truncated: the model's own limit
