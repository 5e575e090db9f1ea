"""Benchmark: plmdiff.sampling.loop.sample_sequences vs the ZymCTRL lab's generation loop, one run.

The lab's loop (AI4PDLab DPO_pLM / ProtRL `seq_gen.py`): `model.generate` on 20 copies of the
prompt, `do_sample=True, top_k=9, repetition_penalty=1.2, eos_token_id=1, pad_token_id=0`, until
`max_length`. Ours: the same settings through `sample_sequences` (batch 'auto', finished rows
leave the batch). Both draw the same number of sequences from the same model; the score is
generated tokens per second (each loop's tokens up to and including its own stop token: `<end>`
for ours, `<|endoftext|>` for the lab's, which comes one token later), and the ratio.

CPU mode (default): a GPT-2 of the demo's shape (config/demo.yaml, ZymCTRL vocabulary), trained
briefly on the shipped family so that it ends its sequences at family-like lengths (random weights
never end one, which would hide what the lab's fixed-size batches waste). Target >= 2x.
`--checkpoint DIR` reuses a trained checkpoint (e.g. the demo's output_iteration0) instead.
The sides alternate `--repeats` times and each reports its median run.

--zymctrl-shape (CUDA): a random model of ZymCTRL's shape (36 x 1280, plmdiff.models.zymctrl). Its rows
end, if at all, at random; the score is tokens per second either way, so the sides stay
comparable. Target >= 5x.

Prints progress to stderr and one markdown table row to stdout:
| benchmark | device | model | sequences | max_length | ours tok/s | lab tok/s | ratio |

    .venv/bin/python bench/sampling.py [--n 200] [--max-length 512] [--threads 2]
    .venv/bin/python bench/sampling.py --zymctrl-shape [--n 200] [--max-length 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

LAB_BATCH = 20


def _demo_shape() -> dict:
    """The demo model's shape (config/demo.yaml)."""
    from plmdiff.config.schema import DEMO_CONFIG_PATH, load_config

    base = load_config(DEMO_CONFIG_PATH)["demo"]["base"]
    return {k: base[k] for k in ("n_layer", "n_embd", "n_head")}


DEMO_SHAPE = _demo_shape()
HEADER = "| benchmark | device | model | sequences | max_length | ours tok/s | lab tok/s | ratio |"


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def demo_model(train_steps: int, seed: int) -> tuple[object, object]:
    """The demo-size GPT-2 trained briefly on family sequences of <= 300 residues."""
    from plmdiff.models.lm_training import LMTrainingConfig, train_causal_lm
    from plmdiff.models.zymctrl import gpt2_config, load_zymctrl_tokenizer, new_gpt2
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS, family_sequences

    tokenizer = load_zymctrl_tokenizer()
    model = new_gpt2(gpt2_config(**DEMO_SHAPE), seed=seed)
    start = time.perf_counter()
    losses = train_causal_lm(
        model,
        tokenizer,
        ZYMCTRL_FORMAT,
        ZYMCTRL_IDS,
        family_sequences(max_length=300),
        LMTrainingConfig(epochs=100, lr=3e-3, batch_size=16, seed=seed, max_steps=train_steps),
    )
    say(
        f"trained {train_steps} steps in {time.perf_counter() - start:.0f} s, loss {losses[-1]:.3f}"
    )
    return model.eval(), tokenizer


def zymctrl_model(device: object) -> tuple[object, object]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from plmdiff.models.zymctrl import load_zymctrl_tokenizer, zymctrl_config_dict

    torch.manual_seed(0)
    config = GPT2Config(**{k: v for k, v in zymctrl_config_dict().items() if k != "architectures"})
    with torch.device(device):  # initialised on the GPU: minutes faster than on the CPU
        model = GPT2LMHeadModel(config)
    return model.eval(), load_zymctrl_tokenizer()


def lab_loop(model, prompt, n: int, max_length: int, special, device) -> tuple[int, float]:
    """The lab's loop; returns (generated tokens up to each row's eos, seconds)."""
    import torch

    ids = torch.tensor([prompt], device=device)
    tokens = 0
    start = time.perf_counter()
    for done in range(0, n, LAB_BATCH):
        rows = min(LAB_BATCH, n - done)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=9,
                repetition_penalty=1.2,
                max_length=max_length,
                eos_token_id=special.eos,
                pad_token_id=special.pad,
                num_return_sequences=rows,
            )
        generated = out[:, len(prompt) :].cpu()
        for row in generated.tolist():
            tokens += row.index(special.eos) + 1 if special.eos in row else len(row)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start


def our_loop(
    model, tokenizer, n: int, max_length: int, batch_size, device
) -> tuple[int, float, list]:
    import torch

    from plmdiff.config.sections import section_defaults
    from plmdiff.sampling.loop import sample_sequences
    from plmdiff.sampling.settings import SamplingSettings
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS

    settings = SamplingSettings.from_section(
        {**section_defaults("sampling"), "max_length": max_length, "batch_size": batch_size}
    )
    start = time.perf_counter()
    samples = sample_sequences(
        model, tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, range(n), settings, 1234, device
    )
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return sum(s.n_tokens for s in samples), time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="sequences per side")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", default="auto", help="ours: 'auto' or an integer")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--train-steps", type=int, default=250)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint")
    parser.add_argument("--save-checkpoint", type=Path, default=None)
    parser.add_argument("--zymctrl-shape", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side")
    args = parser.parse_args()

    import torch

    from plmdiff.models.checkpoints import load_model, load_tokenizer
    from plmdiff.models.text import prompt_ids
    from plmdiff.models.zymctrl import save_checkpoint
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS

    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    if args.zymctrl_shape:
        if not torch.cuda.is_available():
            sys.exit("--zymctrl-shape needs CUDA (a 738M-parameter model at 1024 tokens)")
        device = torch.device("cuda")
        model, tokenizer = zymctrl_model(device)
        label = "ZymCTRL shape (36x1280, random)"
    else:
        device = torch.device("cpu")
        if args.checkpoint:
            model, tokenizer = load_model(args.checkpoint), load_tokenizer(args.checkpoint)
            label = f"checkpoint {args.checkpoint.name}"
        else:
            model, tokenizer = demo_model(args.train_steps, seed=0)
            if args.save_checkpoint:
                save_checkpoint(model, tokenizer, args.save_checkpoint)
            label = (
                f"demo shape ({DEMO_SHAPE['n_layer']}x{DEMO_SHAPE['n_embd']}, "
                f"trained {args.train_steps} steps)"
            )
    prompt = prompt_ids(tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS)
    say(f"device {device}, {torch.get_num_threads()} threads, {label}, prompt {len(prompt)} tokens")

    # Warm-up (allocator, kernels, lazy imports) on both sides.
    lab_loop(model, prompt, 2, min(args.max_length, len(prompt) + 8), ZYMCTRL_IDS, device)
    our_loop(model, tokenizer, 2, min(args.max_length, len(prompt) + 8), batch_size, device)

    # The sides alternate and each keeps its median run: on a shared machine the speed drifts
    # by tens of percent within a minute, and alternating spreads the drift over both sides.
    ours_runs, lab_runs = [], []
    for repeat in range(args.repeats):
        ours_tokens, ours_s, samples = our_loop(
            model, tokenizer, args.n, args.max_length, batch_size, device
        )
        ours_runs.append((ours_tokens / ours_s, ours_tokens, ours_s))
        lab_tokens, lab_s = lab_loop(model, prompt, args.n, args.max_length, ZYMCTRL_IDS, device)
        lab_runs.append((lab_tokens / lab_s, lab_tokens, lab_s))
        say(
            f"run {repeat + 1}: ours {ours_tokens} tokens in {ours_s:.1f} s "
            f"({ours_tokens / ours_s:.0f} tok/s, {sum(s.ended for s in samples)}/{args.n} ended); "
            f"lab {lab_tokens} tokens in {lab_s:.1f} s ({lab_tokens / lab_s:.0f} tok/s)"
        )
    _, ours_tokens, ours_s = sorted(ours_runs)[len(ours_runs) // 2]
    _, lab_tokens, lab_s = sorted(lab_runs)[len(lab_runs) // 2]
    ratio = (ours_tokens / ours_s) / (lab_tokens / lab_s)
    say(HEADER)
    say("|---|---|---|---|---|---|---|---|")
    dev = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"| sampling | {dev} | {label} | {args.n} | {args.max_length} | "
        f"{ours_tokens / ours_s:.0f} | {lab_tokens / lab_s:.0f} | {ratio:.2f}x |"
    )


if __name__ == "__main__":
    main()
