"""Video question-answering benchmarks (MMWorld, VLM4D): question files, video frames, answer scoring.

questions.py loads the released question files into `Question`s keyed by (split, id) and checks videos;
frames.py samples frames with PyAV (cached on disk); answers.py extracts the chosen option from a model's
text, optionally asks a local LLM judge, and summarises accuracy as the papers report it.
"""

from datamodules.benchmarks.answers import (LLMJudge, ScoredItem, collect_responses, evalai_submission,
                                            extract_choice, read_responses, score_responses, summarize,
                                            summary_markdown)
from datamodules.benchmarks.frames import VideoDecodeError, probe_video, sample_frames, uniform_indices
from datamodules.benchmarks.questions import (BENCHMARKS, BenchmarkFileError, Question, VideoReport, check_videos,
                                              index_questions, load_mmworld, load_questions, load_vlm4d,
                                              resolve_video)

__all__ = ["BENCHMARKS", "BenchmarkFileError", "LLMJudge", "Question", "ScoredItem", "VideoDecodeError",
           "VideoReport", "check_videos", "collect_responses", "evalai_submission", "extract_choice",
           "index_questions", "load_mmworld", "load_questions", "load_vlm4d", "probe_video", "read_responses",
           "resolve_video", "sample_frames", "score_responses", "summarize", "summary_markdown",
           "uniform_indices"]
