"""Reading the synthetic order-of-events captions back: does a generated caption name the right events in order?

The synthetic videos (`videofirst.data.synthetic`) show a sequence of events, each a coloured shape, and their
captions list them in order (`"a red circle, then a blue square, then a green triangle"`). Rouge-L and CIDEr-D
reward shared words, and every caption shares most of its words ("a", "then", the shapes) with every other: a
language model that ignores the video scores well on them. This module parses the events out of a caption and
scores what matters:

* `event_sequence_accuracy`: the fraction of videos whose caption names exactly the reference events in the
  reference order (no event missing, none extra);
* `event_position_accuracy`: the fraction of reference events (over all videos and positions) named at their
  position;
* `event_set_accuracy`: the fraction of videos whose caption names the reference events in any order (what a
  model that sees the events but not their order can reach);
* `colour_position_accuracy`: the fraction of reference events whose colour is named at their position (the
  shape aside; chance is about 1/6 where the position accuracy's is about 1/30);
* `colour_sequence_accuracy`: the fraction of videos whose caption names exactly the reference colours in the
  reference order (shapes aside). The generator gives every event of a video its own colour, so this is the
  order of events as far as colours tell them apart; it separates reading the order from reading the shapes.

It also writes EgoSchema-style order questions about the same videos ("what happened second?", five options:
the answer, the video's other events and events it does not show) and scores them by the likelihood of a
video-to-text model (`event_order_option_scores`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from videofirst.data.captions import encode_captions
from videofirst.data.synthetic import COLOURS, SHAPES
from videofirst.evaluation.captioning import sequence_log_likelihoods

__all__ = [
    "ORDINALS",
    "event_order_option_scores",
    "event_order_questions",
    "event_phrase",
    "event_sequence_metrics",
    "is_event_caption",
    "parse_event_caption",
]

Event = tuple[str, str]  # (colour, shape)

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
_WORD = re.compile(r"[a-z]+")
_THEN = re.compile(r"\bthen\b")


def parse_event_caption(caption: str) -> list[Event | None]:
    """The events a caption names, in order: one entry per `then`-separated part, `(colour, shape)` when the part
    names a palette colour and a palette shape (the first of each), None when it does not (a garbled part still
    takes its position). Parts with no word at all (a trailing "then") are dropped."""
    events: list[Event | None] = []
    for part in _THEN.split(caption.lower()):
        words = _WORD.findall(part)
        if not words:
            continue
        colour = next((word for word in words if word in COLOURS), None)
        shape = next((word for word in words if word in SHAPES), None)
        events.append((colour, shape) if colour is not None and shape is not None else None)
    return events


def is_event_caption(text: str) -> bool:
    """Whether every part of `text` names an event (a reference caption of `videofirst.data.synthetic` does)."""
    events = parse_event_caption(text)
    return bool(events) and None not in events


def event_phrase(event: Event) -> str:
    """The caption's phrase for an event (`("orange", "cross")` -> `"an orange cross"`), as
    `videofirst.data.synthetic`."""
    colour, shape = event
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def _reference_events(reference: str | Sequence[Event]) -> list[Event]:
    if not isinstance(reference, str):
        return [tuple(event) for event in reference]
    if not is_event_caption(reference):
        raise ValueError(f"Reference {reference!r} is not an order-of-events caption of `videofirst.data.synthetic`.")
    return parse_event_caption(reference)


def event_sequence_metrics(predictions: Sequence[str], references: Sequence[str | Sequence[Event]]) -> dict[str, float]:
    """`event_sequence_accuracy`, `event_position_accuracy`, `event_set_accuracy`, `colour_position_accuracy` and
    `colour_sequence_accuracy` (see the module docstring) of generated captions against reference captions (or
    reference `(colour, shape)` lists), all in [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    exact = same_set = positions = correct = colours = colour_orders = 0
    for prediction, reference in zip(predictions, references):
        truth = _reference_events(reference)
        named = parse_event_caption(prediction)
        exact += named == truth
        same_set += None not in named and sorted(named) == sorted(truth)
        positions += len(truth)
        correct += sum(index < len(named) and named[index] == event for index, event in enumerate(truth))
        colours_named = [
            index < len(named) and named[index] is not None and named[index][0] == event[0]
            for index, event in enumerate(truth)
        ]
        colours += sum(colours_named)
        colour_orders += len(named) == len(truth) and all(colours_named)
    count = len(predictions)
    return {
        "event_sequence_accuracy": exact / count,
        "event_position_accuracy": correct / positions,
        "event_set_accuracy": same_set / count,
        "colour_position_accuracy": colours / positions,
        "colour_sequence_accuracy": colour_orders / count,
    }


# --------------------------------------------------------------------------------------------------------------
# Order questions
# --------------------------------------------------------------------------------------------------------------


def _palette() -> list[Event]:
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def event_order_questions(
    rows: Sequence[Mapping], position: int = 2, num_options: int = 5, seed: int = 0
) -> list[dict]:
    """EgoSchema-format questions ("what happened second?") about synthetic manifest rows (with their `events`).

    The options are the event at `position` (1-based), the video's other events (so that knowing which events
    happened is not enough: their order matters) and events the video does not show, up to `num_options`, in a
    random order. Each question keeps its row's `video`, `start`, `end`; `answer` is the index of the right option.
    """
    if not 1 <= position <= len(ORDINALS):
        raise ValueError(f"`position` must be in [1, {len(ORDINALS)}], got {position}.")
    rng = np.random.default_rng([seed, position])
    palette = _palette()
    questions = []
    for number, row in enumerate(rows, start=1):
        events = [(event["colour"], event["shape"]) for event in row.get("events", ())]
        if len(events) < position:
            raise ValueError(f"Row {number} ({row.get('video')}) has {len(events)} events; no event {position}.")
        answer = events[position - 1]
        others = [event for event in events if event != answer][: num_options - 1]
        unseen = [event for event in palette if event not in events]
        others += [unseen[index] for index in rng.permutation(len(unseen))[: num_options - 1 - len(others)]]
        options = [answer, *others]
        order = rng.permutation(len(options))
        questions.append(
            {
                "video": row["video"],
                "start": row.get("start", 0.0),
                "end": row.get("end"),
                "question": f"what happened {ORDINALS[position - 1]}?",
                "options": [event_phrase(options[index]) for index in order],
                "answer": int(np.flatnonzero(order == 0)[0]),
            }
        )
    return questions


@torch.no_grad()
def event_order_option_scores(
    model: torch.nn.Module,
    tokenizer,
    options: Sequence[Sequence[str]],
    position: int,
    visual_latents: torch.Tensor | None,
    batch_size: int = 512,
) -> torch.Tensor:
    """`(questions, options)` log-probabilities that each option's event is the caption's event at `position`.

    A captioner is never trained on questions, so the question is asked in the captions' own language: the
    probability that event `o` comes at position `k` is the model's probability of the caption prefix
    `"e_1, then ..., then e_{k-1}, then o"`, summed over every sequence of `k - 1` other palette events. Question
    `i` is about the video of `visual_latents[i]`; with `visual_latents=None` the language model alone scores
    (the closed-gate baseline: the same scores for every video).
    """
    model.eval()
    device = next(model.parameters()).device
    palette = _palette()
    scores = torch.empty(len(options), len(options[0]))
    for row, choices in enumerate(options):
        texts, owners = [], []
        for column, choice in enumerate(choices):
            (answer,) = parse_event_caption(choice)
            for before in itertools.permutations([event for event in palette if event != answer], position - 1):
                texts.append(", then ".join(event_phrase(event) for event in (*before, answer)))
                owners.append(column)
        log_probs = []
        for start in range(0, len(texts), batch_size):
            encoded = encode_captions(tokenizer, texts[start : start + batch_size], add_eos=False)
            encoded = {key: value.to(device) for key, value in encoded.items()}
            labels = encoded.pop("labels")
            latents = None
            if visual_latents is not None:
                latents = visual_latents[row : row + 1].expand(len(labels), -1, -1)
            logits = model(**encoded, visual_latents=latents).logits
            log_probs.append(sequence_log_likelihoods(logits, labels, reduction="sum").cpu())
        log_probs = torch.cat(log_probs)
        owner_index = torch.tensor(owners)
        for column in range(len(choices)):
            scores[row, column] = torch.logsumexp(log_probs[owner_index == column], dim=0)
    return scores
