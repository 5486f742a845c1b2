"""`nanovlm bench` on the tiny preset: every measurement is there and positive (no assertions on speed)."""
import subprocess
import sys

import pytest
import torch

import nanovlm.sampling
from nanovlm.bench import format_results, run_benchmark
from nanovlm.config import ConfigError
from nanovlm.model.vlm import VisionLanguageModel

from conftest import tiny_config


@pytest.mark.parametrize("train_dtype,decode_dtype", [("bf16", "bf16"), ("fp32", "fp32")])
def test_run_benchmark_tiny(train_dtype, decode_dtype):
    r = run_benchmark("tiny", threads=1, batch_size=2, text_len=8, prompt_len=4, new_tokens=5,
                      train_dtype=train_dtype, decode_dtype=decode_dtype, steps=1, device="cpu",
                      reuse_memory=False)   # keep_freed_memory() would change malloc for the whole test process
    for key in ("train_step_s", "train_step_best_s", "train_tokens_per_s", "train_peak_mb", "prefill_s",
                "decode_tokens_per_s", "decode_best_tokens_per_s", "decode_e2e_tokens_per_s", "decode_peak_mb",
                "train_samples_per_s", "train_flops_per_step", "train_flops_per_s", "matmul_peak_flops_per_s",
                "matmul_peak_size"):
        assert r[key] > 0, key
    assert r["threads"] == 1 and r["device"] == "cpu" and r["parameters"] > 0
    assert r["train_tokens_per_step"] == 2 * (8 + tiny_config().image_tokens_per_image)
    table = format_results(r)
    assert "tiny" in table and "decode tokens/s" in table and "step time" in table and "share of matmul peak" in table


def test_count_flops_counts_matrix_products():
    from nanovlm.bench import count_flops
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_run_benchmark_skips_phases_and_rejects_bad_settings():
    r = run_benchmark("tiny", threads=2, text_len=4, prompt_len=2, new_tokens=0, steps=1, device="cpu",
                      reuse_memory=False)
    assert "train_step_s" in r and "decode_tokens_per_s" not in r
    assert "decode" not in format_results(r).split("\n", 1)[1]
    with pytest.raises(ConfigError, match="unknown preset"):
        run_benchmark("gigantic")
    with pytest.raises(ConfigError, match="decode_dtype"):
        run_benchmark("tiny", decode_dtype="fp8")
    with pytest.raises(ConfigError, match="max_seq_len"):
        run_benchmark("tiny", text_len=500)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_keep_freed_memory_in_a_fresh_process():
    code = "from nanovlm.bench import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() in ("True", "False")        # False on a Linux whose C library is not glibc (musl)


@pytest.mark.parametrize("make_cfg", ["gpt", "llama"])
def test_loss_on_labelled_positions_only_matches_full_logits(make_cfg):
    """return_logits=False computes lm_head only where labels != -100: same loss and gradients."""
    from test_model import _batch, _small_llama

    cfg = tiny_config() if make_cfg == "gpt" else _small_llama()
    model = VisionLanguageModel(cfg)
    ids, images = _batch(cfg, B=2, T=9)
    labels = ids.roll(-1, dims=1)
    labels[:, : cfg.image_tokens_per_image + 3] = -100          # loss on the "answer" only
    logits, full = model(ids, images, labels=labels)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    torch.testing.assert_close(full, expected)
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    none, selected = model(ids, images, labels=labels, return_logits=False)
    assert none is None
    torch.testing.assert_close(selected, full)
    selected.backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-4, msg=n)


def test_bf16_decode_leaves_the_onednn_switch_alone(monkeypatch):
    """generate() keeps all its state in the call: the process-wide oneDNN switch stays on while it decodes (other
    threads' matmuls must not change kernels under them), and after an error too."""
    cfg = tiny_config()
    model = VisionLanguageModel(cfg).eval().to(torch.bfloat16)
    from test_model import _batch

    ids, images = _batch(cfg, B=1)
    seen = []
    real_sample = nanovlm.sampling.sample

    def recording_sampler(*args, **kwargs):
        seen.append(torch.backends.mkldnn.enabled)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr("nanovlm.sampling.sample", recording_sampler)
    model.generate(ids, images.to(torch.bfloat16), max_new_tokens=3, eos_token_id=-1)
    assert seen == [True, True, True]

    def broken_sampler(*args, **kwargs):
        raise RuntimeError("sampler failed")

    monkeypatch.setattr("nanovlm.sampling.sample", broken_sampler)
    with pytest.raises(RuntimeError, match="sampler failed"):
        model.generate(ids, images.to(torch.bfloat16), max_new_tokens=3, eos_token_id=-1)
    assert torch.backends.mkldnn.enabled


def test_count_flops_is_none_where_torch_cannot_count():
    """torch's fused-attention FLOP formula asserts equal query and key/value heads (GQA on CUDA): the bench
    reports the step time without a FLOP rate instead of failing."""
    from nanovlm.bench import count_flops

    def uncountable():
        raise AssertionError("sdpa_flop_count: query/key/value shapes are incompatible")
    assert count_flops(uncountable) is None
