"""Test helper (not a test): a briefly trained tiny student, shared by the export and MLX tests.

A random-weight student is chaotic — any weight rounding flips its argmax — so quantization gates
are checked on the tiny student after 40 full fine-tuning steps on the export probe posts, which
gives peaked greedy choices like a real trained student's.
"""

from pathlib import Path

import torch

from export.source import load_source
from export.validate import probe_posts
from mmkp_edge import prompt
from train.collate import train_batch


def train_steps(model, batch, steps: int, lr: float = 1e-2) -> None:
    """`steps` AdamW steps on one batch over the trainable parameters; leaves the model in eval."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def train_briefly(tiny_dir: Path, probe_folder: Path, out: Path, steps: int = 40) -> Path:
    src = load_source(str(tiny_dir))
    posts = probe_posts(probe_folder, 8)
    targets = [prompt.direct_target(p.text.lower().replace(",", "").split()[:2]) for p in posts]
    torch.manual_seed(0)
    model = src.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = train_batch(src.processor, posts, targets)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(out)
    src.processor.save_pretrained(out)
    return out


# ChatML as SmolLM2 / Qwen write it: string contents only, `<|im_end|>` ends a turn.
CHATML_TEXT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def save_text_model(out: Path, seed: int = 0, tie: bool = True) -> Path:
    """A tiny random *text-only* Llama checkpoint like SmolLM2-Instruct's: ChatML template,
    `<|im_end|>` as eos, no image tokens and none of the prompt's tags (what `init-student` and
    `load_student` must cope with)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from train.tiny import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token=None)
    fast.chat_template = CHATML_TEXT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=tie,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)       # large std: see train.tiny (small weights decode trivially)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
