"""The CPU speed-ups change kernels, never results: checked against the plain modules."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SUBPROCESS_ENV, UnderFastKernels
from spatialmix.accel import native, speed
from spatialmix.core.mixing import apply_mixing
from spatialmix.models.convmixer import ConvMixer


def _channels_last(*shape):
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def test_channels_last_gelu_is_bitwise_nn_gelu_on_dense_memory_forward_and_backward():
    """Bitwise what nn.GELU gives on a contiguous tensor (its vectorized kernel); torch's strided
    channels_last kernel itself may differ from that in the last bit."""
    for approximate in ("none", "tanh"):
        fast, plain = UnderFastKernels(nn.GELU(approximate)), nn.GELU(approximate)
        for x in (_channels_last(4, 8, 5, 5), torch.randn(4, 8, 5, 5), torch.randn(3, 7)):
            a, b = x.clone().requires_grad_(), x.contiguous().requires_grad_()
            ya, yb = fast(a), plain(b)
            assert torch.equal(ya, yb)
            assert torch.allclose(ya, plain(x), rtol=0, atol=2e-6)
            assert ya.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
                memory_format=torch.channels_last
            )
            g = torch.randn_like(ya)
            ya.backward(g), yb.backward(g.contiguous())
            assert torch.equal(a.grad, b.grad)


def _depthwise_pair(requires_grad: bool):
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    fast = UnderFastKernels(nn.Conv2d(8, 8, 5, padding=2, groups=8))
    fast.load_state_dict(plain.state_dict())
    for m in (plain, fast):
        m.weight.requires_grad_(requires_grad)
    return plain, fast


def test_frozen_depthwise_conv_and_no_autocast_are_the_plain_conv():
    plain, fast = _depthwise_pair(requires_grad=False)
    x = _channels_last(2, 8, 9, 9)
    with torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(fast(x), plain(x))  # frozen (Chans): bf16, exactly as autocast runs it
    plain.weight.requires_grad_(True), fast.weight.requires_grad_(True)
    assert torch.equal(fast(x), plain(x))  # no autocast: untouched


def test_a_frozen_strided_depthwise_conv_under_autocast_computes_in_fp32():
    """oneDNN's bf16 input gradient of a stride-2 depthwise conv is ~25x slower than fp32's (the
    separable ResNet's downsampling convs made its Chans runs 1.4x slower than Full): such a conv
    computes in fp32 and hands its output back in bf16, frozen or learned."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
    conv.weight.requires_grad_(False)
    fast = UnderFastKernels(conv)
    x = _channels_last(4, 8, 14, 14).requires_grad_(True)
    fp32 = F.conv2d(x.detach(), conv.weight, None, 2, 1, 1, 8)
    with torch.autocast("cpu", torch.bfloat16):
        y = fast(x)
        plain = conv(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, fp32.to(torch.bfloat16))
    assert not torch.equal(plain, y)  # autocast alone runs it in bf16: the rounding differs
    y.float().sum().backward()  # the input gradient is the fp32 conv's too
    reference = x.detach().clone().requires_grad_(True)
    F.conv2d(reference, conv.weight, None, 2, 1, 1, 8).sum().backward()
    assert x.grad.dtype == torch.float32 and torch.equal(x.grad, reference.grad)


def test_fast_kernels_run_inside_the_block_and_leave_the_model_alone(monkeypatch):
    """The model keeps torch's classes and its own tensors; the kernels run only inside the block."""
    if native.library() is None:
        pytest.skip(native.status())
    model = ConvMixer(16, 2, 5, 2, in_chans=1, num_classes=10).to(memory_format=torch.channels_last)
    apply_mixing(model, "full", seed=0)
    kinds = {type(m) for m in model.modules()}
    params = {name: (id(p), p.clone(), p.requires_grad) for name, p in model.named_parameters()}
    calls = []
    real = speed.depthwise.weight_grad
    monkeypatch.setattr(speed.depthwise, "weight_grad", lambda *a: calls.append(1) or real(*a))
    x = _channels_last(4, 1, 28, 28)
    model(x).sum().backward()
    assert not calls  # outside the block: torch's kernels
    with speed.FastKernels():
        out = model(x)
    out.sum().backward()
    assert len(calls) == 2  # each learned depthwise conv's weight gradient, from the C kernel
    assert {type(m) for m in model.modules()} == kinds
    assert all(t.__module__.startswith(("torch.", "spatialmix.models")) for t in kinds)
    for name, p in model.named_parameters():  # the same tensors, values and flags (no step was taken)
        same_id, values, flag = params[name]
        assert id(p) == same_id and p.requires_grad == flag and torch.equal(p, values)


def test_accelerated_model_trains_like_the_plain_one_in_fp32():
    """Without autocast the accelerated model is the same function up to GELU's last bits."""
    losses = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = ConvMixer(16, 2, 5, 2, in_chans=1, num_classes=10).to(memory_format=torch.channels_last)
        forward = UnderFastKernels(model) if fast else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = _channels_last(8, 1, 28, 28), torch.arange(8) % 10
        for _ in range(3):
            loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0])


# In a fresh process: how many blocks glibc maps for a 31 MiB malloc, before and after tune_allocator
# (the blocks are kept: freeing a mapped block would raise glibc's own threshold).
_MAPPED_BLOCKS = """
import ctypes
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
MallInfo2 = type("MallInfo2", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_size_t) for n in fields]})
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]

def mapped(size):
    before = libc.mallinfo2().hblks
    libc.malloc(size)
    return libc.mallinfo2().hblks - before

untuned = mapped(31 << 20)
from spatialmix.accel import speed
print(untuned, speed.tune_allocator(), mapped(31 << 20), speed.tune_allocator())
"""


def test_tune_allocator_keeps_blocks_below_32_mib_on_the_heap():
    """glibc maps a 31 MiB block of its own (unmapped again when freed: page faults on every reuse)
    until tune_allocator raises the threshold; then the block comes from the heap, kept for reuse."""
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    out = subprocess.run(
        [sys.executable, "-c", _MAPPED_BLOCKS], env=SUBPROCESS_ENV, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True", "0", "True"]


def test_threads():
    before = torch.get_num_threads()
    try:
        assert speed.set_threads(1) == 1
        assert speed.set_threads(None) == 1  # None leaves the current setting
    finally:
        torch.set_num_threads(before)
    assert speed.available_cores() >= 1


def test_every_command_takes_threads_and_refuses_bad_values(capsys):
    from spatialmix.cli.main import build_parser, main

    parser = build_parser()
    for argv in (
        ["train"],
        ["reproduce"],
        ["attack", "RUN"],
        ["unshuffle"],
        ["report", "RUN"],
        ["sweep", "g.yaml"],
    ):
        assert parser.parse_args(argv + ["--threads", "1"]).threads == 1
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as stop:
            main(["report", "RUN", "--threads", bad])
        assert stop.value.code == 2
        assert "--threads must be a whole number of at least 1" in capsys.readouterr().err


def _batched_models_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "batched_models.py"
    spec = importlib.util.spec_from_file_location("batched_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batched_twin_computes_each_lone_model_and_trains_like_it():
    """The batched alternative (benchmarks/batched_models.py) is only a fair comparison if it is
    the same computation: its outputs are the lone models' outputs, and after AdamW steps its
    weights are the lone models' weights to float tolerance, in every mode."""
    bench = _batched_models_benchmark()
    models = bench.make_models(3, "chans", width=8, depth=2)
    twin = bench.batched_twin(models).eval()
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        together = twin(x)
        for i, m in enumerate(models):
            torch.testing.assert_close(together[:, i], m.eval()(x[:, i : i + 1]), rtol=1e-5, atol=1e-5)
    frozen = [n for n, p in twin.named_parameters() if not p.requires_grad]
    assert frozen and all(".fn.0." in n for n in frozen)  # Chans: only the depthwise filters
    for mode in ("full", "chans", "space"):
        assert bench.max_difference(2, mode, width=8, depth=2, steps=3) < 1e-4


def _trained_batchnorm(channels=12):
    """A BatchNorm2d with non-trivial running statistics, weight and bias."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.normal_()
    for _ in range(5):
        bn(torch.randn(16, channels, 6, 6) * 3 + 1)
    return bn.eval()


def test_eval_batchnorm_is_batchnorms_eval_map_forward_and_input_gradient():
    bn = _trained_batchnorm()
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        x = _channels_last(4, 12, 7, 7).to(dtype)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        yb = bn(b)
        with speed.FastKernels(attack=True):
            ya = bn(a)
        assert type(ya.grad_fn).__name__ == "AddcmulBackward0"  # the multiply-add, not torch's kernel
        assert ya.dtype == yb.dtype and ya.shape == yb.shape
        assert torch.allclose(ya.float(), yb.float(), rtol=tol, atol=tol)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        assert torch.allclose(a.grad.float(), b.grad.float(), rtol=tol, atol=tol)
    # independently: (x - mean) / sqrt(var + eps) * weight + bias, in float64
    x = torch.randn(3, 12, 5, 5, dtype=torch.float64)
    expected = (x - bn.running_mean.double().view(1, -1, 1, 1)) / (
        bn.running_var.double().view(1, -1, 1, 1) + bn.eps
    ).sqrt() * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)
    with speed.FastKernels(attack=True):
        assert torch.allclose(bn(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_attack_kernels_leave_training_mode_alone():
    bn = _trained_batchnorm()
    bn.train()
    x = torch.randn(8, 12, 5, 5)
    expected = nn.functional.batch_norm(
        x,
        bn.running_mean.clone(),
        bn.running_var.clone(),
        bn.weight,
        bn.bias,
        training=True,
        momentum=bn.momentum,
        eps=bn.eps,
    )
    with speed.FastKernels(attack=True):
        assert torch.equal(bn(x), expected)  # batch statistics, as in training


def test_attack_mode_runs_the_fast_kernels_and_restores_everything():
    from spatialmix.robustness.attacks import attack_mode

    model = ConvMixer(16, 2, 5, 2, in_chans=1, num_classes=10)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    storage = {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    with attack_mode(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert isinstance(torch.overrides._get_current_function_mode(), speed.FastKernels)
        # every 4-D weight in channels_last strides, the 1 x 1 kernels included (which .contiguous() keeps)
        pointwise = model.blocks[0][1].weight
        assert pointwise.shape[2:] == (1, 1) and pointwise.stride() == (16, 1, 16, 16)
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6)
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()} == storage
    assert torch.overrides._get_current_function_mode() is None
    assert all(t.__module__.startswith(("torch.", "spatialmix.models")) for t in map(type, model.modules()))


def _bn_pair(affine=True, momentum=0.1):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(24, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            plain.weight.uniform_(0.5, 2), plain.bias.normal_()
    fast = UnderFastKernels(nn.BatchNorm2d(24, affine=affine, momentum=momentum))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine,momentum", [(True, 0.1), (False, 0.1), (True, None)])
def test_training_batchnorm_is_torchs_forward_and_state_with_the_same_gradients(dtype, affine, momentum):
    if native.library() is None:
        pytest.skip(native.status())
    plain, fast = _bn_pair(affine, momentum)
    for _step in range(3):  # running statistics and num_batches_tracked move alike, step after step
        x = (_channels_last(6, 24, 7, 9) * 2 + 1).to(dtype)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), plain(xb)
        assert type(ya.grad_fn).__name__ == "_TrainBatchNormBackward"
        assert ya.dtype == yb.dtype and torch.equal(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(
            xa.grad.float(), xb.grad.float(), rtol=tol, atol=tol * xb.grad.abs().max().item()
        )
    for name, value in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name
    if affine:
        for p, q in ((fast.weight, plain.weight), (fast.bias, plain.bias)):
            assert p.grad.dtype == torch.float32 and torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4)
    # independently, in float64: the gradient of sum(g * batchnorm(x)) with batch statistics
    x64 = x.double().requires_grad_()
    mean, var = x64.mean((0, 2, 3), keepdim=True), x64.var((0, 2, 3), unbiased=False, keepdim=True)
    y64 = (x64 - mean) / (var + fast.eps).sqrt()
    if affine:
        y64 = y64 * fast.weight.double().view(1, -1, 1, 1)
    y64.backward(g.double())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(xa.grad.double(), x64.grad, rtol=tol, atol=tol * x64.grad.abs().max().item())


def test_training_batchnorm_gradients_do_not_depend_on_threads_and_eval_is_plain():
    """The kernel's sums run over fixed blocks: the same inputs give bitwise the same gradients for
    any thread count. (torch's own batch-norm forward, whose statistics feed them, does not
    promise that: its mean moved in the last bit between 1 and 2 threads.)"""
    from spatialmix.accel import native

    lib = native.library()
    if lib is None:
        pytest.skip(native.status())
    x, g = _channels_last(64, 24, 14, 14).bfloat16(), _channels_last(64, 24, 14, 14).bfloat16()
    weight = torch.rand(24) + 0.5
    _, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, None, None, None, True, 0.1, 1e-5)[:3]
    results = [
        native.call_batchnorm_backward(lib, x, g, mean, invstd, weight, threads) for threads in (1, 2, 3)
    ]
    assert all(torch.equal(a, b) for r in results[1:] for a, b in zip(results[0], r))
    plain, fast = _bn_pair()
    fast.eval(), plain.eval()
    y = _channels_last(4, 24, 5, 5)
    assert torch.equal(fast(y), plain(y))


def test_vmapped_seeds_train_like_their_lone_twins():
    """The torch.func way (stack_module_state + vmap) of benchmarks/batched_models.py: after AdamW
    steps its weights are the lone models' weights (both with batch-statistics norms) to float
    tolerance, in every mode, and frozen weights are never stepped."""
    bench = _batched_models_benchmark()
    for mode in ("full", "chans", "space"):
        assert bench.vmap_difference(3, mode, width=8, depth=2, steps=3) < 1e-5
    models = bench.make_models(2, "chans", width=8, depth=1)
    twin = bench.VmappedModels(models)
    before = {k: v.clone() for k, v in twin.frozen.items()}
    x, y = bench.batches(2, 8, 1)[0]
    twin.step(x, y)
    assert before and all(torch.equal(before[k], twin.frozen[k]) for k in before)


def test_batch_norm_refuses_one_value_per_channel_as_torch_does():
    """A training batch with one value per channel (batch 1, 1 x 1 maps) has no variance: torch's
    module refuses it; the kernel path must too, before anything is written to running_var."""
    if native.library() is None:
        pytest.skip("the C kernels are not available here")
    norm, plain = nn.BatchNorm2d(4).train(), nn.BatchNorm2d(4).train()
    x = torch.randn(1, 4, 1, 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        UnderFastKernels(norm)(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        plain(x)
    assert torch.equal(norm.running_var, torch.ones(4)) and torch.equal(norm.running_mean, torch.zeros(4))
    assert int(norm.num_batches_tracked) == int(plain.num_batches_tracked)  # as torch's own module


def test_a_built_or_loaded_model_has_only_its_own_classes(tmp_path):
    """No class of spatialmix.accel is ever put into a model: what a user gets back is torch's."""
    from spatialmix.engine.config import TrainConfig
    from spatialmix.engine.tasks import build_model

    config = TrainConfig(model="convmixer", width=8, depth=1, kernel_size=3, patch_size=4, mode="chans")
    model = build_model(config, in_chans=1, num_classes=10, image_size=28)
    assert all(not type(m).__module__.startswith("spatialmix.accel") for m in model.modules())
    assert {type(m) for m in model.modules()} >= {nn.Conv2d, nn.BatchNorm2d, nn.GELU}


def test_cpu_sync_batchnorm_replaces_modules_sharing_their_tensors():
    from spatialmix.engine.distributed import CPUSyncBatchNorm, convert_sync_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.BatchNorm2d(4), nn.GELU()))
    norm = model[1][0]
    tensors = {k: v.data_ptr() for k, v in model.state_dict().items()}
    convert_sync_batchnorm(model, torch.device("cpu"))
    assert type(model[1][0]) is CPUSyncBatchNorm and type(norm) is nn.BatchNorm2d  # replaced, not changed
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == tensors
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(model(x), nn.Sequential(model[0], norm.train(), model[1][1])(x))
