"""LDAELib.accel (precision, weight storage, oneDNN, host facts, allocator) and make_pipeline, which applies them."""
import pytest
import torch

from conftest import load_fixture
from LDAELib.evaluation import similarity as metrics
from LDAELib.errors import LDAEError
from LDAELib.pipeline import LDAEPipeline
from LDAELib.accel import cpu_has_fast_bf16, resolve_precision, tune_allocator
from LDAELib.pipeline import make_pipeline


def test_precision_choices_and_errors():
    assert resolve_precision("cpu", "float32", "float32") == (torch.float32, torch.float32)
    assert resolve_precision("cpu", "bfloat16", "auto") == (torch.bfloat16, torch.bfloat16)
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert resolve_precision("cpu", "float32", "auto") == (torch.float32, expected)
    with pytest.raises(LDAEError, match="GPUs only"):
        resolve_precision("cpu", "float16", "auto")
    with pytest.raises(LDAEError, match="GPUs only"):
        resolve_precision("cpu", "float32", "float16")
    with pytest.raises(LDAEError, match="unknown dtype"):
        resolve_precision("cpu", "auto", "auto")
    if not torch.cuda.is_available():
        with pytest.raises(LDAEError, match="no CUDA device"):
            make_pipeline(None, "cuda")


def test_allocator_tuning_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LDAE_TUNE_MALLOC", "0")
    assert tune_allocator() is False


def test_bfloat16_decoder_leaves_the_float32_loop_untouched(official_model):
    """Only the decoder changes precision: the encoding (z0, y_sem, z_T) is bit-identical to float32's,
    and the decoded edit stays close (fixture model, random weights: the hardest case we have)."""
    import copy

    x = load_fixture("pipeline_autoencode_ddim3.pt")["x_image"]
    ref = make_pipeline(copy.deepcopy(official_model), "cpu", "float32", "float32")
    mixed = make_pipeline(copy.deepcopy(official_model), "cpu", "float32", "bfloat16")
    assert mixed.decode_dtype == torch.bfloat16 and mixed.dtype == torch.float32
    assert next(mixed.model.autoencoder.decoder.parameters()).dtype == torch.bfloat16
    assert next(mixed.model.autoencoder.encoder.parameters()).dtype == torch.float32
    assert next(mixed.model.shift_unet.parameters()).dtype == torch.float32
    a, b = ref.encode(x, 3), mixed.encode(x, 3)
    assert torch.equal(a.z0, b.z0) and torch.equal(a.y_sem, b.y_sem) and torch.equal(a.z_T[3], b.z_T[3])
    ra, rb = ref.reconstruct(a, 3)[0, 0].numpy(), mixed.reconstruct(b, 3)[0, 0].numpy()
    assert abs(ra - rb).max() > 0  # it did run in bfloat16
    assert metrics.ssim(rb, ra) >= 0.995
    assert abs(ra - rb).max() <= 0.05 * (ra.max() - ra.min())


def test_preview_sampling_precision_is_chosen_from_the_hardware(monkeypatch):
    from LDAELib.accel import precision as runtime

    assert runtime.preview_sampling_dtype("cpu", "float32") is None
    assert runtime.preview_sampling_dtype("cpu", "bfloat16") is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.preview_sampling_dtype("cpu", "auto") is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.preview_sampling_dtype("cpu") is None
    with pytest.raises(LDAEError, match="preview precision"):
        runtime.preview_sampling_dtype("cpu", "half")


def test_float16_weight_storage_halves_the_shift_unet_and_keeps_its_arithmetic():
    """compact_weights rounds the weights once and widens them layer by layer: the same float32
    arithmetic on float16-rounded weights, half the weight memory. (Random weights: the fixture's
    weights happen to be exact in float16.)"""
    import copy

    from LDAELib.accel import compact_weights
    from LDAELib.testing import tiny_config
    from LDAELib.weights import random_model

    official_model = random_model(tiny_config(), seed=3)
    ref = copy.deepcopy(official_model.shift_unet)
    rounded = copy.deepcopy(official_model.shift_unet)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if name.endswith("weight") and p.ndim >= 2:
                p.copy_(p.half().float())
    compact = copy.deepcopy(official_model.shift_unet)
    before = sum(t.numel() * t.element_size() for t in list(compact.parameters()) + list(compact.buffers()))
    saved = compact_weights(compact, torch.float16)
    after = sum(t.numel() * t.element_size() for t in list(compact.parameters()) + list(compact.buffers()))
    assert saved > 0.45 * before and after == before - saved
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 3, 8, 8, 8, generator=g)
    y = torch.randn(1, official_model.config.unet.latent_dim, generator=g)
    t = torch.tensor([300])
    with torch.inference_mode():
        want, got, exact = rounded(z, t, y), compact(z, t, y), ref(z, t, y)
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # identical to float32 arithmetic on the rounded weights
    assert all(m.weight is None for m in compact.modules() if hasattr(m, "weight_stored"))  # nothing widened is kept
    for a, b in zip(got, exact):  # and close to the unrounded weights' output (float16 keeps 11 mantissa bits)
        assert 0 < float((a - b).abs().max() / b.abs().max()) < 5e-3


def test_weight_storage_is_chosen_from_the_memory_available(official_model, monkeypatch):
    from LDAELib.pipeline import factory as runtime

    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: 1 << 40)
    assert make_pipeline(official_model, "cpu", "float32", "float32").weight_storage == "float32"
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: 1 << 20)
    import copy

    pipe = make_pipeline(copy.deepcopy(official_model), "cpu", "float32", "float32")
    assert pipe.weight_storage == "float16" and any(hasattr(m, "weight_stored") for m in pipe.model.shift_unet.modules())
    with pytest.raises(LDAEError, match="weight storage"):
        make_pipeline(official_model, "cpu", "float32", "float32", weight_storage="int8")


def test_cpu_vector_level_names_the_widest_instructions():
    from LDAELib.accel import cpu_name, cpu_vector_level

    assert cpu_vector_level("flags\t\t: fpu sse avx avx2 fma") == "AVX2"
    assert cpu_vector_level("flags : avx avx2 avx512f avx512bw") == "AVX-512"
    assert cpu_vector_level("flags : avx avx2 avx512f avx512_bf16") == "AVX-512 BF16"
    assert cpu_vector_level("flags : avx avx2 avx512f amx_bf16") == "AVX-512 BF16"
    assert cpu_vector_level("flags : sse sse2") == ""
    level = cpu_vector_level()
    if level:
        assert cpu_name().endswith(f" ({level})")


def _conv_kernels(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "conv" in e.key}


def test_onednn_convolutions_replace_the_slow_fallback_and_keep_the_arithmetic():
    """The demo model's batch-1 latent convolutions fall to PyTorch's im2col path; switched, they run
    on oneDNN and give the same ε and g to float32 rounding. Wide layers keep PyTorch's choice."""
    from LDAELib.resources import default_model_path
    from LDAELib.accel import onednn_convolutions
    from LDAELib.weights import load_model

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    model = load_model(default_model_path())
    su = model.shift_unet.eval()
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    z, t, y = torch.randn((1, *cfg.latent_shape), generator=g), torch.tensor([500]), torch.randn((1, cfg.encoder.emb_dim), generator=g)
    with torch.inference_mode():
        ref = su(z, t, y)
        assert "aten::slow_conv3d_forward" in _conv_kernels(lambda: su(z, t, y))
        convs = [m for m in su.modules() if isinstance(m, torch.nn.Conv3d)]
        assert onednn_convolutions(su) == sum(m.in_channels <= 256 for m in su.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))) > 0
        out = su(z, t, y)
        if all(m.in_channels <= 256 for m in convs):
            assert "aten::slow_conv3d_forward" not in _conv_kernels(lambda: su(z, t, y))
    for r, o in zip(ref, out):
        assert not torch.equal(r, o) or r.abs().max() == 0  # another kernel did run
        assert float((r - o).abs().max()) <= 1e-5 * float(r.abs().max())

    wide = torch.nn.Conv3d(300, 4, 3, padding=1)
    narrow = torch.nn.Conv3d(8, 4, 3, padding=1, padding_mode="reflect")
    assert onednn_convolutions(torch.nn.Sequential(wide, narrow)) == 0


def test_make_pipeline_uses_onednn_on_the_cpu_and_keys_its_encodings_apart(official_model, tmp_path):
    import copy

    from LDAELib.pipeline import EncodingStore

    plain = LDAEPipeline(copy.deepcopy(official_model), "cpu", torch.float32)
    fast = make_pipeline(copy.deepcopy(official_model), "cpu", "float32", "float32")
    assert plain.conv_backend == "torch"
    assert fast.conv_backend == ("onednn" if torch.backends.mkldnn.is_available() else "torch")
    store = EncodingStore(tmp_path)
    if fast.conv_backend != "torch":
        assert store.path(plain, "k") != store.path(fast, "k")
