"""The frame loop: many requests advanced together, one batched step per frame, joining and leaving between steps.

State lives in preallocated per-slot tensors (KV caches, streaming-conv caches, last hidden states, lengths), and the
active requests always hold the first slots (a leaving request's slot is refilled from the last one), so a step
works on fixed-size prefixes of those tensors. Each slot owns two KV rows: the prompt-conditioned (positive)
context and the unconditional (negative) one that classifier-free guidance needs.

One frame, for all active slots at once and all on the device (`_frame`):
  1. pick each slot's token from the logits of its last LM step (only VibeVoice's four tokens are scored);
  2. batched diffusion solve -> latents -> streaming decoder -> 3200 samples -> streaming semantic encoder; the
     next LM input is acoustic_connector(latent) + semantic_connector(semantic) where the token is speech, the
     token's embedding otherwise; only speech slots keep their new conv caches, audio_eos clears them (a turn
     boundary), audio_bos restarts the negative context;
  3. one batched LM step over the positive and negative rows of every slot, written into the KV cache in place.
     The negative row is speculative: it is only kept if the next token is speech, as in Microsoft's original loop.
Then one copy of the tokens and audio to the host, which ends finished requests (eos, frame caps, context).

Every shape in a frame is fixed by (slots, diffusion steps, attended context), so on CUDA each combination is
captured once as a CUDA graph and replayed: a frame costs one launch and one host synchronisation. Slot counts and
contexts are rounded up to powers of two; the padding slots compute on dead state and are ignored. A prompt that
joins alone is prefilled by a graph too, one per padded width (PREFILL_BUCKET); its outputs are copied into the
slot's state before any other graph replays (graphs share one memory pool).

The host runs one frame ahead: `step` queues the next frame before it waits for the previous one, so the device
never waits for the host's bookkeeping between frames. Nothing a frame needs from the host depends on the frame
before it: each slot's next two diffusion noises are uploaded with every frame and the frame picks the one its
stream has reached (a noise is used up by a speech frame only), and a slot's context grows by one per frame. A
stream that ends (eos, cancelled) has had one frame more computed, whose output is dropped; joining and leaving
slots change device state in stream order, after the frame in flight.
"""
from __future__ import annotations

import functools
import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import DEFAULT_DIFFUSION_STEPS, HOP_SAMPLES, EngineSettings
from engine.errors import InvalidRequest
from engine.frame_glue import TokenIds, glue_ops
from engine.prompt import PreparedPrompt, upload
from engine.request import MAX_DIFFUSION_STEPS, SynthesisOptions
from engine.runtime.base import Runtime
from engine.sampler import schedule_table

CONTEXT_BUCKET = 256  # attended context is rounded up to a power-of-two multiple of this
PREFILL_TOKENS = 16384  # joining prompts are prefilled together, up to this many (padded) tokens per LM call
# A prompt prefilled alone is padded to a power-of-two multiple of this many positions (causal attention: positions
# after a prompt change nothing at its own), so on CUDA it replays one of a few captured graphs: eager, the
# prefill's ~500 kernels cost 10-25 ms of launches for ~2 ms of compute (the 1.5B, a 10 s voice). Up to
# PREFILL_GRAPH_WIDTH positions (four speakers' 60 s voices fit): longer prompts compute long enough to hide their
# launches, and each graph keeps its keys and values (57 KB a position for the 7B).
PREFILL_BUCKET, PREFILL_GRAPH_WIDTH = 64, 2048


@dataclass
class FrameOutput:
    """What one step produced for one stream."""

    stream_id: int
    audio: np.ndarray | None      # 3200 float32 samples for a speech frame, else None
    finished: bool = False
    reason: str | None = None     # why it finished: eos, max_frames, exact_frames, context, cancelled


@dataclass
class _Slot:
    stream_id: int
    options: SynthesisOptions
    generator: torch.Generator
    frame_limit: int
    prompt_len: int
    positive_len: int             # tokens in the positive KV row once the frames launched so far have run
    noises: list[torch.Tensor]    # its next two diffusion noises, drawn ahead: noise i at position i % 2
    noises_used: int = 0          # speech frames collected (each uses up one noise)
    launched: int = 0             # frames queued on the device
    steps: int = 0                # frames collected: speech frames plus turn boundaries, as the original counts
    active: bool = True           # False once removed: the output of a frame still in flight is dropped

    def wants_frames(self, max_context: int) -> bool:
        """Whether a frame launched now could still be one of this stream's (its last may be in flight)."""
        return self.launched < self.frame_limit and self.positive_len + 1 < max_context


@dataclass
class _Frame:
    """A frame queued on the device: its slots in row order and where its tokens and audio arrive."""

    slots: list[_Slot]
    tokens: torch.Tensor          # [n] on the host (pinned on CUDA, filled when `done` has fired)
    audio: torch.Tensor           # [n, 3200]
    done: torch.cuda.Event | None


def _draw_noise(generator: torch.Generator, dim: int) -> torch.Tensor:
    """A stream's next diffusion noise, drawn as transformers draws it (two rows, the first used)."""
    return torch.randn(2, dim, generator=generator)[0]


def bucket(n: int, limit: int) -> int:
    """The smallest power of two >= n, at most `limit`."""
    return min(1 << max(n - 1, 0).bit_length(), limit)


def padded_length(length: int, unit: int, limit: int) -> int:
    """`length` rounded up to a power-of-two multiple of `unit`, at most `limit`."""
    return min(bucket(-(-length // unit), limit) * unit, limit)


class BatchEngine:
    """Advances up to `settings.max_streams` requests in lock-step. Not thread-safe: one owner calls it."""

    def __init__(self, runtime: Runtime, settings: EngineSettings = EngineSettings()):
        self.runtime = runtime
        self.settings = settings
        spec, n, dev, dt = runtime.spec, settings.max_streams, runtime.device, runtime.dtype
        kv_shape = (spec.num_layers, 2 * n, spec.kv_heads, settings.max_context, spec.head_dim)
        self._keys = torch.zeros(kv_shape, dtype=dt, device=dev)
        self._values = torch.zeros(kv_shape, dtype=dt, device=dev)
        # Every streaming-conv cache of a slot lives in one row of `_conv_state`, each channels-last ([width, channels],
        # the torch runtime's layout): a frame updates them all in one select. `_caches` are their [n, C, W] views.
        specs = spec.decoder_caches + spec.semantic_caches
        self._conv_state = torch.zeros(n, sum(c.channels * c.width for c in specs), dtype=dt, device=dev)
        offsets = itertools.accumulate((c.channels * c.width for c in specs), initial=0)
        self._caches = [self._conv_state[:, start:start + c.channels * c.width].view(n, c.width, c.channels)
                        .transpose(1, 2) for start, c in zip(offsets, specs)]
        self._decoder_count = len(spec.decoder_caches)
        self._positive_hidden = torch.zeros(n, spec.hidden_size, dtype=dt, device=dev)
        self._negative_hidden = torch.zeros(n, spec.hidden_size, dtype=dt, device=dev)
        self._logits = torch.zeros(n, len(spec.token_ids), dtype=dt, device=dev)
        self._positive_len = torch.zeros(n, dtype=torch.long, device=dev)
        self._negative_len = torch.zeros(n, dtype=torch.long, device=dev)
        self._cfg = torch.ones(n, dtype=dt, device=dev)
        self._exact = torch.zeros(n, dtype=torch.bool, device=dev)
        self._table = torch.tensor(schedule_table([1] * n, width=MAX_DIFFUSION_STEPS), dtype=dt, device=dev)
        self._noises = torch.zeros(n, 2, spec.latent_dim, dtype=dt, device=dev)  # _Slot.noises, uploaded per frame
        self._noises_used = torch.zeros(n, dtype=torch.long, device=dev)  # speech frames so far: picks the noise
        self._tokens_out = torch.zeros(n, dtype=torch.long, device=dev)
        self._audio_out = torch.zeros(n, HOP_SAMPLES, dtype=torch.float32, device=dev)
        self._token_ids = torch.tensor(spec.token_ids, device=dev)
        self._speech_choice = spec.token_ids.index(spec.audio_token_id)
        self._token_kinds = TokenIds(speech=spec.audio_token_id, eos=spec.audio_eos_id, bos=spec.audio_bos_id)
        self._glue = glue_ops(dev)
        self._slots: list[_Slot] = []
        self._in_flight: deque[_Frame] = deque()
        self._launches = itertools.count()
        self._ids = itertools.count()
        self._graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}
        # one prompt's prefill per padded width: (its input embeddings, the graph, the outputs its replays write)
        self._prefill_graphs: dict[int, tuple[torch.Tensor, torch.cuda.CUDAGraph, tuple]] = {}
        self.cuda_graphs = dev.type == "cuda" if settings.cuda_graphs is None else settings.cuda_graphs
        if self.cuda_graphs:
            self._pool = torch.cuda.graph_pool_handle()  # graphs never run concurrently: they share their memory
        if dev.type == "cuda":  # pinned transfer buffers, one set per frame in flight (two)
            self._noises_host, self._tokens_host, self._audio_host = (
                [buffer.pin_memory() for _ in range(2)] for buffer in (
                    torch.zeros(n, 2, spec.latent_dim, dtype=dt), torch.zeros(n, dtype=torch.long),
                    torch.zeros(n, HOP_SAMPLES, dtype=torch.float32)))

    @property
    def active(self) -> int:
        return len(self._slots)

    @property
    def free_slots(self) -> int:
        return self.settings.max_streams - self.active

    def warm_up(self, diffusion_steps: tuple[int, ...] = (DEFAULT_DIFFUSION_STEPS,)) -> int:
        """Capture the CUDA graph of every slot and context bucket, and of one prompt's prefill at every padded
        width, up front, so that no request waits for a capture; returns how many were captured. Only while no
        request runs: the frames run on dead state."""
        if not self.cuda_graphs:
            return 0
        if self._slots or self._in_flight:
            raise RuntimeError("warm_up() runs frames on the slots' state: call it before adding requests")
        slots = sorted({bucket(n, self.settings.max_streams) for n in range(1, self.settings.max_streams + 1)})
        contexts = sorted({self._context_bucket(c) for c in range(1, self.settings.max_context + 1, CONTEXT_BUCKET)})
        for steps in diffusion_steps:
            for n in slots:
                for context in contexts:
                    if (n, steps, context) not in self._graphs:
                        self._capture(n, steps, context)
        for width in sorted({self._prefill_width(length) for length in range(1, self.settings.max_context,
                                                                             PREFILL_BUCKET)}):
            if width <= PREFILL_GRAPH_WIDTH:
                self._prefill_graph(width)
        torch.cuda.synchronize()
        return len(self._graphs) + len(self._prefill_graphs)

    def check(self, prompt: PreparedPrompt) -> None:
        """Refuse a prompt this engine cannot hold."""
        if prompt.length + 1 >= self.settings.max_context:
            raise InvalidRequest(f"the prompt is {prompt.length} tokens; this engine holds at most "
                                 f"{self.settings.max_context - 2} (shorten the script or the voice samples)")

    def add(self, prompt: PreparedPrompt, options: SynthesisOptions) -> int:
        """Start a request between steps (prefill of its prompt); returns its stream id."""
        return self.add_many([(prompt, options)])[0]

    def add_many(self, requests: list[tuple[PreparedPrompt, SynthesisOptions]]) -> list[int]:
        """Start several requests between steps, their prompts prefilled together; returns their stream ids."""
        for prompt, _ in requests:
            self.check(prompt)
        if len(requests) > self.free_slots:
            raise RuntimeError(f"{len(requests)} requests for {self.free_slots} free slots: check free_slots first")
        first, count, spec = len(self._slots), len(requests), self.runtime.spec
        new = slice(first, first + count)
        self._prefill(list(range(first, first + count)), [prompt.embeds for prompt, _ in requests])
        keys, values, hidden = self._negative_start  # every negative row starts at audio_bos
        self._keys[:, 2 * first + 1:2 * (first + count):2, :, :1] = keys[:, None]
        self._values[:, 2 * first + 1:2 * (first + count):2, :, :1] = values[:, None]
        self._negative_hidden[new] = hidden
        for state in (self._conv_state, self._noises_used, self._negative_len):
            state[new].zero_()  # the negative length: the bos start is the first speculative negative step
        # the rest of the new slots' state in one upload per tensor (uploads that do not wait for the device)
        options = [options for _, options in requests]
        for state, rows in ((self._positive_len, [prompt.length for prompt, _ in requests]),
                            (self._cfg, [o.cfg_scale for o in options]),
                            (self._exact, [o.exact_frames is not None for o in options]),
                            (self._table, schedule_table([o.diffusion_steps for o in options],
                                                         width=MAX_DIFFUSION_STEPS))):
            state[new].copy_(upload(rows, state.dtype, state.device))
        ids = []
        for prompt, options in requests:
            limit = options.exact_frames or options.max_frames or self.settings.default_max_frames
            noises = [_draw_noise(prompt.generator, spec.latent_dim) for _ in range(2)]
            slot = _Slot(stream_id=next(self._ids), options=options, generator=prompt.generator,
                         frame_limit=limit, prompt_len=prompt.length, positive_len=prompt.length, noises=noises)
            self._slots.append(slot)
            ids.append(slot.stream_id)
        return ids

    @functools.cached_property
    def _negative_start(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where every negative row starts: audio_bos alone at position 0, the same for every stream, so prefilled
        once: its key and value [layers, kv_heads, 1, head_dim] and last hidden state [H]."""
        rt, spec = self.runtime, self.runtime.spec
        hidden, _, keys, values = rt.prefill(rt.embed(torch.tensor([[spec.audio_bos_id]], device=rt.device)))
        return keys[:, 0], values[:, 0], hidden[0, 0]

    def cancel(self, stream_id: int) -> bool:
        """Free a stream's slot now; it produces nothing more."""
        for index, slot in enumerate(self._slots):
            if slot.stream_id == stream_id:
                self._remove(index)
                return True
        return False

    def _prefill(self, slots: list[int], prompts: list[torch.Tensor]) -> None:
        """Run prompts ([length, H] each) into the positive KV rows of `slots` from position 0 (the rows' old content
        is dead), in batches of at most PREFILL_TOKENS padded tokens, keeping each prompt's last hidden state and
        logits. A prompt alone is prefilled by its padded width's graph where frames are (CUDA graphs), up to
        PREFILL_GRAPH_WIDTH."""
        spec, dev, dt = self.runtime.spec, self.runtime.device, self.runtime.dtype
        start = 0
        while start < len(slots):
            end = start + 1
            while end < len(slots) and (end + 1 - start) * max(p.shape[0] for p in prompts[start:end + 1]) \
                    <= PREFILL_TOKENS:
                end += 1
            group, lengths = prompts[start:end], [p.shape[0] for p in prompts[start:end]]
            width, padded = max(lengths), self._prefill_width(max(lengths))
            alone = len(group) == 1 and padded <= PREFILL_GRAPH_WIDTH
            if alone:  # padded to its graph's width, eager too: the same shapes, the same sums
                width = padded
            if alone and self.cuda_graphs:
                embeds, graph, outputs = self._prefill_graph(width)
                embeds[0, :lengths[0]] = group[0]  # what follows it is left from earlier prompts: never attended
                graph.replay()
                hidden, logits, keys, values = outputs
            else:
                embeds = torch.zeros(len(group), width, spec.hidden_size, dtype=dt, device=dev)
                for i, prompt in enumerate(group):
                    embeds[i, :lengths[i]] = prompt
                hidden, logits, keys, values = self.runtime.prefill(embeds)
            for i, (slot, length) in enumerate(zip(slots[start:end], lengths)):
                self._keys[:, 2 * slot, :, :length] = keys[:, i, :, :length]
                self._values[:, 2 * slot, :, :length] = values[:, i, :, :length]
                self._positive_hidden[slot] = hidden[i, length - 1]
                self._logits[slot] = logits[i, length - 1]
            start = end

    def _prefill_width(self, length: int) -> int:
        return padded_length(length, PREFILL_BUCKET, self.settings.max_context)

    def _prefill_graph(self, width: int) -> tuple[torch.Tensor, torch.cuda.CUDAGraph, tuple]:
        """One prompt's prefill at this padded width as a CUDA graph (captured on first use): its input
        embeddings [1, width, H], the graph, and the outputs its replays write (Runtime.prefill's)."""
        if (entry := self._prefill_graphs.get(width)) is None:
            spec = self.runtime.spec
            embeds = torch.zeros(1, width, spec.hidden_size, dtype=self.runtime.dtype, device=self.runtime.device)
            graph, outputs = self._captured(lambda: self.runtime.prefill(embeds))
            entry = self._prefill_graphs[width] = embeds, graph, outputs
        return entry

    def _remove(self, index: int) -> None:
        """Drop slot `index`; the last slot moves into it so that the active slots stay a prefix."""
        self._slots[index].active = False
        last = len(self._slots) - 1
        if index != last:
            moved = self._slots[last]
            used = max(moved.positive_len, 1) + 1  # the negative row is never longer than the positive one
            for kv in (self._keys, self._values):
                kv[:, 2 * index:2 * index + 2, :, :used] = kv[:, 2 * last:2 * last + 2, :, :used]
            for state in (self._conv_state, self._positive_hidden, self._negative_hidden, self._logits,
                          self._positive_len, self._negative_len, self._cfg, self._exact, self._table,
                          self._noises_used):
                state[index] = state[last]
            self._slots[index] = moved
        self._slots.pop()

    def step(self) -> list[FrameOutput]:
        """Advance every active stream by one frame: queue the next frame, then collect the one before it."""
        while self._in_flight and not any(slot.active for slot in self._in_flight[0].slots):
            self._in_flight.popleft()  # every stream it ran for has ended: nothing to wait for
        while len(self._in_flight) < 2 and any(s.wants_frames(self.settings.max_context) for s in self._slots):
            self._in_flight.append(self._launch())
        return self._collect(self._in_flight.popleft()) if self._in_flight else []

    def _launch(self) -> _Frame:
        """Queue one frame over the active slots; nothing here waits for the device."""
        slots, n = list(self._slots), len(self._slots)
        steps = max(slot.options.diffusion_steps for slot in slots)
        context = self._context_bucket(max(slot.positive_len for slot in slots) + 1)
        for slot in slots:
            slot.launched += 1
            slot.positive_len += 1
        noises = torch.stack([torch.stack(slot.noises) for slot in slots])
        if self.runtime.device.type != "cuda":
            self._noises[:n] = noises.to(self._noises)
            self._frame(n, steps, context)
            return _Frame(slots, self._tokens_out[:n].clone(), self._audio_out[:n].clone(), None)
        buffers = next(self._launches) % 2  # the other set belongs to the frame before, still in flight
        staged = self._noises_host[buffers][:n]
        staged.copy_(noises)
        self._noises[:n].copy_(staged, non_blocking=True)
        if not self.cuda_graphs:
            self._frame(n, steps, context)
        elif (graph := self._graphs.get(key := (bucket(n, self.settings.max_streams), steps, context))) is None:
            self._capture(*key)  # this frame runs eagerly, as the capture's warm-up
        else:
            graph.replay()
        tokens, audio = self._tokens_host[buffers][:n], self._audio_host[buffers][:n]
        tokens.copy_(self._tokens_out[:n], non_blocking=True)
        audio.copy_(self._audio_out[:n], non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Frame(slots, tokens, audio, done)

    def _collect(self, frame: _Frame) -> list[FrameOutput]:
        """Wait for a queued frame and hand out its output; end the streams it finished."""
        if frame.done is not None:
            frame.done.synchronize()
        spec, outputs, finished = self.runtime.spec, [], []
        audio = frame.audio.numpy()
        for row, (slot, token) in enumerate(zip(frame.slots, frame.tokens.tolist())):
            if not slot.active:  # ended while this frame was in flight
                continue
            speech = token == spec.audio_token_id
            if speech:  # its noise is used up: draw the one after the next in its place
                slot.noises[slot.noises_used % 2] = _draw_noise(slot.generator, spec.latent_dim)
                slot.noises_used += 1
            slot.steps += 1
            reason = None
            if slot.steps >= slot.frame_limit:
                reason = "exact_frames" if slot.options.exact_frames else "max_frames"
            elif token == spec.eos_id:
                reason = "eos"
            elif slot.prompt_len + slot.steps + 1 >= self.settings.max_context:
                reason = "context"
            outputs.append(FrameOutput(slot.stream_id, audio[row].copy() if speech else None, reason is not None,
                                       reason))
            if reason:
                finished.append(slot)
        for slot in finished:
            self._remove(self._slots.index(slot))
        return outputs

    def _context_bucket(self, context: int) -> int:
        return padded_length(context, CONTEXT_BUCKET, self.settings.max_context)

    def _capture(self, slots: int, steps: int, context: int) -> None:
        """Run this frame, and capture it for next time (capturing records kernels without running them, so the
        state advances exactly once)."""
        self._graphs[(slots, steps, context)] = self._captured(lambda: self._frame(slots, steps, context))[0]

    def _captured(self, run):
        """(`run` captured as a CUDA graph in the engine's pool, what the captured call returned), after one eager
        call on a side stream: lazy initialisation must not happen inside a capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = run()
        return graph, outputs

    def _frame(self, n: int, steps: int, context: int) -> None:
        """One frame for slots [0, n) on the device, in place: reads the slots' state, noise and options, writes
        the new state, `_tokens_out` and `_audio_out`. No host synchronisation, no data-dependent shapes."""
        rt, spec, glue = self.runtime, self.runtime.spec, self._glue
        # the noise is picked here: the frame before may have used one that the host does not know of yet
        tokens, noise = glue.choose_tokens(self._logits[:n], self._exact[:n], self._speech_choice, self._token_ids,
                                           self._noises[:n], self._noises_used[:n])
        latents = rt.solve(noise, self._positive_hidden[:n], self._negative_hidden[:n], self._cfg[:n],
                           self._table[:n, :steps])
        caches = [cache[:n] for cache in self._caches]
        decoded, *decoder_caches = rt.decode((latents / spec.latent_scale - spec.latent_bias)[:, :, None],
                                             *caches[:self._decoder_count])
        semantic, *semantic_caches = rt.semantic(decoded, *caches[self._decoder_count:])
        new_state = torch.cat([new.transpose(1, 2).reshape(n, -1) for new in decoder_caches + semantic_caches], dim=1)
        # the speculative negative step of the last LM call is kept for speech; audio_bos restarts the negative row
        embeds, positions = glue.step_inputs(tokens, self._token_kinds, self._conv_state[:n], new_state,
                                             rt.acoustic_connector(latents), rt.semantic_connector(semantic[:, 0]),
                                             rt.embed(tokens), self._positive_len[:n], self._negative_len[:n],
                                             context)
        hidden, logits = rt.lm_cached(embeds, positions, self._keys, self._values, context)
        glue.keep_outputs(hidden, logits, decoded, tokens, self._positive_len[:n], self._positive_hidden[:n],
                          self._negative_hidden[:n], self._logits[:n], self._tokens_out[:n], self._audio_out[:n])
