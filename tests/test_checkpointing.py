"""Gradient checkpointing: policies, exact gradients and batch-norm statistics, DDP, saved bytes."""

import threading

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from frelon.errors import FrelonError
from frelon.studies import checkpointing as study
from frelon.models import checkpointing
from frelon.models.centernet import CenterNet
from frelon.models.resnet import ResNet
from frelon.parallel import distributed
from frelon.train import engine
from test_distributed_eval import join, rendezvous

NAMES18 = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
POLICIES = ["none", ["layer2", "layer4"], ["layer1.1", "layer3"], "sqrt", "all"]
# The exactness tests also run on a GPU where one is visible (`make bench-gpu` runs them with -k "cuda or gpu").
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def deterministic_cudnn():
    """On GPU both runs must pick the same kernels, or float sums differ in the last bits."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def test_policies_cut_the_blocks_into_recomputed_and_stored_segments():
    assert checkpointing.plan(NAMES18, "none") == [(0, 8, False)]
    assert checkpointing.plan(NAMES18, "all") == [(i, i + 1, True) for i in range(8)]
    assert checkpointing.plan(NAMES18, "sqrt") == [(0, 3, True), (3, 5, True), (5, 8, True)]  # ceil(sqrt 8) = 3
    assert checkpointing.plan(NAMES18, ["layer2", "layer4"]) == [(0, 2, False), (2, 4, True), (4, 6, False),
                                                                 (6, 8, True)]
    assert checkpointing.plan(NAMES18, ["layer1.1", "layer2.0"]) == [(0, 1, False), (1, 2, True), (2, 3, True),
                                                                     (3, 8, False)]


def test_an_unknown_block_or_policy_is_named_with_the_choices():
    with pytest.raises(FrelonError, match=r"'layer5' names no block of this model; blocks are layer1.0, "):
        checkpointing.plan(NAMES18, ["layer5"])
    with pytest.raises(FrelonError, match="unknown policy 'half'; use none, all, sqrt"):
        checkpointing.plan(NAMES18, "half")


def one_step(arch: str, policy, norm: str = "batch", precision: str = "fp32", seed: int = 0, device: str = "cpu"):
    """Gradients and buffers after one SGD step on a fixed batch."""
    torch.manual_seed(seed)
    model = checkpointing.apply(ResNet(arch, num_classes=3, norm=norm), policy).to(device).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 64, 64, generator=g).to(device), torch.randint(0, 3, (4,), generator=g).to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return grads, {n: b.clone() for n, b in model.named_buffers()}, {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", POLICIES[1:], ids=study.policy_label)
def test_gradients_and_batch_norm_statistics_equal_those_without_checkpointing(policy, device):
    grads, buffers, weights = one_step("resnet18", "none", device=device)
    grads_c, buffers_c, weights_c = one_step("resnet18", policy, device=device)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert buffers_c.keys() == buffers.keys()
    for name in buffers:  # running_mean, running_var moved once; num_batches_tracked == 1
        torch.testing.assert_close(buffers_c[name], buffers[name], rtol=0, atol=0, msg=name)
    assert all(int(v) == 1 for n, v in buffers_c.items() if n.endswith("num_batches_tracked"))
    for name in weights:
        torch.testing.assert_close(weights_c[name], weights[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch,norm,precision", [("resnet34", "batch", "fp32"), ("resnet18", "group", "fp32"),
                                                 ("resnet18", "batch", "bf16")])
@pytest.mark.parametrize("device", DEVICES)
def test_exact_for_resnet34_other_norms_and_under_autocast(arch, norm, precision, device):
    grads, buffers, _ = one_step(arch, "none", norm, precision, device=device)
    grads_c, buffers_c, _ = one_step(arch, "sqrt", norm, precision, device=device)
    tol = {"rtol": 1e-5, "atol": 1e-6} if precision == "fp32" else {"rtol": 1e-2, "atol": 1e-3}
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], **tol, msg=name)
    for name in buffers:
        torch.testing.assert_close(buffers_c[name], buffers[name], rtol=0, atol=0, msg=name)


def steps(policy, backend=None, count=2):
    """Loss, gradients and buffers after each of `count` SGD steps (momentum, so the second step's
    weights depend on the first's gradients) on fixed batches; compiled whole with `backend` unless None."""
    torch._dynamo.reset()  # a fresh compile: no model's graphs or recompilation budget shared with another
    torch.manual_seed(0)
    model = checkpointing.apply(ResNet("resnet18", num_classes=3), policy).train()
    net = model if backend is None else torch.compile(model, backend=backend, fullgraph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    results = []
    for _ in range(count):
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        {n: b.clone() for n, b in model.named_buffers()}))
        optimizer.step()
        optimizer.zero_grad()
    return results


def assert_same_steps(got, want, grads=True, rtol=1e-5):
    """Same loss and gradients (within float tolerance) and the same statistics after every step:
    running_mean and running_var moved once per step (a second update moves them 10% further, at
    batch norm's momentum 0.1), num_batches_tracked counting the steps."""
    for step, ((loss_c, grads_c, buffers_c), (loss, grads_e, buffers)) in enumerate(zip(got, want), start=1):
        torch.testing.assert_close(loss_c, loss, rtol=rtol, atol=1e-6, msg=f"loss, step {step}")
        for name in grads_e if grads else ():
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=rtol, atol=1e-6, msg=f"{name}, step {step}")
        assert buffers_c.keys() == buffers.keys()
        for name in buffers:
            torch.testing.assert_close(buffers_c[name], buffers[name], rtol=rtol, atol=1e-6, msg=f"{name}, step {step}")
        assert all(int(v) == step for n, v in buffers_c.items() if n.endswith("num_batches_tracked"))


# the course's example in the fast lane; every policy in the slow one (a compile each: 2-3 s)
@pytest.mark.parametrize("policy", [p if p == ["layer2", "layer4"] else pytest.param(p, marks=pytest.mark.slow)
                                    for p in POLICIES], ids=study.policy_label)
def test_compiled_steps_with_any_policy_equal_eager_steps_without_checkpointing(policy):
    # aot_eager: Dynamo and AOTAutograd as under inductor (tracing, functionalized batch norm,
    # recomputation in the backward graph) without inductor's minutes of code generation
    assert_same_steps(steps(policy, "aot_eager"), steps("none"))


@pytest.mark.slow  # inductor's code generation: about two minutes on two CPU cores
def test_inductor_compiled_steps_with_checkpointing_equal_compiled_steps_without_and_eager_statistics():
    compiled = steps(["layer2", "layer4"], "inductor")
    # checkpointing changes nothing in inductor's step (on this CPU: the same bits)
    assert_same_steps(compiled, steps("none", "inductor"))
    # its first step leaves eager's statistics (moved once: twice would be 10% off); its loss and gradients
    # differ from eager ones with or without checkpointing, as inductor's kernels sum in another order, by
    # how much depends on the CPU's vector units (loss: 1.3e-5 relative on an AMD EPYC, gradients: 2e-4 of a
    # tensor's largest value on a Xeon)
    assert_same_steps(compiled[:1], steps("none", count=1), grads=False, rtol=1e-4)


@pytest.mark.slow  # two compiles
def test_compiled_checkpointing_still_stores_fewer_activations():
    """The compiled backward graph recomputes the segments rather than keeping what they computed."""
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    saved = {}
    for policy in ("none", ["layer1", "layer2", "layer3", "layer4"]):
        torch._dynamo.reset()
        model = torch.compile(study.build("resnet18", policy, torch.device("cpu")), backend="aot_eager")
        saved[study.policy_label(policy)] = study.saved_activation_bytes(model, x, y)
    assert saved["layer1+layer2+layer3+layer4"] < 0.6 * saved["none"]


class _GraphBreak(nn.Module):
    """A unit Dynamo cannot trace whole: convolution and batch norm, a graph break, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        x = self.bn(self.conv(x))
        torch._dynamo.graph_break()
        return x.relu()


def test_a_unit_with_a_graph_break_under_compile_keeps_its_statistics_from_a_second_update():
    def step(segments, backend):
        torch._dynamo.reset()
        torch.manual_seed(0)
        units = nn.ModuleList([_GraphBreak(), _GraphBreak()]).train()
        run = lambda x: checkpointing.run_units(units, segments, x)  # noqa: E731
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (torch.compile(run, backend=backend) if backend else run)(x).square().sum().backward()
        return x.grad, {n: b.clone() for n, b in units.named_buffers()}

    grad, buffers = step(None, None)
    grad_c, buffers_c = step([(0, 2, True)], "aot_eager")
    torch.testing.assert_close(grad_c, grad, rtol=1e-5, atol=1e-6)
    for name in buffers:
        torch.testing.assert_close(buffers_c[name], buffers[name], rtol=1e-5, atol=1e-6, msg=name)
    assert int(buffers_c["0.bn.num_batches_tracked"]) == 1


def test_a_segment_meant_for_the_compiled_graph_refuses_an_eager_recomputation():
    with pytest.raises(FrelonError, match=r"did not compile whole .* update batch-norm statistics twice; "
                                          r"remove the graph break, or set train.compile: false"):
        checkpointing._traced_sequence([nn.Identity()], torch.zeros(1))


def centernet_step(policy, device="cpu"):
    torch.manual_seed(0)
    model = checkpointing.apply(CenterNet(num_classes=3), policy).to(device).train()
    out = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device))
    sum(o.square().mean() for o in out.values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, {n: b.clone() for n, b in model.named_buffers()}


def test_centernet_units_are_the_backbone_blocks_and_the_decoder_stages():
    names = [name for name, _ in CenterNet(num_classes=3).checkpoint_units()]
    assert names == NAMES18 + ["decoder.0", "decoder.1", "decoder.2"]


@pytest.mark.parametrize("policy", [["layer2", "layer4", "decoder"], ["decoder.1"], "sqrt", "all"],
                         ids=study.policy_label)
@pytest.mark.parametrize("device", DEVICES)
def test_centernet_gradients_and_statistics_equal_those_without_checkpointing(policy, device):
    grads, buffers = centernet_step("none", device)
    grads_c, buffers_c = centernet_step(policy, device)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    for name in buffers:
        torch.testing.assert_close(buffers_c[name], buffers[name], rtol=0, atol=0, msg=name)


def test_centernet_saved_bytes_decrease_from_none_to_all():
    x, y = torch.randn(2, 3, 64, 64), torch.zeros(2, dtype=torch.long)
    saved = {study.policy_label(p): study.saved_activation_bytes(study.build("centernet-resnet18", p,
                                                                             torch.device("cpu")), x, y)
             for p in ["none", ["layer2", "layer4", "decoder"], "all"]}
    assert saved["none"] > saved["layer2+layer4+decoder"] > saved["all"]


def test_a_frozen_backbone_keeps_its_statistics_with_checkpointing():
    torch.manual_seed(0)
    model = checkpointing.apply(ResNet("resnet18", num_classes=3), "all")
    model.freeze_backbone()
    model.train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    assert model.fc.weight.grad is not None and model.conv1.weight.grad is None


def test_saved_activation_bytes_decrease_strictly_from_none_to_all():
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    saved = {study.policy_label(p): study.saved_activation_bytes(study.build("resnet18", p, torch.device("cpu")),
                                                                x, y)
             for p in ["none", ["layer2", "layer4"], ["layer1", "layer2", "layer3", "layer4"], "all", "sqrt"]}
    assert saved["none"] > saved["layer2+layer4"] > saved["all"] and saved["sqrt"] < saved["none"]
    # per-stage checkpointing stores only the four stage inputs of the 8 blocks' activations
    assert saved["layer1+layer2+layer3+layer4"] < 0.6 * saved["none"]
    # counted per tensor: twice the batch, twice the activations (but for per-channel statistics)
    double = study.saved_activation_bytes(study.build("resnet18", "none", torch.device("cpu")),
                                          torch.cat([x, x]), torch.cat([y, y]))
    assert double == pytest.approx(2 * saved["none"], rel=1e-2)


def test_what_a_recomputed_segment_keeps_is_its_input_and_the_saved_tensors_hooks_see_it():
    # tanh saves its output: stored segments show it to the hooks, recomputed ones keep only their input
    x = torch.randn(3, 5, requires_grad=True)
    h = [x]
    for _ in range(5):
        h.append(torch.tanh(h[-1]))
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        out = checkpointing.run_units([nn.Tanh() for _ in range(5)], [(0, 2, True), (2, 3, False), (3, 5, True)], x)
    assert [t.shape for t in seen] == [x.shape] * 3
    for got, want in zip(seen, [h[0], h[3], h[3]]):  # segment 0's input; tanh's output; segment 2's input
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(h[5].sum(), x)[0])


def test_two_models_measured_in_turn_nested_or_at_once_do_not_see_each_others_bytes():
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    cpu = torch.device("cpu")
    alone = {p: study.saved_activation_bytes(study.build("resnet18", p, cpu), x, y) for p in ("none", "all")}
    assert alone["none"] > alone["all"]
    # in turn: the same model measured again, after another, counts the same
    model = study.build("resnet18", "all", cpu)
    assert [study.saved_activation_bytes(m, x, y) for m in (model, study.build("resnet18", "none", cpu), model)] == \
        [alone["all"], alone["none"], alone["all"]]
    # nested: a measurement inside another's counting sees only its own model, and the outer one sees none of it
    outer = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: outer.append(t) or t, lambda t: t):
        inner = study.saved_activation_bytes(study.build("resnet18", "all", cpu), x, y)
    assert inner == alone["all"] and outer == []
    # at once, in two threads (the hooks are thread-local)
    results, errors = {}, []

    def measure(policy):
        try:
            results[policy] = study.saved_activation_bytes(study.build("resnet18", policy, cpu), x, y)
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=measure, args=(p,)) for p in ("none", "all")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == alone


@pytest.mark.parametrize("used", [
    lambda b: 1000 + 37 * b,                                  # linear: counted bytes
    lambda b: 1000 + 20 * b + (b // 16) * 400,                # allocator steps: more than linear
    lambda b: 1000 + 60 * b if b < 40 else 2400 + 10 * b,     # the first probes overestimate
    lambda b: 1000 + 37 * b if b <= 16 else None,             # 2 x probe runs out of memory
], ids=["linear", "steps", "overestimate", "probe-oom"])
def test_the_largest_batch_fits_the_budget_and_one_more_sample_does_not(used):
    measured = []
    best = study.largest_batch(lambda b: measured.append(b) or used(b), budget=5000, probe=8)
    fits = lambda b: used(b) is not None and used(b) <= 5000  # noqa: E731
    assert fits(best) and not fits(best + 1)
    assert len(measured) <= 20  # a search, not a walk: 2 for linear memory
    assert study.largest_batch(used, budget=500, probe=8) == 0


def _ddp_rank(rank, port, out):
    world = join(rank, 2, port, threads=1)
    try:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 3, (8,), generator=g)
        mine = slice(rank * 4, rank * 4 + 4)
        results = {}
        for label, policy, compiled in (("none", "none", False), ("stages", ["layer2", "layer4"], False),
                                        ("stages, compiled", ["layer2", "layer4"], True)):
            torch.manual_seed(0)
            model = checkpointing.apply(ResNet("resnet18", num_classes=3), policy)
            net = engine._wrap(model, {}, world)
            if compiled:  # as engine._wrap compiles (after DDP), with aot_eager for speed
                net = torch.compile(net, backend="aot_eager")
            nn.functional.cross_entropy(net(x[mine]), y[mine]).backward()
            results[label] = ({n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers()))
        torch.save(results, f"{out}.{rank}")
    finally:
        distributed.shutdown()


@pytest.mark.slow  # two processes, and a compile in each: 9 s
def test_a_two_rank_ddp_step_with_checkpointing_eager_or_compiled_has_the_gradients_of_one_without(tmp_path):
    with rendezvous() as port:
        mp.spawn(_ddp_rank, args=(port, str(tmp_path / "grads")), nprocs=2, join=True)
    for rank in (0, 1):
        results = torch.load(tmp_path / f"grads.{rank}", weights_only=True)
        grads, buffers = results["none"]
        for label in ("stages", "stages, compiled"):
            grads_c, buffers_c = results[label]
            for name in grads:
                torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-5, atol=1e-6, msg=f"{label}: {name}")
            tol = {"rtol": 1e-5, "atol": 1e-6} if "compiled" in label else {"rtol": 0, "atol": 0}
            for name in buffers:
                torch.testing.assert_close(buffers_c[name], buffers[name], **tol, msg=f"{label}: {name}")


def test_the_study_writes_a_table_and_a_figure_with_one_row_per_policy(tmp_path):
    settings = {"cases": [{"model": "resnet18", "image_size": 32, "batch_sizes": [2]}],
                "policies": ["none", "all"], "memory_budget_mb": 200, "steps": 1, "warmup": 0}
    rows = study.run_study(settings, "cpu", tmp_path / "c.csv", tmp_path / "c.md", tmp_path / "c.png")
    assert [r["policy"] for r in rows] == ["none", "all"]
    none, every = rows
    assert every["saved_activation_mb"] < none["saved_activation_mb"] and every["saved_ratio"] < 1 == none["saved_ratio"]
    assert every["max_batch"] > none["max_batch"] > 0 and none["peak_memory_mb"] is None  # no GPU here
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "c.md").read_text().startswith("| model")


def test_a_budget_too_small_for_any_trainable_batch_names_the_setting_and_writes_nothing(tmp_path):
    # ResNet-18 weights, gradients and momentum alone take 128 MB (on a GPU the search goes down to
    # batch 1, where batch norm on layer4's 1x1 maps cannot train: the same error, worded for it)
    settings = {"cases": [{"model": "resnet18", "image_size": 32, "batch_sizes": [2]}],
                "policies": ["none"], "memory_budget_mb": 100, "steps": 1, "warmup": 0}
    with pytest.raises(FrelonError, match="memory_budget_mb 100 holds no batch .*alone take 128 MB.*"
                                          "raise memory_budget_mb"):
        study.run_study(settings, "cpu", tmp_path / "c.csv", tmp_path / "c.md", tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []


def test_linear_memory_takes_the_two_probes_and_two_checks():
    measured = []
    best = study.largest_batch(lambda b: measured.append(b) or 1000 + 37 * b, budget=5000, probe=8)
    assert best == 108 and measured == [8, 16, 108, 109]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: `make bench-gpu` runs it there")
def test_on_a_gpu_peak_memory_falls_from_none_to_all_and_the_study_reports_it(tmp_path):
    # Large enough that activations, not weights and workspaces, make the peak (at 128 px and batch 32
    # the peaks of none and layer2+layer4 were within 2 MB of each other on an H200)
    cuda = torch.device("cuda")
    peak = {study.policy_label(p): study.training_memory_bytes("resnet18", p, 64, 224, cuda)
            for p in ["none", ["layer2", "layer4"], "all"]}
    assert peak["none"] > peak["layer2+layer4"] > peak["all"]
    settings = {"cases": [{"model": "centernet-resnet18", "image_size": 256, "batch_sizes": [8]}],
                "policies": ["none", "sqrt"], "memory_budget_mb": 4096, "steps": 2, "warmup": 1}
    none, sqrt = study.run_study(settings, "cuda", tmp_path / "c.csv", tmp_path / "c.md", tmp_path / "c.png")
    assert 0 < sqrt["peak_memory_mb"] < none["peak_memory_mb"] and sqrt["max_batch"] > none["max_batch"] > 8
    assert none["device"] == torch.cuda.get_device_name(cuda)


@pytest.mark.parametrize("name", ["resnet18", "centernet-resnet18"])
@pytest.mark.parametrize("policy", ["none", ["layer2", "layer4"], "all"])
def test_counting_on_the_meta_device_gives_the_bytes_of_a_real_forward_pass(name, policy):
    """The CPU search for the largest batch counts on `meta` (shapes only): the same bytes as on real tensors."""
    real = study.build(name, policy, torch.device("cpu"))
    x, y = study._batch(6, 64, torch.device("cpu"))
    weights = sum(p.numel() * p.element_size() for p in real.parameters())
    counted = study.training_memory_bytes(name, policy, 6, 64, torch.device("cpu"))
    assert counted == 3 * weights + study.saved_activation_bytes(real, x, y) > 3 * weights


@pytest.mark.parametrize("name", ["resnet18", "centernet-resnet18"])
@pytest.mark.parametrize("policy", ["none", ["layer2", "layer4"], "all"])
def test_counted_bytes_are_affine_in_the_batch_so_two_counts_give_the_largest_batch(name, policy):
    """The CPU study takes the largest batch from counts at b and 2b: that needs memory(b) = a b + c exactly."""
    shadow = study._shadow(name, policy)
    cpu = torch.device("cpu")
    counts = {b: study.training_memory_bytes(name, policy, b, 32, cpu, shadow) for b in (2, 4, 6, 9)}
    slope = (counts[4] - counts[2]) // 2
    assert all(counts[b] == counts[2] + slope * (b - 2) for b in counts) and slope > 0
    budget = counts[9] + slope // 2  # room for 9 and a half samples
    assert study.affine_largest_batch(counts[2], counts[4], 2, budget) == 9
    assert study.affine_largest_batch(counts[2], counts[4], 2, counts[9]) == 9
    assert study.affine_largest_batch(counts[2], counts[4], 2, counts[2] - slope - 1) == 0


def test_memory_that_does_not_grow_with_the_batch_gives_no_largest_batch():
    with pytest.raises(FrelonError, match="does not grow with the batch"):
        study.affine_largest_batch(100, 100, 4, 1000)
