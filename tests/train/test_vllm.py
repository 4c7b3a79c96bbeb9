"""GRPO with vLLM as the rollout engine, the parts that need no vLLM: the engine's context length."""

from types import SimpleNamespace


def test_engine_context_fits_the_longest_allowed_prompt_not_the_first_batch():
    from aha.train.vllm import max_model_len

    def trainer(prompt, completion, engine=None, positions=512):
        args = SimpleNamespace(max_prompt_length=prompt, max_completion_length=completion, vllm_max_model_length=engine)
        return SimpleNamespace(
            args=args, model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions))
        )

    assert max_model_len(trainer(128, 64)) == 192
    assert max_model_len(trainer(512, 64)) == 512  # capped by the model's positions
    assert max_model_len(trainer(128, 64, engine=300)) == 300  # the user's choice wins
    assert max_model_len(trainer(None, 64)) is None  # prompts not truncated: the model's own limit
