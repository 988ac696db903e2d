"""What answers benchmark questions: a `Responder` turns questions (and their videos' frames) into response texts.

`answer_in_batches` is the one loop that asks a responder: `launch/evaluate.py run` (launch/benchmark_run.py) and the
training-time callback (callbacks/benchmark_validation.py) both go through it. It calls `respond(questions, frames)`,
where frames[i] is the uint8 [T, H, W, 3] array of questions[i]'s video (None for a responder with `needs_frames`
False). A response is the model's text, read afterwards by datamodules/benchmarks/answers.py `extract_choice`; None
means "no answer for this question" (a responses file that lacks it) and is scored as missing, never as an answer.

Responders here:
  ResponsesFile    answers produced elsewhere (a JSON list or JSONL of {"id", "response"[, "split"]}).
  TransformersVLM  any transformers vision-language model with a processor and a chat template: the frames go in
                   as one video or as N images, with a direct-letter or a chain-of-thought prompt, greedy decoding.
and in lightning_modules/clip_scorer.py, ClipScorer: the option whose text is nearest the frames by CLIP similarity.
A LightningModule offers one for validation through `benchmark_responder()`. Responders that score each option's
text share `fitted_option_texts` (the template filled in, fitted to a text encoder's length) and `template_problems`.

A responder class may define `config_problems(params, check_files=True) -> [(param, message)]`: checks of its
config values that the config checker (launch/config.py) reports together with every other config problem.

This module imports no torch / transformers at import time: configs are checked without loading them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from datamodules.benchmarks.questions import QKey, Question
from datamodules.benchmarks.scoring import read_responses
from datamodules.errors import count_problems, first_line, raise_param_problems
from datamodules.param_types import ModelSource

PROMPTS = ("direct", "cot")
FRAMES_AS = ("video", "images")
DEFAULT_MAX_NEW_TOKENS = {"direct": 16, "cot": 512}
DTYPES = ("auto", "float32", "float16", "bfloat16")
RESERVED_PROCESSOR_KWARGS = {"text", "padding", "return_tensors", "images", "videos", "do_sample_frames"}

# Instructions after the question and its options. direct: the letter alone, as the papers' multiple-choice
# evaluations ask; cot: reasoning first, then a closing sentence answers.extract_choice reads as a final answer.
DIRECT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
COT_INSTRUCTION = ("Think step by step about what the video shows and how things move in it. Then end your reply "
                   "with a last line of the form 'The final answer is: X', where X is the letter of the correct "
                   "option.")


class ResponderError(RuntimeError):
    """A responder that cannot be built or run as configured; the message is one line with the fix."""


@runtime_checkable
class Responder(Protocol):
    needs_frames: bool

    def respond(self, questions: Sequence[Question], frames: Sequence[np.ndarray | None]) -> list[str | None]:
        ...


FramesOf = Callable[[Question], "np.ndarray | None"]


def answer_in_batches(questions: Sequence[Question], responder: Responder, frames_of: FramesOf | None,
                      batch_size: int) -> Iterator[tuple[Sequence[Question], list[tuple[Question, str | None]]]]:
    """Ask `responder` about `questions`, `batch_size` at a time, in order; per batch yield (the batch, [(asked
    question, its response)]).

    A responder that needs frames gets `frames_of(question)`; a question whose frames are None (its video is missing
    or cannot be decoded) is not asked, and a batch with nothing to ask makes no call. A responder that answers
    another number of questions than it was asked is an error (ResponderError), never a silent misalignment.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    needs_frames = bool(getattr(responder, "needs_frames", True))
    if needs_frames and frames_of is None:
        raise ValueError(f"{type(responder).__name__} answers from video frames: give frames_of")
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        if needs_frames:
            pairs = [(q, frames_of(q)) for q in batch]
            pairs = [(q, f) for q, f in pairs if f is not None]
        else:
            pairs = [(q, None) for q in batch]
        if not pairs:
            yield batch, []
            continue
        asked = [q for q, _ in pairs]
        answers = responder.respond(asked, [f for _, f in pairs])
        if len(answers) != len(asked):
            raise ResponderError(f"{type(responder).__name__} returned {len(answers)} responses for {len(asked)} "
                                 f"questions")
        yield batch, list(zip(asked, answers))


def question_prompt(question: Question, prompt: str = "direct") -> str:
    """The user text for one question: the question, its options as 'A. text' lines, then the instruction."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt {prompt!r} is not one of {', '.join(PROMPTS)}")
    options = "\n".join(f"{letter}. {text}" for letter, text in question.options.items())
    instruction = DIRECT_INSTRUCTION if prompt == "direct" else COT_INSTRUCTION
    return f"{question.question.strip()}\n{options}\n{instruction}"


# ----------------------------------------------------------------------------------------------- option texts
DEFAULT_OPTION_TEMPLATE = "{question} {option}"


def template_problems(template: Any) -> list[tuple[str, str]]:
    """[("template", why)] when `template` cannot make an option's text: no {option}, or another field."""
    if not isinstance(template, str) or "{option}" not in template:
        return [("template", f"{template!r} has no {{option}} field")]
    try:
        template.format(question="q", option="o")
    except (KeyError, IndexError, ValueError) as e:
        return [("template", f"{template!r}: only {{question}} and {{option}} can be filled in ({e})")]
    return []


def fitted_option_texts(question: Question, template: str, fits: Callable[[str], bool]) -> list[str]:
    """The texts of a question's options, in option order: `template` filled with the question and each option.
    When a text does not `fit` (a text encoder's length), the fewest leading words of the question are dropped that
    make every text fit -- never the option, which is what differs between them."""
    def texts(dropped: int) -> list[str]:
        asked = " ".join(question.question.split()[dropped:])
        return [template.format(question=asked, option=str(text)).strip() for text in question.options.values()]

    def all_fit(dropped: int) -> bool:
        return all(fits(t) for t in texts(dropped))

    if "{question}" not in template or all_fit(0):
        return texts(0)
    low, high = 1, len(question.question.split())  # dropping words never lengthens a text: bisect
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if all_fit(middle) else (middle + 1, high)
    return texts(low)


# ----------------------------------------------------------------------------------------------- file
class ResponsesFile:
    """Responses produced elsewhere: a JSON list or JSONL of {"id": ..., "response": ...} (scoring.read_responses
    layout: `split` is the file's split, or null when each record names its own in a "split" field). A question
    the file does not answer gets None (scored as missing); a null response gets "" (scored as unparsed)."""

    needs_frames = False

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.path = Path(path)
        self.split = split
        self.responses: dict[QKey, str] = {}
        # BenchmarkFileError: one line naming the record
        for key, response in read_responses(self.path, split, give_split="set model.params.split"):
            if key in self.responses:
                raise ResponderError(f"{self.path}: second response for {key[0]}/{key[1]} "
                                     f"(give one response per question)")
            self.responses[key] = response if response is not None else ""

    @classmethod
    def config_problems(cls, params: Mapping[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        path = params.get("path")
        if check_files and isinstance(path, str) and not Path(path).is_file():
            return [("path", f"no such file: {path} (give the JSON / JSONL file of responses)")]
        return []

    def unknown_ids(self, questions: Sequence[Question]) -> list[QKey]:
        """Keys of responses that match none of `questions` (reported in the summary)."""
        known = {q.key for q in questions}
        return [k for k in self.responses if k not in known]

    def respond(self, questions: Sequence[Question], frames: Sequence[np.ndarray | None] = ()) -> list[str | None]:
        return [self.responses.get(q.key) for q in questions]


# ----------------------------------------------------------------------------------------------- transformers
class TransformersVLM:
    """A transformers vision-language model answering with greedy decoding.

    model: a Hub id or a local directory (save_pretrained layout) with the model, its processor and chat template.
    prompt: "direct" (the option's letter only) or "cot" (step by step, then "The final answer is: X").
    frames_as: "video" (one video entry: the processor's video processor, which in transformers 5 needs
        torchvision) or "images" (one image entry per frame, in order).
    batch_size: questions per generate call (left padding). max_new_tokens: default 16 (direct) / 512 (cot).
    dtype: auto (the checkpoint's), float32, float16 or bfloat16. device: default cuda when available, else cpu.
    processor_kwargs: extra keyword arguments of every processor call, e.g. {cap_pixels_per_frame: true} for
        Qwen2-VL's per-frame pixel budget or {max_pixels: N}; they may not replace the ones this class sets.
    """

    needs_frames = True

    def __init__(self, model: Annotated[str, ModelSource()], prompt: Literal["direct", "cot"] = "direct",
                 frames_as: Literal["video", "images"] = "video", batch_size: int = 1,
                 max_new_tokens: int | None = None, dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
                 device: str | None = None, trust_remote_code: bool = False,
                 processor_kwargs: dict[str, Any] | None = None):
        given = {"prompt": prompt, "frames_as": frames_as, "dtype": dtype}
        problems = [(name, f"{given[name]!r} is not one of {', '.join(allowed)}")
                    for name, allowed in (("prompt", PROMPTS), ("frames_as", FRAMES_AS), ("dtype", DTYPES))
                    if given[name] not in allowed]
        problems += self.config_problems({"model": model, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                                          "processor_kwargs": processor_kwargs})
        raise_param_problems(problems)
        import torch

        self.model_name = str(model)
        self.prompt = prompt
        self.frames_as = frames_as
        self.batch_size = batch_size
        self.processor_kwargs = dict(processor_kwargs or {})
        self.max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[prompt]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = self._load_processor(trust_remote_code)
        self.model = self._load_model(dtype, trust_remote_code).to(self.device).eval()
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row at the same (last) position
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if frames_as == "video" and getattr(self.processor, "video_processor", None) is None:
            raise ResponderError(f"{model}: its processor takes no videos (set frames_as: images)")

    @classmethod
    def config_problems(cls, params: Mapping[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """Value checks beyond the parameter types (which the config checker verifies from the signature)."""
        problems = []  # `model` is a ModelSource: the config checker looks it up
        problems += count_problems(params, ("batch_size", "max_new_tokens"))
        extra = params.get("processor_kwargs")
        taken = sorted(set(extra) & RESERVED_PROCESSOR_KWARGS) if isinstance(extra, Mapping) else []
        if taken:
            problems.append(("processor_kwargs", f"{', '.join(taken)} are set by the responder (remove them)"))
        return problems

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def _load_processor(self, trust_remote_code: bool):
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(self.model_name, trust_remote_code=trust_remote_code)
        except ImportError as e:  # e.g. a video processor without torchvision
            raise ResponderError(f"{self.model_name}: cannot load its processor: {first_line(e)}") from e
        except (OSError, ValueError) as e:
            raise ResponderError(f"{self.model_name}: cannot load a processor ({first_line(e)})") from e

    def _load_model(self, dtype: str, trust_remote_code: bool):
        import torch
        import transformers

        kwargs = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype), "trust_remote_code": trust_remote_code}
        names = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")  # the latter: transformers 4
        auto_classes = [getattr(transformers, name) for name in names if hasattr(transformers, name)]
        errors = []
        for auto in auto_classes:
            try:
                return auto.from_pretrained(self.model_name, **kwargs)
            except ValueError as e:  # "Unrecognized configuration class ... for this kind of AutoModel"
                errors.append(f"{auto.__name__}: {first_line(e)}")
            except OSError as e:
                raise ResponderError(f"{self.model_name}: cannot load the model ({first_line(e)})") from e
        raise ResponderError(f"{self.model_name}: not an image-text-to-text model ({'; '.join(errors)})")

    def messages(self, question: Question, num_frames: int) -> list[dict[str, Any]]:
        """One user turn: the frames (one video entry, or one image entry per frame), then the prompt text."""
        visual = [{"type": "video"}] if self.frames_as == "video" else [{"type": "image"} for _ in range(num_frames)]
        text = {"type": "text", "text": question_prompt(question, self.prompt)}
        return [{"role": "user", "content": [*visual, text]}]

    def render(self, question: Question, num_frames: int) -> str:
        try:
            return self.processor.apply_chat_template(self.messages(question, num_frames), add_generation_prompt=True,
                                                      tokenize=False)
        except ValueError as e:  # no chat template
            raise ResponderError(f"{self.model_name}: cannot render a chat prompt ({first_line(e)})") from e

    def respond(self, questions: Sequence[Question], frames: Sequence[np.ndarray | None]) -> list[str | None]:
        if len(questions) != len(frames):
            raise ValueError(f"{len(questions)} questions but {len(frames)} frame arrays")
        out: list[str | None] = []
        for start in range(0, len(questions), self.batch_size):
            out += self._generate(questions[start:start + self.batch_size], frames[start:start + self.batch_size])
        return out

    def _generate(self, questions: Sequence[Question], frames: Sequence[np.ndarray]) -> list[str]:
        import torch

        for q, f in zip(questions, frames):
            if f is None or f.ndim != 4 or f.shape[-1] != 3:
                raise ValueError(f"{q.split}/{q.id}: frames must be a uint8 [T, H, W, 3] array, got "
                                 f"{None if f is None else tuple(f.shape)}")
        texts = [self.render(q, len(f)) for q, f in zip(questions, frames)]
        if self.frames_as == "video":
            visual = {"videos": [np.asarray(f) for f in frames], "do_sample_frames": False}  # sampled already
        else:
            visual = {"images": [list(f) for f in frames]}
        inputs = self.processor(text=texts, padding=True, return_tensors="pt", **visual, **self.processor_kwargs)
        inputs = inputs.to(device=self.device, dtype=self.model.dtype)
        tok = self.tokenizer
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                            pad_token_id=tok.pad_token_id)
        new = generated[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column
        return [text.strip() for text in tok.batch_decode(new, skip_special_tokens=True)]

