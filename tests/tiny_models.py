"""Tiny transformers models built from configs (no downloads), for layer-swapping tests."""
import torch


def tiny_model(kind: str):
    import transformers as tf

    common = dict(vocab_size=128)
    if kind == "llama":
        cfg = tf.LlamaConfig(hidden_size=96, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, **common)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=96, n_layer=2, n_head=4, n_positions=64, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "opt":
        cfg = tf.OPTConfig(hidden_size=96, ffn_dim=200, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64, word_embed_proj_dim=96, **common)
        model = tf.OPTForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=96, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, **common)
        model = tf.Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return model.eval()


KINDS = ("llama", "gpt2", "opt", "qwen2")


def tokens(batch=2, seq=12):
    return torch.randint(0, 128, (batch, seq))
