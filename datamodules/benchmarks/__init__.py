"""Video question-answering benchmarks (MMWorld, VLM4D) as data: question files, video frames, answers, scores.

questions.py loads the released question files into `Question`s keyed by (split, id) and checks videos;
frames.py samples frames with PyAV (cached on disk); answers.py extracts the chosen option from a model's
text (a grammar of answer statements over answer_text.py, which strips markup and finds option texts however they
are worded) and optionally asks a local LLM judge; scoring.py reads response files and summarises accuracy as the
papers report it; subset.py draws the stratified subset callbacks/benchmark_validation.py answers during
training; synthetic.py writes small VLM4D-format videos and questions for tests and demos.

What answers the questions lives with the models (lightning_modules/responders.py, lightning_modules/clip_scorer.py);
the resumable run of `launch/evaluate.py run` in launch/benchmark_run.py.
"""

from datamodules.benchmarks.answers import LLMJudge, extract_choice
from datamodules.benchmarks.frames import VideoDecodeError, probe_video, sample_frames, uniform_indices
from datamodules.benchmarks.questions import (BENCHMARKS, BenchmarkFileError, Question, VideoReport, check_videos,
                                              index_questions, load_mmworld, load_questions, load_vlm4d,
                                              resolve_video)
from datamodules.benchmarks.scoring import (ScoredItem, collect_responses, evalai_submission, read_responses,
                                            score_responses, summarize, summary_markdown, write_outputs)

__all__ = ["BENCHMARKS", "BenchmarkFileError", "LLMJudge", "Question", "ScoredItem", "VideoDecodeError",
           "VideoReport", "check_videos", "collect_responses", "evalai_submission", "extract_choice",
           "index_questions", "load_mmworld", "load_questions", "load_vlm4d", "probe_video", "read_responses",
           "resolve_video", "sample_frames", "score_responses", "summarize", "summary_markdown", "uniform_indices",
           "write_outputs"]
