"""The frame's bookkeeping kernels (engine/frame_kernels.py) against their torch twins (engine/frame_glue.py), in
Triton's interpreter: the same results, bit for bit, and the same state left behind."""
import pytest
import torch

from engine import frame_glue, frame_kernels
from engine.frame_glue import TokenIds

IDS = TokenIds(speech=7, eos=3, bos=5)
TOKEN_IDS = torch.tensor([3, 5, 7, 11])  # eos, bos, speech, text eos
SPEECH_CHOICE = 2


def _twice(*tensors):
    return [t.clone() for t in tensors], [t.clone() for t in tensors]


@pytest.mark.parametrize("n", [1, 5, 19])
def test_choose_tokens_equals_its_twin(n):
    generator = torch.Generator().manual_seed(n)
    logits = torch.randn(n, 4, generator=generator).to(torch.bfloat16)
    logits[0, 1] = logits[0, 3] = logits[0].max() + 1  # a tie: the first maximum wins
    exact = torch.rand(n, generator=generator) < 0.3
    exact[0] = False
    noises = torch.randn(n, 2, 64, generator=generator).to(torch.bfloat16)
    (used_twin,), (used_kernel,) = _twice(torch.randint(0, 9, (n,), generator=generator))
    tokens, noise = frame_glue.choose_tokens(logits, exact, SPEECH_CHOICE, TOKEN_IDS, noises, used_twin)
    tokens_k, noise_k = frame_kernels.choose_tokens(logits, exact, SPEECH_CHOICE, TOKEN_IDS, noises, used_kernel)
    assert tokens[0] == 5
    assert torch.equal(tokens_k, tokens) and torch.equal(noise_k, noise) and torch.equal(used_kernel, used_twin)


@pytest.mark.parametrize("n, width, hidden", [(1, 100, 48), (6, 2500, 1100)])
def test_step_inputs_equals_its_twin(n, width, hidden):
    generator = torch.Generator().manual_seed(width)
    tokens = torch.tensor([7, 3, 5, 11, 7, 7][:n])
    new_state = torch.randn(n, width, generator=generator).to(torch.bfloat16)
    # float32 embeddings: the interpreter's bf16 conversion truncates where the GPU's rounds
    acoustic, semantic, token_embeds = (torch.randn(n, hidden, generator=generator) for _ in range(3))
    state = torch.randn(n, width, generator=generator).to(torch.bfloat16)
    positive = torch.randint(500, 520, (n,), generator=generator)
    negative = torch.randint(0, 520, (n,), generator=generator)
    twin, kernel = _twice(state, negative)
    outputs = [ops.step_inputs(tokens, IDS, s, new_state, acoustic, semantic, token_embeds, positive, neg, 512)
               for ops, (s, neg) in ((frame_glue, twin), (frame_kernels, kernel))]
    for expected, got in zip(*outputs):
        assert torch.equal(got, expected)
    assert torch.equal(kernel[0], twin[0]) and torch.equal(kernel[1], twin[1])
    assert torch.equal(twin[0][0], new_state[0])  # speech takes the new caches
    if n > 1:
        assert not twin[0][1].any() and torch.equal(twin[0][2], state[2])  # eos restarts them; others keep them
        assert twin[1][2] == 1  # bos restarts the negative row
    assert outputs[0][1].max() <= 511  # positions stop at the context's end


def test_keep_outputs_equals_its_twin():
    generator = torch.Generator().manual_seed(0)
    n, hidden_size, samples = 3, 1100, 3200
    hidden = torch.randn(2 * n, hidden_size, generator=generator).to(torch.bfloat16)
    logits = torch.randn(2 * n, 4, generator=generator).to(torch.bfloat16)
    decoded = torch.randn(n, 1, samples, generator=generator).to(torch.bfloat16)
    tokens = torch.tensor([7, 3, 11])
    state = (torch.arange(n), torch.zeros(n, hidden_size, dtype=torch.bfloat16),
             torch.zeros(n, hidden_size, dtype=torch.bfloat16), torch.zeros(n, 4, dtype=torch.bfloat16),
             torch.zeros(n, dtype=torch.long), torch.zeros(n, samples))
    twin, kernel = _twice(*state)
    frame_glue.keep_outputs(hidden, logits, decoded, tokens, *twin)
    frame_kernels.keep_outputs(hidden, logits, decoded, tokens, *kernel)
    for expected, got in zip(twin, kernel):
        assert torch.equal(got, expected)
    assert torch.equal(twin[0], torch.arange(n) + 1) and torch.equal(twin[2], hidden[1::2])
