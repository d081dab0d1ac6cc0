"""torch.compile of the UNet: dynamo captures it whole (the fused CPU nodes and the checkpoint
heap hook step aside while it traces), and the compiled training step, which runs the plain
ops, gives eager mode's output and gradients, which run the fused nodes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch._dynamo

from shared.config import preset
from t2s_torch.unet import UNet3D

CL = torch.channels_last_3d


def model_and_inputs(conv_mode: str, checkpointing: bool) -> tuple[UNet3D, tuple]:
    config = replace(preset("tiny").model, conv_mode=conv_mode,
                     gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    model = UNet3D(config).train().use_channels_last(True)
    with torch.no_grad():  # no zero or identity layer hiding a path from the gradients
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, config.in_channels, 4, 16, 16).contiguous(memory_format=CL)
    states = torch.randn(2, 6, config.context_dim)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    return model, (x, torch.tensor([3, 700]), states, mask, torch.randn(2, config.context_dim))


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("conv_mode", ["factorized", "full"])
def test_unet_traces_as_one_graph(conv_mode, checkpointing):
    model, inputs = model_and_inputs(conv_mode, checkpointing)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(*inputs)
    assert explanation.graph_break_count == 0, [str(r.reason)[:300]
                                                for r in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("conv_mode", ["factorized", "full"])
def test_compiled_training_step_matches_eager(conv_mode):
    """AOT autograd (the part of torch.compile that builds the backward graph) without code
    generation: what inductor would be handed, evaluated op by op."""
    model, inputs = model_and_inputs(conv_mode, checkpointing=False)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    grad_out = torch.randn_like(inputs[0])
    results = []
    for run in (model, compiled):
        out = run(*inputs)
        grads = torch.autograd.grad(out, list(model.parameters()), grad_out)
        results.append((out, grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    names = [name for name, _ in model.named_parameters()]
    for name, w, g in zip(names, want_grads, got_grads):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4, msg=name)
