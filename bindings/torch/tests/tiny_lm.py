"""A tiny causal LM for the TRL tests (test_trl.py, test_trl_head.py): a
randomly initialised transformers Llama, a word-level tokenizer over a few
words and small datasets, all built here (nothing is downloaded)."""
import copy

import torch

WORDS = "the a cat dog sat ran on mat log fast slow big small red blue green".split()


def tokenizer():
    """A word-level fast tokenizer: [PAD] 0, [EOS] 1, [UNK] 2, then WORDS."""
    import tokenizers
    import transformers
    vocab = {w: i for i, w in enumerate(["[PAD]", "[EOS]", "[UNK]"] + WORDS)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="[EOS]",
                                                pad_token="[PAD]", unk_token="[UNK]")


def tiny_llama(vocab_size, seed=20261207, **config):
    """A 1-layer Llama (hidden 16), random weights from `seed`; extra config
    attributes (logit_scale, final_logit_softcapping, ...) as keywords."""
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, eos_token_id=1, bos_token_id=None, **config)
    return transformers.LlamaForCausalLM(cfg)


def policy_and_reference(vocab_size, seed=20261207):
    """(policy, reference): the reference a tiny_llama, the policy a copy moved
    away from it (0.3 standard normal noise on every weight)."""
    ref = tiny_llama(vocab_size, seed)
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy, ref


PREFERENCES = {
    "prompt": ["the cat", "a dog", "the big red", "a small"],
    "chosen": [" sat on the mat", " ran", " dog ran fast", " cat sat"],
    "rejected": [" ran", " sat on a log slow", " cat", " blue dog ran on the mat"],
}
